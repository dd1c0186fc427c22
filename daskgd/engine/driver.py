"""The one training loop.

    state = optimizer.init(w0, objective)
    repeat: state = optimizer.update(state, objective); record; stop?

Every solver runs through :func:`minimize`; strategies, optimizers and callbacks are
objects passed in. The stopping rules are the same for all: ``optimality <= tol``
(the inf-norm of the proximal gradient, scikit-learn's ``tol`` for lbfgs), or
``max_iter`` updates, or an update that cannot decrease the loss any more
(``stalled``: the floating-point limit), or a non-finite loss, which raises.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from daskgd.models.objective import Objective
from daskgd.optim.optimizers import Optimizer, OptState


@dataclass(frozen=True)
class IterationRecord:
    """What one iteration did (iteration 0 is the initial evaluation)."""

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


@dataclass
class FitResult:
    """Outcome of :func:`minimize`."""

    w: np.ndarray
    n_iter: int
    converged: bool
    records: list[IterationRecord] = field(default_factory=list)
    state: OptState | None = None
    stalled: bool = False


class Callback:
    """Hooks called by :func:`minimize`; every method does nothing by default."""

    def on_fit_start(self, info: dict) -> None:
        """Called once before the first evaluation with the fit's configuration."""

    def on_iteration_end(self, record: IterationRecord) -> None:
        """Called after every iteration (including iteration 0, the initial point)."""

    def on_fit_end(self, result: FitResult) -> None:
        """Called once when the loop stops, also after an error was raised."""


def _record(
    iteration: int,
    state: OptState,
    objective: Objective,
    first: int,
    start: float,
    fit_start: float,
) -> IterationRecord:
    evaluations = objective.evaluations[first:]
    now = time.perf_counter()
    return IterationRecord(
        iteration=iteration,
        loss=float(state.value),
        grad_norm=float(state.optimality),
        step_size=float(state.step_size),
        wall_seconds=now - start,
        elapsed_seconds=now - fit_start,
        n_evaluations=len(evaluations),
        evaluation_seconds=float(sum(e.wall_seconds for e in evaluations)),
        attempts=int(sum(e.attempts for e in evaluations)),
        key_prefixes=tuple(e.key_prefix for e in evaluations),
        start_time=time.time() - (now - start),
    )


def _check_finite(state: OptState, iteration: int) -> None:
    if not math.isfinite(state.value):
        raise FloatingPointError(
            f"the loss became {state.value} at iteration {iteration} with step size "
            f"{state.step_size:.6g}: the step is too large for this problem; lower "
            "learning_rate (or use learning_rate='auto', which backtracks)"
        )


def minimize(
    objective: Objective,
    optimizer: Optimizer,
    w0: np.ndarray,
    *,
    max_iter: int,
    tol: float,
    callbacks: Sequence[Callback] = (),
    info: dict | None = None,
) -> FitResult:
    """Minimise ``objective`` from ``w0`` with ``optimizer``.

    Parameters
    ----------
    objective : Objective
    optimizer : Optimizer
    w0 : ndarray of shape (n_params,)
    max_iter : int
        Maximum number of updates (iteration 0, the initial evaluation, not counted).
    tol : float
        Stop when the optimizer's optimality measure is <= tol.
    callbacks : sequence of Callback
    info : dict, optional
        Passed to ``Callback.on_fit_start``.

    Raises
    ------
    FloatingPointError
        When the loss becomes NaN or infinite; the message names the step size.
    """
    if not objective.is_smooth and not optimizer.supports_nonsmooth:
        raise ValueError(
            f"solver {optimizer.name!r} supports only smooth penalties ('l2' or None); "
            "use 'gd', 'nesterov' or 'sgd' with an L1 part"
        )
    for callback in callbacks:
        callback.on_fit_start(dict(info or {}, max_iter=max_iter, tol=tol))
    result = FitResult(w=np.asarray(w0, dtype=np.float64), n_iter=0, converged=False)
    try:
        fit_start = start = time.perf_counter()
        state = optimizer.init(result.w, objective)
        _check_finite(state, 0)
        _append(result, _record(0, state, objective, 0, start, fit_start), callbacks)
        while not state.optimality <= tol and result.n_iter < max_iter:
            start, first = time.perf_counter(), len(objective.evaluations)
            state = optimizer.update(state, objective)
            if state.stalled:
                result.stalled = True
                break
            result.n_iter += 1
            _check_finite(state, result.n_iter)
            record = _record(result.n_iter, state, objective, first, start, fit_start)
            _append(result, record, callbacks)
        result.w, result.state = state.w, state
        result.converged = bool(state.optimality <= tol)
    finally:
        for callback in callbacks:
            callback.on_fit_end(result)
    return result


def _append(result: FitResult, record: IterationRecord, callbacks: Sequence[Callback]) -> None:
    result.records.append(record)
    for callback in callbacks:
        callback.on_iteration_end(record)


class ProgressBar(Callback):
    """A tqdm progress bar showing the loss and the optimality measure."""

    def __init__(self, description: str = "daskgd", **tqdm_options: Any):
        self.description = description
        self.tqdm_options = tqdm_options
        self._bar: Any = None

    def on_fit_start(self, info: dict) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=info.get("max_iter"), desc=self.description, **self.tqdm_options)

    def on_iteration_end(self, record: IterationRecord) -> None:
        if self._bar is None:
            return
        if record.iteration > 0:
            self._bar.update(1)
        self._bar.set_postfix(loss=f"{record.loss:.6g}", grad=f"{record.grad_norm:.2e}")

    def on_fit_end(self, result: FitResult) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
