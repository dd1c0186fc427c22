"""The shared loop of the peer-to-peer strategies (``gossip``, ``local-sgd``).

Every worker's resident object keeps a model of its own, w_i, and loops on its own:
the client starts the run, then asks for batches of local steps (one ``Runtime.call``
per batch, each worker running ``count`` steps and talking only to its peers), and
reads back what the batch did. Per step, each worker returns a snapshot of w_i and
what its meter measured (compute / communication / wait seconds, bytes), so the
client never drives a step.

Honest evaluation: the trace's ``loss`` and ``grad_norm`` are the full-data objective
at the AVERAGE w_bar = mean_i w_i of every step. They are computed after each batch
from the snapshots (one more call: every worker sums its chunks at the batch's
averages), outside the timed loop: ``wall_seconds`` / ``elapsed_seconds`` are the
workers' loop time (plus the batch calls' overhead), not that evaluation.

Rows: worker i holds n_i of the n rows and m workers take part. Its local gradient
is scaled by m n_i / n (the mean of the m local gradients is then the full-data
gradient), so unequal shards (a lost worker's chunks recomputed elsewhere) still
converge to the full-data optimum, not to the mean of the shards' optima.

Failures: a worker lost mid-batch fails the batch; the runtime rebuilds the residents
where the chunks now are (peers and topology over the survivors). The rebuilt
residents refuse the old batch (:class:`ReplicaLostError`), and every one of them
restarts from the average w of the last batch the client read back, then the batch
is run again. What is lost: the interrupted batch's progress and the workers'
disagreement at the last batch's end (all restart at their average); mini-batch draws
follow the new ranks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from daskgd.engine.callbacks import Callback
from daskgd.engine.driver import FitResult, IterationRecord, Stopping
from daskgd.engine.sampling import resolve_seed
from daskgd.models.losses import unpack
from daskgd.models.objective import Objective
from daskgd.optim.base import Optimizer
from daskgd.runtime.codecs import Codec
from daskgd.strategies.allreduce import ReplicaLostError
from daskgd.strategies.base import Capabilities, FitProblem, Strategy, objective_for
from daskgd.strategies.direct import DEFAULT_TIMEOUT_SECONDS, ResidentSession, _check_timeout

__all__ = ["PeerStrategy", "ReplicaLostError", "local_gradient", "without_prox"]

_STATE = "daskgd-p2p"
#: Solvers the peer-to-peer strategies run (each worker steps on its own gradient).
SOLVERS = ("gd", "sgd")
#: A batch of steps is made longer while it takes less than this (client round trips
#: and callbacks stay a small share: ~2 ms a call here against ~0.25 s of steps).
BATCH_SECONDS = 0.25


class PeerStrategy(Strategy):
    """Base of the strategies whose workers each keep a model and loop on their own.

    Parameters
    ----------
    max_batch : int, default=64
        Most local steps run per call before the client reads them back (the batch
        starts at 4 steps and doubles while it takes less than 0.25 s).
    timeout : float, default=30
        Bound in seconds on every wait (a message from a peer, a call, a rebuild).
    transfer_dtype, emulation, tune_cluster
        As for every strategy; ``topk`` codecs are refused (the vectors sent are
        models, which a sparsified copy would move somewhere else entirely).
    """

    self_measured = True
    topology_name = "p2p"

    def __init__(self, *, max_batch: int = 64, timeout: float = DEFAULT_TIMEOUT_SECONDS,
                 transfer_dtype: str | Codec | None = None, emulation: Any = None,
                 tune_cluster: bool = True):  # fmt: skip
        super().__init__(
            transfer_dtype=transfer_dtype, emulation=emulation, tune_cluster=tune_cluster
        )
        if self.codec.kind == "topk":
            raise ValueError(
                f"transfer_dtype={self.codec.name!r} with strategy {self.name!r}: the workers "
                "send models, not gradients; use float64, float32, float16, bfloat16 or int8"
            )
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        self.max_batch = max_batch
        self.timeout = _check_timeout(timeout)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(synchronous=False, exact_sums=self.codec.is_exact, line_search=False,
                            client_update=False, replicated_w=False)  # fmt: skip

    def check(self, optimizer: Optimizer, *, n_workers: int | None = None) -> None:
        super().check(optimizer, n_workers=n_workers)
        if optimizer.name not in SOLVERS:
            raise ValueError(
                f"solver {optimizer.name!r} cannot run with strategy {self.name!r}: every "
                f"worker steps on its own gradient, so only {list(SOLVERS)} (gd with a "
                "numeric learning_rate) apply; lbfgs's curvature pairs and nesterov's "
                "momentum assume one global iterate"
            )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "timeout_seconds": self.timeout, "max_batch": self.max_batch,
                "topology": self.topology_name}  # fmt: skip

    def config(self) -> dict:
        """What the workers' step function needs of this strategy (picklable)."""
        return {}

    #: ``step(resident, state, t) -> (communicated, topology used)``, module level.
    step_function: Any = None

    def run(self, problem: FitProblem, optimizer: Optimizer, stopping: Stopping,
            callbacks: Sequence[Callback] = (), *, info: dict | None = None,
            seed: int | None = None) -> FitResult:  # fmt: skip
        placement = problem.data.placement
        n_workers = len(set(placement)) if placement else None
        self.check(optimizer, n_workers=n_workers)
        w0, seed = problem.start(), resolve_seed(seed)
        with PeerSession(self, problem) as session:
            objective = objective_for(problem, session.top_gram_eigenvalue)
            objective = objective.resolved(optimizer.needs_lipschitz)
            info = {**(info or {}), **self.describe(), **session.describe(), "loss_rows": "all"}
            loop = PeerLoop(self, session, optimizer, objective, seed)
            return loop.run(w0, stopping, callbacks, info)


class PeerSession(ResidentSession):
    """The residents of one peer-to-peer fit."""

    strategy: Any  # a PeerStrategy (it has the runtime options of a ResidentStrategy)

    def __init__(self, strategy: Any, problem: FitProblem):
        super().__init__(strategy, problem)

    def __enter__(self) -> PeerSession:
        super().__enter__()
        return self

    def describe(self) -> dict[str, Any]:
        return {"topology": self.strategy.topology_name, "run_id": self.runtime.run_id}


# -- on the workers ---------------------------------------------------------------------


class _NoProx:
    """An objective whose prox is the identity: a plain gradient step, prox applied later."""

    def __init__(self, objective: Objective):
        self._objective = objective

    def prox(self, w: np.ndarray, step: float) -> np.ndarray:
        return w

    def __getattr__(self, name: str) -> Any:
        return getattr(self._objective, name)


def without_prox(objective: Objective) -> Any:
    """``objective`` with the identity as prox (for a step whose prox follows an average)."""
    return _NoProx(objective)


def _no_value_fn(w: np.ndarray) -> tuple[float, np.ndarray]:
    raise RuntimeError("a peer-to-peer strategy offers no line search (checked before the run)")


def local_gradient(resident: Any, state: dict, w: np.ndarray, t: int) -> tuple[float, np.ndarray]:
    """f_i(w) and its gradient on this worker's rows (or mini-batch), scaled by m n_i / n.

    The mean over the m workers of these is the full-data smooth objective and gradient.
    """
    blocks = None
    optimizer = state["optimizer"]
    if optimizer.stochastic:
        rng = np.random.default_rng([state["seed"], t, resident.blocks[0]])
        size = min(state["batch_blocks"], len(resident.blocks))
        blocks = sorted(rng.choice(resident.blocks, size=size, replace=False).tolist())
    loss_sum, grad_sum, n_rows = unpack(resident.local_sums(w, blocks))
    weight = len(resident.peers) * state["n_local"] / (state["n_total"] * max(n_rows, 1))
    objective = state["objective"]
    penalty_value, penalty_grad = objective.penalty.smooth(w, objective.mask)
    return loss_sum * weight + penalty_value, grad_sum * weight + penalty_grad


def optimizer_step(state: dict, grad: np.ndarray, value: float, at: np.ndarray,
                   objective: Any = None) -> np.ndarray:  # fmt: skip
    """The pure optimizer's update from ``at`` along ``grad``; the state moves on."""
    new, state["opt_state"] = state["optimizer"].update(
        grad, state["opt_state"], at, value=value, value_fn=_no_value_fn,
        objective=state["objective"] if objective is None else objective,
    )  # fmt: skip
    return new


def _p2p_start(resident: Any, setup: dict, w: np.ndarray, opt_state: Any) -> Any:
    """(Re)start this worker's model at ``w``; ``opt_state`` None: the optimizer's init."""
    loss_sum, grad_sum, n_local = unpack(resident.local_sums(w))
    state = {**setup, "w": np.array(w, dtype=np.float64), "n_local": int(n_local),
             "attempt": resident.attempt}  # fmt: skip
    if opt_state is None:
        value, grad = state["objective"].smooth_value_grad(w, loss_sum, grad_sum, n_local)
        opt_state = state["optimizer"].init(w, value=value, grad=grad, objective=state["objective"])
    state["opt_state"] = opt_state
    resident.state[_STATE] = state
    return opt_state if resident.rank == 0 else None


def _p2p_batch(resident: Any, first: int, count: int) -> dict:
    """Steps ``first .. first + count - 1`` of this worker: snapshots and measures of each."""
    state = resident.state.get(_STATE)
    # Rebuilt residents (a lost worker; a new attempt, the same on all of them) refuse
    # before any message, so that every one of them is restarted together.
    if state is None or state["attempt"] != resident.attempt:
        raise ReplicaLostError(f"the model on {resident.address} is from an earlier attempt")
    meter, step = resident.meter, state["step"]
    snapshots = np.empty((count, resident.n_params))
    seconds, measures, communicated, steps, topologies = np.empty(count), [], [], [], set()
    before, clock = meter.as_dict(), time.perf_counter()
    for k in range(count):
        talked, topology = step(resident, state, first + k)
        snapshots[k] = state["w"]
        communicated.append(bool(talked))
        topologies.add(topology)
        steps.append(float(state["opt_state"].step_size))
        now, after = time.perf_counter(), meter.as_dict()
        measures.append({name: after[name] - before[name] for name in after})
        seconds[k], clock, before = now - clock, now, after
    lead = resident.rank == 0  # one copy of what every worker shares
    return {"w": snapshots, "seconds": seconds, "measures": measures,
            "communicated": communicated if lead else None, "steps": steps if lead else None,
            "opt_state": state["opt_state"] if lead else None,
            "topologies": sorted(topologies)}  # fmt: skip


def _p2p_evaluate(resident: Any, points: np.ndarray) -> np.ndarray:
    """This worker's packed sums at every row of ``points``: shape (k, n_params + 2)."""
    return np.stack([resident.local_sums(point) for point in points])


# -- on the client ----------------------------------------------------------------------


class PeerLoop:
    """The client's side of a peer-to-peer fit: start, batches, honest evaluation, records."""

    def __init__(self, strategy: PeerStrategy, session: PeerSession, optimizer: Optimizer,
                 objective: Objective, seed: int):  # fmt: skip
        self.strategy = strategy
        self.runtime = session.runtime
        self.objective = objective
        self.records: list[IterationRecord] = []
        self.consensus: list[float] = []
        self.communicated: list[bool] = []
        self.retries: dict[str, tuple] = {}
        self.topologies: set[str] = set()
        size = getattr(optimizer, "batch_blocks", None) or max(1, session.n_blocks // 4)
        self.setup = {"optimizer": optimizer, "objective": objective, "seed": seed,
                      "n_total": 0, "step": strategy.step_function,
                      "batch_blocks": size, **strategy.config()}  # fmt: skip
        self._last_w: np.ndarray | None = None
        self._last_state: Any = None
        self._clock = 0.0
        self._slowest_step = 0.0

    def run(self, w0: np.ndarray, stopping: Stopping, callbacks: Sequence[Callback],
            info: dict) -> FitResult:  # fmt: skip
        info = dict(info, max_iter=stopping.max_iter, tol=stopping.tol)
        for callback in callbacks:
            callback.on_fit_start(dict(info))
        result = FitResult(w=w0, n_iter=0, converged=False, info=info)
        try:
            at_start = self._evaluate(w0[None, :])
            self.setup["n_total"] = int(unpack(at_start[0])[2])  # rows as the chunks count them
            self._start(w0, None)
            step = float(self._last_state.step_size)
            start = self._records_of(w0[None, None, :], [0.0], {}, [step], [False], 0, 1,
                                     sums=at_start)  # fmt: skip
            going = self._append(start, callbacks, stopping.tol)
            count = min(4, self.strategy.max_batch)
            while going and self.records[-1].iteration < stopping.max_iter:
                count = min(count, stopping.max_iter - self.records[-1].iteration)
                began = time.perf_counter()
                going = self._batch(self.records[-1].iteration + 1, count, callbacks, stopping.tol)
                if time.perf_counter() - began < BATCH_SECONDS:
                    count = min(2 * count, self.strategy.max_batch)
            self._finish(result)
        finally:
            for callback in callbacks:
                callback.on_fit_end(result)
        return result

    def _finish(self, result: FitResult) -> None:
        result.n_iter = self.records[-1].iteration
        assert self._last_w is not None  # every batch read back sets it
        result.w, result.state = self._last_w, self._last_state
        result.optimality = self.records[-1].optimality
        result.converged = bool(result.optimality <= result.info["tol"])
        result.records = self.records
        result.info["topologies_used"] = sorted(self.topologies)
        result.session_report = self._report()

    def _start(self, w: np.ndarray, opt_state: Any) -> None:
        results = self.runtime.call(_p2p_start, self.setup, w, opt_state)
        self._last_state = next(r for r in results.values() if r is not None)

    def _batch(self, first: int, count: int, callbacks: Sequence[Callback], tol: float) -> bool:
        """Run steps first.. on the workers and record them; False once ``tol`` is met."""
        began, attempts = time.perf_counter(), 1
        # Every wait inside is bounded by timeout (a stuck ring fails within it); the
        # call's own bound also leaves room for count steps 4x as slow as any seen yet.
        bound = self.strategy.timeout * 2 + 1.0 + 4 * count * self._slowest_step
        try:
            results = self.runtime.call_with(_p2p_batch, (first, count), timeout=bound)
        except ReplicaLostError as error:  # rebuilt: everyone restarts at the last average
            assert self._last_w is not None  # set by the start, before any batch
            self._start(self._last_w, self._last_state)
            results = self.runtime.call_with(_p2p_batch, (first, count), timeout=bound)
            attempts += 1
            lost = time.perf_counter() - began - results.measures.wall_seconds
            self.retries[f"{self.runtime.run_id}-{first}"] = (lost, [type(error).__name__], [])
        attempts += results.measures.attempts - 1
        wall = time.perf_counter() - began
        order = [address for address in self.runtime.workers if address in results]
        snapshots = np.stack([results[address]["w"] for address in order], axis=1)
        lead = next(r for r in results.values() if r["opt_state"] is not None)
        self._last_state = lead["opt_state"]
        for record in results.values():
            self.topologies.update(record["topologies"])
        per_worker = {a: results[a]["measures"] for a in order}
        seconds = np.max([results[a]["seconds"] for a in order], axis=0)
        self._slowest_step = max(self._slowest_step, float(seconds.max()))
        seconds[0] += max(0.0, wall - float(seconds.sum()))  # the call's own overhead
        records = self._records_of(snapshots, seconds, per_worker, lead["steps"],
                                   lead["communicated"], first, attempts)  # fmt: skip
        return self._append(records, callbacks, tol)

    def _records_of(self, snapshots: np.ndarray, seconds: Any, per_worker: dict, steps: list,
                    communicated: list, first: int, attempts: int,
                    sums: np.ndarray | None = None) -> list:  # fmt: skip
        """(record, consensus distance, average w, communicated) of steps first.. from
        the snapshots, shape (steps, workers, n_params)."""
        averages = snapshots.mean(axis=1)
        spread = np.sqrt(np.mean(np.sum((snapshots - averages[:, None, :]) ** 2, axis=2), axis=1))
        sums = self._evaluate(averages) if sums is None else sums
        records, ends = [], time.time() - np.cumsum(np.asarray(seconds)[::-1])[::-1]
        for k, (average, total) in enumerate(zip(averages, sums, strict=True)):
            loss_sum, grad_sum, n_rows = unpack(total)
            smooth, grad = self.objective.smooth_value_grad(average, loss_sum, grad_sum, n_rows)
            loss = smooth + self.objective.nonsmooth(average)
            norm = self.objective.gradient_mapping_norm(average, grad, steps[k])
            self._clock += float(seconds[k])
            measured = {a: values[k] for a, values in per_worker.items()} or None
            record = IterationRecord(
                iteration=first + k, loss=float(loss), grad_norm=norm, step_size=steps[k],
                wall_seconds=float(seconds[k]), elapsed_seconds=self._clock, n_evaluations=1,
                evaluation_seconds=float(seconds[k]), attempts=attempts if k == 0 else 1,
                key_prefixes=(f"{self.runtime.run_id}-{first + k}",),
                start_time=float(ends[k]), optimality=norm, worker_measures=measured,
            )  # fmt: skip
            records.append((record, float(spread[k]), average, bool(communicated[k])))
        return records

    def _evaluate(self, points: np.ndarray) -> np.ndarray:
        """Full-data packed sums at each of ``points``, added in ring order."""
        results = self.runtime.call(_p2p_evaluate, points)
        return sum(results[a] for a in self.runtime.workers if a in results)

    def _append(self, records: list, callbacks: Sequence[Callback], tol: float) -> bool:
        """Keep the records and show them to the callbacks; False once ``tol`` is met."""
        for record, spread, average, communicated in records:
            if not math.isfinite(record.loss):
                raise FloatingPointError(
                    f"the loss at the average w became {record.loss} at step "
                    f"{record.iteration} with step size {record.step_size:.6g}: the step is "
                    "too large for this problem; lower learning_rate"
                )
            self.records.append(record)
            self.consensus.append(spread)
            self.communicated.append(communicated)
            self._last_w = average
            for callback in callbacks:
                callback.on_iteration_end(record)
            if record.optimality <= tol:
                return False
        return True

    def _report(self) -> dict:
        rounds = np.cumsum(np.array(self.communicated, dtype=np.int64))
        return {"retries": self.retries, "iteration_variables": {
            "consensus_distance": (np.array(self.consensus), {
                "long_name": "sqrt(mean_i ||w_i - w_bar||^2) over the workers' models",
                "units": "1"}),
            "communicated": (np.array(self.communicated, dtype=bool), {
                "long_name": "the step ended with a communication among the workers",
                "units": "1"}),
            "communication_rounds": (rounds, {
                "long_name": "rounds of communication since the start", "units": "1"}),
        }}  # fmt: skip
