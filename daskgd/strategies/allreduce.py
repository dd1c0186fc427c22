"""``allreduce``: ring all-reduce among the workers; every worker takes the same step.

No central node sums anything: each iteration the workers' resident objects add their
partial sums around a ring (reduce-scatter, then all-gather: 2 (m - 1) messages of 1/m
of the vector each, Patarasuk & Yuan 2009), so every worker ends with the same total,
bit for bit, and runs the same pure optimizer step on it
(:func:`daskgd.engine.steps.next_iterate`, the function the client runs for
``mapreduce``): w is replicated, never broadcast. A line search's extra points are more
all-reduces. The client only says "steps t to t + k - 1" and reads back each step's
record (loss, optimality, the workers' own timings, and w, for the callbacks and the
result); it checks that every replica took the same steps. The workers take the k steps
on their own, stopping early at ``tol``, a stalled step or a non-finite loss, so one
request's round trip (and its hand-off to a worker thread) is paid once per k steps,
not per step: with ``steps_per_call='auto'`` k grows while a request stays under
~0.1 s (the live view stays current), and is 1 when failures are emulated (so a kill
happens at the iteration asked for).

A lost worker loses its replica: the runtime rebuilds the residents where the chunks
now live and the client sends the last iterate it read back to every replica again.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import deque
from typing import Any, NamedTuple

import numpy as np

from daskgd.engine.sampling import batch_blocks, batch_size
from daskgd.engine.steps import Evaluation, Evaluator, Iterate, first_iterate, next_iterate
from daskgd.models.losses import unpack
from daskgd.models.objective import Objective
from daskgd.optim.base import Optimizer
from daskgd.strategies.base import Capabilities, FitProblem, register_strategy
from daskgd.strategies.direct import ResidentSession, ResidentStrategy

_STATE = "daskgd-allreduce"


@register_strategy
class AllReduce(ResidentStrategy):
    """Ring all-reduce of the partial sums; the optimizer step replicated on every worker.

    Parameters
    ----------
    algorithm : {'ring', 'exchange'}, default='ring'
        'ring': reduce-scatter then all-gather, 2 (m - 1) steps of 1/m of the vector;
        'exchange': every worker sends its whole vector to every other, one step
        ((m - 1) times the vector per worker): fewer latencies at small m, more bytes.
    steps_per_call : int or 'auto', default='auto'
        Steps the workers take per request from the client (see the module docstring).
        The iterates are the same whatever it is; only the client's view is batched.
    timeout, transfer_dtype, emulation, tune_cluster
        As for ``direct`` (:class:`daskgd.strategies.direct.Direct`).
    """

    name = "allreduce"

    def __init__(
        self, *, algorithm: str = "ring", steps_per_call: int | str = "auto", **options: Any
    ):
        if algorithm not in ("ring", "exchange"):
            raise ValueError(f"algorithm must be 'ring' or 'exchange', got {algorithm!r}")
        if steps_per_call != "auto" and (
            isinstance(steps_per_call, bool)
            or not isinstance(steps_per_call, (int, np.integer))
            or steps_per_call < 1
        ):
            raise ValueError(
                f"steps_per_call must be an integer >= 1 or 'auto', got {steps_per_call!r}"
            )
        super().__init__(**options)
        self.algorithm = algorithm
        self.steps_per_call = steps_per_call

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "algorithm": self.algorithm,
            "steps_per_call": str(self.steps_per_call),
        }

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(exact_sums=self.codec.is_exact, client_update=False, replicated_w=True)

    def session(self, problem: FitProblem) -> RingSession:
        return RingSession(self, problem)

    def stepper(self, session, optimizer, objective, w0, seed):  # type: ignore[override]
        stepper = RingStepper(session, optimizer, objective, w0, seed)
        emulation = self.emulation
        if self.steps_per_call != "auto":
            stepper.fixed_count = int(self.steps_per_call)
        elif emulation is not None and emulation.failures:
            stepper.fixed_count = 1
        return stepper


class RingSession(ResidentSession):
    topology = "ring"
    strategy: AllReduce

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "topology": self.strategy.algorithm}


class RingStepper:
    """The driver's stepper: the workers take batches of steps; the client reads records.

    ``step`` answers from the records of the last batch; when they are used up it asks
    the workers for the next batch. ``last_step_timing`` tells the driver when, in its
    clock, each step began and ended: the workers' own duration of the step plus an even
    share of the request's round trip.
    """

    #: A request should last about this long (s) when ``steps_per_call='auto'``.
    TARGET_CALL_SECONDS = 0.1
    #: Most steps per request, and most growth from one request to the next.
    MAX_STEPS, MAX_GROWTH = 64, 4

    def __init__(self, session: RingSession, optimizer: Optimizer, objective: Objective,
                 w0: np.ndarray, seed: int):  # fmt: skip
        self.runtime = session.runtime
        # Shipped to every worker: no callable inside, the Lipschitz estimate made first.
        self.objective = objective.resolved(optimizer.needs_lipschitz)
        self.optimizer = optimizer
        self.w0 = w0
        self.size = batch_size(session.n_blocks, getattr(optimizer, "batch_blocks", None))
        self.seed = seed
        self.algorithm = session.strategy.algorithm
        self.stopping: Any = None
        self.fixed_count: int | None = None
        self.last_step_timing: tuple[float, float] | None = None
        self._count = 1
        self._last: Iterate | None = None
        self._queue: deque[tuple[Iterate, list[Evaluation], tuple[float, float]]] = deque()

    def start(self) -> tuple[Iterate, list[Evaluation]]:
        job = (self.optimizer, self.objective, self.w0, self.seed, self.size, self.algorithm)
        now = time.perf_counter()  # no overhead to share: the driver times iteration 0
        self._read(self.runtime.call(_ring_start, *job), now, now)
        return self._next()

    def step(self, iterate: Iterate, iteration: int) -> tuple[Iterate, list[Evaluation]]:
        if not self._queue:
            count, tol = self._batch(iteration)
            began = time.perf_counter()
            try:
                results = self.runtime.call(_ring_steps, iteration, count, tol, None)
            except ReplicaLostError:
                # Rebuilt residents lost their replica: give every one the last iterate.
                results = self.runtime.call(_ring_steps, iteration, count, tol, self._last)
            self._read(results, began, time.perf_counter())
        return self._next()

    def bind(self, stopping: Any) -> None:
        """The run's stopping rules: a batch never steps past max_iter, and ends at tol."""
        self.stopping = stopping

    def _next(self) -> tuple[Iterate, list[Evaluation]]:
        iterate, evaluations, self.last_step_timing = self._queue.popleft()
        return iterate, evaluations

    def _batch(self, iteration: int) -> tuple[int, float]:
        """(steps to ask for, tol at which the workers stop early)."""
        count = self.fixed_count or self._count
        tol = -math.inf
        if self.stopping is not None:
            count = max(1, min(count, self.stopping.max_iter - iteration + 1))
            tol = self.stopping.tol
        return count, tol

    def _adapt(self, seconds: float, steps: int) -> None:
        per_step = max(seconds / max(steps, 1), 1e-6)
        wanted = int(self.TARGET_CALL_SECONDS / per_step)
        self._count = max(1, min(wanted, self.MAX_STEPS, self._count * self.MAX_GROWTH))

    def _read(self, results: Any, began: float, ended: float) -> None:
        """Queue the records of a request: one (iterate, evaluations, timing) per step."""
        batches = {address: list(records) for address, records in results.items()}
        steps = _agreed(batches)
        first = next(records for records in batches.values() if records[0]["iterate"] is not None)
        measures = results.measures
        shares = _step_measures(
            measures, {a: [r["measures"] for r in b] for a, b in batches.items()}
        )
        seconds = [record["seconds"] for record in first]
        overhead = max(0.0, (ended - began) - sum(seconds)) / steps
        at = began
        for index, record in enumerate(first):
            wall = seconds[index] + overhead
            n = max(record["n_evaluations"], 1)
            evaluations = [
                Evaluation(
                    0.0,
                    np.zeros(0),
                    0,
                    wall / n,
                    measures.attempts if index == 0 and k == 0 else 1,
                    self.runtime.run_id,
                    measures=shares[index] if k == 0 else None,
                )  # fmt: skip
                for k in range(record["n_evaluations"])
            ]
            self._queue.append((record["iterate"], evaluations, (at, at + wall)))
            at += wall
        self._last = first[-1]["iterate"]
        if ended > began:
            self._adapt(ended - began, steps)


def _agreed(batches: dict[str, list[dict]]) -> int:
    """The number of steps every replica took, checked to be the same steps, bit for bit."""
    lengths = {len(records) for records in batches.values()}
    digests = {tuple(r["digest"] for r in records) for records in batches.values()}
    if len(lengths) != 1 or len(digests) != 1:
        raise RuntimeError(
            "the replicas of w differ after an all-reduce step (a non-deterministic "
            "reduction?): the ring's totals must be the same bits on every worker"
        )
    return lengths.pop()


def _step_measures(measures: Any, steps: dict[str, list[dict]]) -> list[dict]:
    """Per step, ``{worker: measures}``: what each worker timed in that step, plus an even
    share of what the request cost beyond its steps (its transport, the wait for the
    slowest reply), so the steps add up to the request's measures."""
    n = len(next(iter(steps.values())))
    out: list[dict] = [{} for _ in range(n)]
    for address, total in measures.items():
        own = steps.get(address, [{}] * n)
        for name, value in total.items():
            rest = (value - sum(step.get(name, 0.0) for step in own)) / n
            for index in range(n):
                out[index].setdefault(address, {})[name] = own[index].get(name, 0.0) + rest
    return out


class ReplicaLostError(RuntimeError):
    """A resident has no replica of the iterate (it was rebuilt after a lost worker)."""


def _ring_gather(resident: Any):
    """gather(w, blocks) on a resident: its partial sums, all-reduced over the ring."""

    def gather(w: np.ndarray, blocks=None) -> Evaluation:
        state = resident.state[_STATE]
        state["tag"] += 1
        partial = resident.local_sums(w, blocks)
        total = resident.allreduce(partial, ("sums", state["tag"]), algorithm=state["algorithm"])
        loss_sum, grad_sum, n_rows = unpack(total)
        return Evaluation(loss_sum, grad_sum, n_rows, 0.0, 1, "ring")

    return gather


class _StepState(NamedTuple):
    """What the driver reads of a state in a step that is not a batch's last."""

    step_size: float
    stalled: bool


def _record(resident: Any, iterate: Iterate, n_evaluations: int, *, whole: bool = True) -> dict:
    digest = hashlib.blake2b(np.ascontiguousarray(iterate.params).tobytes(), digest_size=16)
    if resident.rank != 0:
        sent = None  # the others send only the digest that shows they agree
    elif whole:
        sent = iterate  # the whole iterate: w for the result, the state for a rebuild
    else:  # within a batch: what the driver and the callbacks read, not the state
        light = _StepState(float(iterate.state.step_size), bool(iterate.state.stalled))
        sent = iterate._replace(grad=np.zeros(0), state=light)
    return {"digest": digest.hexdigest(), "n_evaluations": n_evaluations, "iterate": sent}


def _ring_start(resident: Any, optimizer, objective, w0, seed, size, algorithm) -> list:
    state = {"tag": 0, "optimizer": optimizer, "objective": objective, "seed": seed,
             "size": size, "attempt": resident.attempt, "algorithm": algorithm}  # fmt: skip
    resident.state[_STATE] = state
    state["evaluate"] = Evaluator(_ring_gather(resident), objective)
    began = time.perf_counter()
    iterate = first_iterate(optimizer, objective, w0, state["evaluate"])
    state["iterate"] = iterate
    record = _record(resident, iterate, len(state["evaluate"].take()))
    return [{**record, "seconds": time.perf_counter() - began, "measures": {}}]


def _ring_steps(resident: Any, first: int, count: int, tol: float, restore: Iterate | None) -> list:
    """Steps ``first`` .. ``first + count - 1`` on this replica (fewer when one reaches
    ``tol``, stalls or is not finite: the driver stops there); one record per step."""
    state = resident.state.get(_STATE)
    if restore is not None and state is not None:
        state["iterate"], state["attempt"] = restore, resident.attempt
        state["evaluate"] = Evaluator(_ring_gather(resident), state["objective"])
    # Residents rebuilt after a lost worker (a new attempt, the same on all of them):
    # every replica refuses, before any message, and the client restores them all.
    if state is None or state["attempt"] != resident.attempt:
        raise ReplicaLostError(f"the replica on {resident.address} is from an earlier attempt")
    optimizer, records = state["optimizer"], []
    for iteration in range(first, first + count):
        blocks = None
        if optimizer.stochastic:
            blocks = batch_blocks(state["seed"], iteration, resident.n_blocks, state["size"])
        before, began = resident.meter.as_dict(), time.perf_counter()
        new = next_iterate(
            optimizer, state["objective"], state["iterate"], state["evaluate"], blocks
        )
        state["iterate"] = new
        last = (
            iteration == first + count - 1
            or not new.optimality > tol
            or bool(new.state.stalled)
            or not math.isfinite(new.value)
        )
        record = _record(resident, new, len(state["evaluate"].take()), whole=last)
        after = resident.meter.as_dict()
        record["seconds"] = time.perf_counter() - began
        record["measures"] = {name: after[name] - before[name] for name in after}
        records.append(record)
        if last:
            break
    return records


__all__ = ["AllReduce"]
