"""The synchronous driver: the one loop every synchronous strategy runs.

    iterate = stepper.start()                  # iteration 0: F, grad at w0; optimizer.init
    repeat: iterate = stepper.step(iterate, t) # optimizer.update, F and grad at the new point
            record; callbacks; stop?

A *stepper* is where the strategy plugs in: :class:`ClientStepper` takes each step on
the client over a gather (``mapreduce``, ``direct``); ``allreduce`` has one that asks
every worker to take the same step. The stopping rules are the same for all:
``optimality <= tol`` (the inf-norm of the proximal gradient, scikit-learn's ``tol`` for
lbfgs; the relative change of w for sgd), or ``max_iter`` updates, or an update that
cannot decrease the loss any more (``stalled``: the floating-point limit), or a
non-finite loss, which raises.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from daskgd.engine.callbacks import Callback
from daskgd.engine.sampling import batch_blocks, batch_size
from daskgd.engine.steps import Evaluation, Evaluator, Iterate, first_iterate, next_iterate
from daskgd.models.objective import Objective
from daskgd.optim.base import Optimizer


@dataclass(frozen=True)
class Stopping:
    """When the driver stops: ``optimality <= tol`` or ``max_iter`` updates."""

    max_iter: int
    tol: float


@dataclass(frozen=True)
class IterationRecord:
    """What one iteration did (iteration 0 is the initial evaluation).

    ``loss`` is F at the iteration's point over the rows evaluated (the mini-batch for
    sgd), ``grad_norm`` the inf-norm of the (proximal) gradient there, ``optimality``
    what ``tol`` is compared with (``grad_norm``, or for sgd the relative change of w).
    """

    iteration: int
    loss: float
    grad_norm: float
    step_size: float
    wall_seconds: float
    elapsed_seconds: float
    n_evaluations: int
    evaluation_seconds: float
    attempts: int
    key_prefixes: tuple[str, ...]
    start_time: float
    #: What tol is compared with (the driver always sets it).
    optimality: float = math.nan
    #: Per worker, what the workers measured over the iteration's evaluations (resident
    #: strategies: compute / communication / wait seconds, bytes), else None.
    worker_measures: dict | None = None


@dataclass
class FitResult:
    """Outcome of a run."""

    w: np.ndarray
    n_iter: int
    converged: bool
    records: list[IterationRecord] = field(default_factory=list)
    state: Any = None
    stalled: bool = False
    optimality: float = math.inf
    #: The run's configuration as the callbacks saw it (the estimator's and the strategy's).
    info: dict = field(default_factory=dict)
    #: What the strategy's session reports after the loop (e.g. ``retries``,
    #: ``residual_resets`` of mapreduce: the trace's recovery variables).
    session_report: dict = field(default_factory=dict)


class Stepper(Protocol):
    """Takes the iterations of a synchronous run; returns each iterate and its evaluations.

    A stepper whose workers take several steps per request (``allreduce``) returns them
    one by one from its records, and says when each began and ended in the driver's clock
    (``time.perf_counter``) with an attribute ``last_step_timing = (start, end)``; the
    driver then records those times instead of the (batched) ones it saw.
    """

    def start(self) -> tuple[Iterate, list[Evaluation]]: ...

    def step(self, iterate: Iterate, iteration: int) -> tuple[Iterate, list[Evaluation]]: ...


class ClientStepper:
    """Steps taken on the client over a gather; mini-batches drawn from (seed, step)."""

    def __init__(
        self,
        gather: Any,
        optimizer: Optimizer,
        objective: Objective,
        w0: np.ndarray,
        *,
        n_blocks: int,
        seed: int = 0,
    ):
        self.evaluate = Evaluator(gather, objective)
        self.optimizer = optimizer
        self.objective = objective
        self.w0 = w0
        self.n_blocks = n_blocks
        self.seed = seed

    def blocks(self, iteration: int) -> list[int] | None:
        """The chunks iteration ``iteration`` evaluates: all (None), or its mini-batch."""
        if not self.optimizer.stochastic:
            return None
        size = batch_size(self.n_blocks, getattr(self.optimizer, "batch_blocks", None))
        return batch_blocks(self.seed, iteration, self.n_blocks, size)

    def start(self) -> tuple[Iterate, list[Evaluation]]:
        iterate = first_iterate(self.optimizer, self.objective, self.w0, self.evaluate)
        return iterate, self.evaluate.take()

    def step(self, iterate: Iterate, iteration: int) -> tuple[Iterate, list[Evaluation]]:
        new = next_iterate(
            self.optimizer, self.objective, iterate, self.evaluate, self.blocks(iteration)
        )
        return new, self.evaluate.take()


def _record(
    iteration: int,
    iterate: Iterate,
    evaluations: Sequence[Evaluation],
    start: float,
    fit_start: float,
    end: float | None,
) -> IterationRecord:
    """The record of one iteration that ran from ``start`` to ``end`` (None: now)."""
    now = time.perf_counter() if end is None else end
    return IterationRecord(
        iteration=iteration,
        loss=float(iterate.value),
        grad_norm=float(iterate.grad_norm),
        optimality=float(iterate.optimality),
        step_size=float(iterate.state.step_size),
        wall_seconds=now - start,
        elapsed_seconds=now - fit_start,
        n_evaluations=len(evaluations),
        evaluation_seconds=float(sum(e.wall_seconds for e in evaluations)),
        attempts=int(sum(e.attempts for e in evaluations)),
        key_prefixes=tuple(e.key_prefix for e in evaluations),
        start_time=time.time() - (time.perf_counter() - start),
        worker_measures=_summed_measures(evaluations),
    )


def _summed_measures(evaluations: Sequence[Evaluation]) -> dict | None:
    """The workers' own measures added over an iteration's evaluations (None if none)."""
    measured = [e.measures for e in evaluations if e.measures]
    if not measured:
        return None
    total: dict[str, dict[str, float]] = {}
    for measures in measured:
        for worker, values in measures.items():
            into = total.setdefault(worker, {})
            for name, value in values.items():
                into[name] = into.get(name, 0.0) + float(value)
    return total


def check_finite(iterate: Iterate, iteration: int) -> None:
    if not math.isfinite(iterate.value):
        raise FloatingPointError(
            f"the loss became {iterate.value} at iteration {iteration} with step size "
            f"{iterate.state.step_size:.6g}: the step is too large for this problem; lower "
            "learning_rate (or use learning_rate='auto', which backtracks)"
        )


def run(
    stepper: Stepper,
    *,
    stopping: Stopping,
    callbacks: Sequence[Callback] = (),
    info: dict | None = None,
) -> FitResult:
    """Run ``stepper`` until a stopping rule holds; callbacks see every iteration.

    Raises
    ------
    FloatingPointError
        When the loss becomes NaN or infinite; the message names the step size.
    """
    info = dict(info or {}, max_iter=stopping.max_iter, tol=stopping.tol)
    for callback in callbacks:
        callback.on_fit_start(dict(info))
    result = FitResult(w=np.zeros(0), n_iter=0, converged=False, info=info)
    try:
        fit_start = start = time.perf_counter()
        iterate, evaluations = stepper.start()
        result.w = iterate.params
        check_finite(iterate, 0)
        _append(result, _record(0, iterate, evaluations, start, fit_start, None), callbacks)
        while not iterate.optimality <= stopping.tol and result.n_iter < stopping.max_iter:
            start = time.perf_counter()
            new, evaluations = stepper.step(iterate, result.n_iter + 1)
            if new.state.stalled:
                result.stalled = True
                break
            iterate = new
            result.n_iter += 1
            check_finite(iterate, result.n_iter)
            start, end = getattr(stepper, "last_step_timing", None) or (start, None)
            record = _record(result.n_iter, iterate, evaluations, start, fit_start, end)
            _append(result, record, callbacks)
        result.w, result.state = iterate.params, iterate.state
        result.optimality = float(iterate.optimality)
        result.converged = bool(iterate.optimality <= stopping.tol)
    finally:
        for callback in callbacks:
            callback.on_fit_end(result)
    return result


def _append(result: FitResult, record: IterationRecord, callbacks: Sequence[Callback]) -> None:
    result.records.append(record)
    for callback in callbacks:
        callback.on_iteration_end(record)


def minimize(
    gather: Any,
    optimizer: Optimizer,
    objective: Objective,
    w0: np.ndarray,
    *,
    max_iter: int,
    tol: float,
    n_blocks: int = 1,
    seed: int = 0,
    callbacks: Sequence[Callback] = (),
    info: dict | None = None,
) -> FitResult:
    """Minimise F from ``w0`` with ``optimizer``, each step taken here over ``gather``.

    ``gather(w, blocks) -> Evaluation`` computes the chunk sums at w (a strategy
    session's ``evaluate``, or any function, e.g. numpy on an in-memory array in tests);
    ``n_blocks`` and ``seed`` serve the mini-batches of a stochastic optimizer.
    """
    stepper = ClientStepper(gather, optimizer, objective, w0, n_blocks=n_blocks, seed=seed)
    return run(stepper, stopping=Stopping(max_iter, tol), callbacks=callbacks, info=info)
