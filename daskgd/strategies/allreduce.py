"""``allreduce``: ring all-reduce among the workers; every worker takes the same step.

No central node sums anything: each iteration the workers' resident objects add their
partial sums around a ring (reduce-scatter, then all-gather: 2 (m - 1) messages of 1/m
of the vector each, Patarasuk & Yuan 2009), so every worker ends with the same total,
bit for bit, and runs the same pure optimizer step on it
(:func:`daskgd.engine.steps.next_iterate`, the function the client runs for
``mapreduce``): w is replicated, never broadcast. A line search's extra points are more
all-reduces. The client only says "step t" and reads back the step's record (loss,
optimality, and w, for the callbacks and the result); it checks that every replica took
the same step.

A lost worker loses its replica: the runtime rebuilds the residents where the chunks
now live and the client sends the last iterate it read back to every replica again.
"""

from __future__ import annotations

import hashlib
from typing import Any

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
    timeout, transfer_dtype, emulation, tune_cluster
        As for ``direct`` (:class:`daskgd.strategies.direct.Direct`).
    """

    name = "allreduce"

    def __init__(self, *, algorithm: str = "ring", **options: Any):
        if algorithm not in ("ring", "exchange"):
            raise ValueError(f"algorithm must be 'ring' or 'exchange', got {algorithm!r}")
        super().__init__(**options)
        self.algorithm = algorithm

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "algorithm": self.algorithm}

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(exact_sums=self.codec.is_exact, client_update=False, replicated_w=True)

    def session(self, problem: FitProblem) -> RingSession:
        return RingSession(self, problem)

    def stepper(self, session, optimizer, objective, w0, seed):  # type: ignore[override]
        return RingStepper(session, optimizer, objective, w0, seed)


class RingSession(ResidentSession):
    topology = "ring"
    strategy: AllReduce

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "topology": self.strategy.algorithm}


class RingStepper:
    """The driver's stepper: each step runs on every worker; the client reads the records."""

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
        self._last: Iterate | None = None

    def start(self) -> tuple[Iterate, list[Evaluation]]:
        job = (self.optimizer, self.objective, self.w0, self.seed, self.size, self.algorithm)
        return self._read(self.runtime.call(_ring_start, *job))

    def step(self, iterate: Iterate, iteration: int) -> tuple[Iterate, list[Evaluation]]:
        try:
            results = self.runtime.call(_ring_step, iteration, None)
        except ReplicaLostError:
            # Rebuilt residents lost their replica: give every one the last iterate.
            results = self.runtime.call(_ring_step, iteration, self._last)
        return self._read(results)

    def _read(self, results: Any) -> tuple[Iterate, list[Evaluation]]:
        records = list(results.values())
        digests = {record["digest"] for record in records}
        if len(digests) != 1:
            raise RuntimeError(
                "the replicas of w differ after an all-reduce step (a non-deterministic "
                "reduction?): the ring's totals must be the same bits on every worker"
            )
        first = next(record for record in records if record["iterate"] is not None)
        self._last = first["iterate"]
        measures = results.measures
        evaluations = [
            Evaluation(
                0.0,
                np.zeros(0),
                0,
                measures.wall_seconds / max(first["n_evaluations"], 1),
                measures.attempts,
                self.runtime.run_id,
                measures=dict(measures) if index == 0 else None,
            )  # fmt: skip
            for index in range(first["n_evaluations"])
        ]
        return self._last, evaluations


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


def _record(resident: Any, iterate: Iterate, n_evaluations: int) -> dict:
    digest = hashlib.blake2b(np.ascontiguousarray(iterate.params).tobytes(), digest_size=16)
    return {
        "digest": digest.hexdigest(),
        "n_evaluations": n_evaluations,
        # One replica sends the whole iterate back (w for the result, the rest for a
        # rebuild); the others send only the digest that shows they agree.
        "iterate": iterate if resident.rank == 0 else None,
    }


def _ring_start(resident: Any, optimizer, objective, w0, seed, size, algorithm) -> dict:
    state = {"tag": 0, "optimizer": optimizer, "objective": objective, "seed": seed,
             "size": size, "attempt": resident.attempt, "algorithm": algorithm}  # fmt: skip
    resident.state[_STATE] = state
    state["evaluate"] = Evaluator(_ring_gather(resident), objective)
    iterate = first_iterate(optimizer, objective, w0, state["evaluate"])
    state["iterate"] = iterate
    return _record(resident, iterate, len(state["evaluate"].take()))


def _ring_step(resident: Any, iteration: int, restore: Iterate | None) -> dict:
    state = resident.state.get(_STATE)
    if restore is not None and state is not None:
        state["iterate"], state["attempt"] = restore, resident.attempt
        state["evaluate"] = Evaluator(_ring_gather(resident), state["objective"])
    # Residents rebuilt after a lost worker (a new attempt, the same on all of them):
    # every replica refuses, before any message, and the client restores them all.
    if state is None or state["attempt"] != resident.attempt:
        raise ReplicaLostError(f"the replica on {resident.address} is from an earlier attempt")
    optimizer = state["optimizer"]
    blocks = None
    if optimizer.stochastic:
        blocks = batch_blocks(state["seed"], iteration, resident.n_blocks, state["size"])
    new = next_iterate(optimizer, state["objective"], state["iterate"], state["evaluate"], blocks)
    state["iterate"] = new
    return _record(resident, new, len(state["evaluate"].take()))


__all__ = ["AllReduce"]
