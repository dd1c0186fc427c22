"""``parameter-server``: a server holding w on one worker; workers pull w, push their sums.

    get_strategy("parameter-server", staleness=0)     # synchronous: one step per round
    get_strategy("parameter-server", staleness=2)     # stale synchronous parallel (SSP)
    get_strategy("parameter-server", staleness=None)  # asynchronous (Downpour-like)

Where the server is. On the worker of the resident of rank 0 (the worker holding the
first chunk of the data), chosen by the client before the run and recorded in the trace
attr ``server``. On a worker, not on the client: the pushes and pulls then go worker to
worker through distributed's pooled connections with no client in the loop (the client
sends one request that runs the whole fit, and polls it for the records), the server
is a node of the cluster as in the lecture, and its traffic (m pulls and m pushes per
round) shows in that worker's bytes, which is what the busiest-node figure compares
with peer-to-peer strategies. That worker also computes its own chunks: a stale server
is a coroutine on its event loop (a push is applied at once, while the worker's thread
computes); the synchronous one runs in that thread, its own sums part of each round.

``staleness=0``: every round the server sends w to all workers and waits for all their
partial sums, adds them in rank order and takes one optimizer step (the driver's own
:func:`~daskgd.engine.steps.next_iterate`, run on the server): the same iterates as
``mapreduce`` within rounding, gd's backtracking included (a trial point is one more
round). ``staleness=s >= 1`` or ``None``: one update per push, with the aggregated
gradient of every worker's latest sum and a step that shrinks with how far w moved
since those sums were computed (``step_rule``, default ``'secant'``), at most s steps
between the fastest and the slowest worker for SSP; see :mod:`daskgd.runtime.server`
for the rules, the measurements behind the default, and the stopping rule.

What the trace records. ``iteration`` is one server update (a round for staleness=0);
``staleness`` per (iteration, worker) is the updates between the w a worker computed
its sum at and the update that applied it (0 in synchronous rounds, NaN where that
worker's sum was not applied at that iteration); the per-worker seconds and bytes are
each push's (the pull's wait included), the server's worker also carrying the server's
traffic. ``loss``, ``grad_norm`` and ``optimality`` are the full-data F, gradient norm and
gradient mapping at the iteration's w: exact for staleness=0 (the round's sums), and for
the others evaluated after the run on every ``loss_every``-th w the server kept (NaN in
between; the workers are not stalled for it). ``elapsed_seconds`` is the server's clock.

Solvers: with staleness=0, every full-batch solver (gd, nesterov, lbfgs: the server runs
the same pure steps as the client would, line searches being more rounds); sgd is
rejected (the workers push the sums of all their rows). With staleness != 0, 'gd' only,
with a numeric ``learning_rate``: the step is a plain proximal step (L1 through its
prox), no line search (the points of a trial would be evaluated by workers at different
w); lbfgs, nesterov, sgd and gd's backtracking are rejected before anything starts.
``transfer_dtype`` other than float64 is not supported yet.

A worker lost during the fit: the runtime rebuilds the residents where its chunks are
recomputed (from their lineage) and sends the request again; the server, whose state
lives in its resident's state, goes on from its last update with the remaining workers:
what is lost is the gradients in flight (computed, not yet applied) and the dead
worker's latest sum (the first update after the rebuild waits for a fresh sum from
every worker). For staleness=0 the iterates are those of an undisturbed fit. A lost
server loses w: the fit stops with :class:`~daskgd.runtime.server.ServerLostError`.
Callbacks are not in the server's loop (they see each update up to a poll later), so
emulated failures (``KillAt``, ``KillRandomly``) are the server's to send: the client
plans them before the run (:func:`kill_plan`, among the workers at its start), and
after update t the server sends each victim a KILL pull, on which that worker SIGKILLs
its own process (the server's own worker: the fit stops with ServerLostError); the fit
then goes on as above. Trace attr ``workers_killed``: [[iteration, address], ...].

Live records and stop (:mod:`daskgd.strategies.pslive`). While the fit runs, the client
polls the workers every 0.2 s (:meth:`Runtime.peek`: a handler on each worker's event
loop reads what the server and the workers added since the last poll) and passes each
new record to ``on_iteration_end`` in order, once its pushes' measures are known: the
records of the final trace, except a stale server's loss, grad_norm and optimality
(evaluated after the run: NaN live; a LiveTrace takes the final records at the end).
A callback that raises, or a KeyboardInterrupt in the client's wait: the client tells
the server to stop (it stops before its next update or round and stops the workers),
waits for the request to end (bounded), and the error propagates; the result the
callbacks' ``on_fit_end`` gets has the records they saw and ``info["stopped_by"] ==
'client'``.

Overhead of the polls (``benchmarks/bench_architectures.py --parts ps-live``: 4
workers, the same fits with a LiveTrace, polled, and without callbacks, no poll,
interleaved, 3 of each, medians of the server's seconds per update): under the ps
part's emulated compute and straggler, ratios 0.97-0.99 (staleness=0), 1.00-1.01 (2)
and 1.00 (None) in two runs (loads 4-9). With real compute only (1-17 ms per update,
the server's event loop busiest), the ratios went from 0.57 to 1.8 across runs and
conditions, the same condition's fits varying 2-4x among themselves (loads 7-9: the
machine's noise, which the polls do not rise above). A poll took 15-21 ms of the
client's time (median; the first, which opens the connections, up to 0.5 s; load 8.5),
one small message per worker every 0.2 s. The ``ps`` part (its fits have no callbacks:
no poll, the request only started without waiting), before and after this change run
back to back (load 3-5, rules secant and descent): synchronous 30 rounds 3.88 / 3.90 s
before, 3.94 / 3.86 s after (0.5/L, 1/L: ratios 1.02 and 0.99); SSP and async ratios to
it within 0.01 (secant 0.21 / 0.20, 0.17 / 0.17 at 0.5/L; 0.35 / 0.35, 0.23 / 0.23 at 1/L).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from daskgd.engine.callbacks import Callback
from daskgd.engine.driver import FitResult, Stopping, check_finite
from daskgd.engine.steps import Evaluation, Evaluator, first_iterate, next_iterate
from daskgd.models.losses import unpack
from daskgd.models.objective import Objective
from daskgd.optim.base import Optimizer
from daskgd.runtime import server as ps
from daskgd.runtime.codecs import Codec
from daskgd.runtime.emulation import KillAt, _address
from daskgd.strategies import pslive
from daskgd.strategies.base import Capabilities, FitProblem, objective_for, register_strategy
from daskgd.strategies.direct import DEFAULT_TIMEOUT_SECONDS, ResidentSession, ResidentStrategy


def _check_staleness(staleness: Any) -> int | None:
    if staleness is None:
        return None
    if isinstance(staleness, bool) or not isinstance(staleness, (int, np.integer)):
        raise ValueError(
            f"staleness must be an integer >= 0 (0: synchronous) or None (asynchronous), "
            f"got {staleness!r}"
        )
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0 (0: synchronous) or None, got {staleness!r}")
    return int(staleness)


@register_strategy
class ParameterServer(ResidentStrategy):
    """A parameter server on a worker: workers pull w and push partial sums straight to it.

    Parameters
    ----------
    staleness : int >= 0 or None, default=0
        0: synchronous rounds; s: a worker at most s steps ahead of the slowest (SSP);
        None: asynchronous, every push applied as it arrives.
    loss_every : int, default=1
        With staleness != 0, the server keeps every loss_every-th w, whose full-data loss
        is evaluated after the run (the trace's ``loss``; NaN at the others).
    step_rule : str, default="secant"
        One of "secant", "descent", "mean-age", "max-age", "stable", "bounded", "constant".
        With staleness != 0, how the step shrinks with the staleness of the aggregated
        sums (:func:`daskgd.runtime.server.stale_step`; the rules, the default and the
        measurements behind it in :mod:`daskgd.runtime.server`). ``secant``, ``descent``,
        ``stable`` and ``bounded`` read L of the objective: one more pass before the fit
        (the top eigenvalue of X'X).
    timeout, transfer_dtype, emulation, tune_cluster
        As for ``direct`` (:class:`daskgd.strategies.direct.Direct`); every wait of a
        worker or of the server is bounded by ``timeout``.
    """

    name = "parameter-server"
    #: the server sends the emulated failures itself (callbacks are not in its loop)
    injects_failures = True

    def __init__(self, *, staleness: int | None = 0, loss_every: int = 1,
                 step_rule: str = ps.DEFAULT_STEP_RULE,
                 timeout: float = DEFAULT_TIMEOUT_SECONDS,
                 transfer_dtype: str | Codec | None = None, emulation: Any = None,
                 tune_cluster: bool = True):  # fmt: skip
        self.staleness = _check_staleness(staleness)
        if step_rule not in ps.STEP_RULES:
            raise ValueError(
                f"unknown step_rule {step_rule!r}; choose one of {', '.join(ps.STEP_RULES)}"
            )
        self.step_rule = step_rule
        if isinstance(loss_every, bool) or not isinstance(loss_every, int) or loss_every < 1:
            raise ValueError(f"loss_every must be an integer >= 1, got {loss_every!r}")
        super().__init__(timeout=timeout, transfer_dtype=transfer_dtype, emulation=emulation,
                         tune_cluster=tune_cluster)  # fmt: skip
        if not self.codec.is_exact:
            raise ValueError(
                f"transfer_dtype={self.codec.name!r} is not supported by strategy "
                "'parameter-server' yet (its pushes and pulls are float64)"
            )
        self.loss_every = loss_every

    @property
    def synchronous(self) -> bool:
        return self.staleness == 0

    @property
    def capabilities(self) -> Capabilities:
        sync = self.synchronous
        return Capabilities(synchronous=sync, exact_sums=sync, line_search=sync,
                            client_update=False, mini_batches=False)  # fmt: skip

    def check(self, optimizer: Optimizer, *, n_workers: int | None = None) -> None:
        if optimizer.stochastic:
            raise ValueError(
                f"solver {optimizer.name!r} cannot run with strategy 'parameter-server': its "
                "workers push the sums of all their rows (no mini-batches); use solver='gd'"
            )
        if optimizer.name != "gd" and not self.synchronous:
            raise ValueError(
                f"solver {optimizer.name!r} cannot run with strategy 'parameter-server' and "
                f"staleness={self.staleness}: a stale server takes plain (proximal) gradient "
                "steps (momentum and curvature pairs assume gradients at the current w); use "
                "solver='gd', or staleness=0"
            )
        if optimizer.line_search and not self.synchronous:
            raise ValueError(
                f"solver 'gd' with learning_rate='auto' backtracks (a line search), which "
                f"strategy 'parameter-server' with staleness={self.staleness} cannot offer "
                "(its workers compute at different w): give a numeric learning_rate"
            )

    def describe(self) -> dict[str, Any]:
        described = {**super().describe(), "staleness": self.staleness,
                     "loss_every": self.loss_every}  # fmt: skip
        if not self.synchronous:
            described["step_rule"] = self.step_rule
        return described

    def run(self, problem: FitProblem, optimizer: Optimizer, stopping: Stopping,
            callbacks: Sequence[Callback] = (), *, info: dict | None = None,
            seed: int | None = None) -> FitResult:  # fmt: skip
        placement = problem.data.placement
        self.check(optimizer, n_workers=len(set(placement)) if placement else None)
        w0 = problem.start()
        with StarSession(self, problem) as session:
            runtime = session.runtime
            objective = objective_for(problem, session.top_gram_eigenvalue)
            # the 'bounded' step rule reads L: one more pass (the top eigenvalue of X'X)
            needs_l = not self.synchronous and self.step_rule in ps.NEEDS_LIPSCHITZ
            objective = objective.resolved(optimizer.needs_lipschitz or needs_l)
            info = {**(info or {}), **self.describe(), **session.describe(), "loss_rows": "all",
                    "max_iter": stopping.max_iter, "tol": stopping.tol}  # fmt: skip
            for callback in callbacks:
                callback.on_fit_start(dict(info))
            result = FitResult(w=w0, n_iter=0, converged=False, info=info)
            live = pslive.LiveRecords(uuid.uuid4().hex, session.server, self.synchronous)
            try:
                run = self._run_sync if self.synchronous else self._run_async
                run(runtime, session.server, optimizer, objective, w0, stopping, result,
                    (live, callbacks))  # fmt: skip
                # what the polls had not passed on yet, as the final trace has it
                pslive.deliver(live, result.records[live.built :], callbacks)
            except BaseException:  # what the callbacks saw; 'client' if the server stopped
                result.records = list(live.delivered)
                result.n_iter = result.records[-1].iteration if result.records else 0
                result.info["stopped_by"] = live.stopped
                raise
            finally:
                for callback in callbacks:
                    callback.on_fit_end(result)
            return result

    def _bound(self, stopping: Stopping) -> float:
        # Every wait inside is bounded by the timeout, and each update must follow the
        # last within it: this bounds the one request that runs the whole fit.
        return self.timeout * (stopping.max_iter + 2)

    def _run_sync(self, runtime, server, optimizer, objective, w0, stopping, result,
                  watch) -> None:  # fmt: skip
        """The fit as one request, its records passed on live (``watch``: the
        :class:`~daskgd.strategies.pslive.LiveRecords` and the callbacks)."""
        token = watch[0].token
        kills = kill_plan(self.emulation, runtime.workers, stopping.max_iter)
        job = SyncJob(token, server, optimizer, objective, w0, stopping.max_iter, stopping.tol,
                      kills)  # fmt: skip
        results = pslive.follow(runtime, _sync_run, job, self._bound(stopping), *watch)
        progress: SyncProgress = results[server]["progress"]
        records = {address: reply["records"] for address, reply in results.items()}
        result.records = pslive.sync_records(progress, records)
        result.info["attempts"] = results.measures.attempts
        iterate = progress.iterate
        result.w, result.state, result.n_iter = iterate.params, iterate.state, progress.iteration
        result.stalled = progress.stalled
        result.info["workers_killed"] = _killed(progress.killed)
        result.optimality = float(iterate.optimality)
        result.converged = bool(iterate.optimality <= stopping.tol)

    def _run_async(self, runtime, server, optimizer, objective, w0, stopping, result,
                   watch) -> None:  # fmt: skip
        """The fit as one request, its records passed on live (``watch``: the
        :class:`~daskgd.strategies.pslive.LiveRecords` and the callbacks)."""
        token = watch[0].token
        step = float(optimizer.initial_step(objective))
        lipschitz = float(objective.lipschitz) if self.step_rule in ps.NEEDS_LIPSCHITZ else None
        kills = kill_plan(self.emulation, runtime.workers, stopping.max_iter)
        job = ps.AsyncJob(token, server, self.staleness, step, objective, w0, stopping.max_iter,
                          stopping.tol, self.loss_every, self.timeout, self.step_rule,
                          lipschitz, kills)  # fmt: skip
        results = pslive.follow(runtime, ps.run_async, job, self._bound(stopping), *watch)
        progress: ps.Progress = results[server]["progress"]
        records = {address: reply["records"] for address, reply in results.items()}
        exact = _exact_at(runtime, objective, job.learning_rate, progress.snapshots)
        result.records = pslive.async_records(progress, records, exact, server)
        result.info["attempts"] = results.measures.attempts
        result.w, result.n_iter = progress.w, progress.version
        last = exact[progress.version]
        result.optimality = last["optimality"]
        result.converged = bool(last["optimality"] <= stopping.tol)
        result.info["stopped_by"] = progress.stopped
        result.info["workers_killed"] = _killed(progress.killed)


def kill_plan(emulation: Any, workers: Sequence[str], max_iter: int) -> dict[int, tuple]:
    """{iteration: workers to kill after it} of the emulated failures, chosen as
    :class:`~daskgd.engine.failures.FailureInjector` does but before the run, among the
    workers at its start (sorted addresses): ``KillRandomly`` draws for every iteration
    up to max_iter; at most all workers but one at an iteration."""
    if emulation is None or not emulation.failures:
        return {}
    workers = sorted(workers)
    plan: dict[int, set] = {}
    for failure in emulation.failures:
        if isinstance(failure, KillAt):
            plan.setdefault(int(failure.iteration), set()).add(_address(failure.worker, workers))
            continue
        rng = np.random.default_rng(failure.seed)
        for iteration in range(max_iter + 1):
            draws = rng.random(len(workers))
            chosen = {w for w, u in zip(workers, draws, strict=True) if u < failure.probability}
            plan.setdefault(iteration, set()).update(chosen)
    return {t: tuple(sorted(v)[: len(workers) - 1]) for t, v in plan.items() if v}


def _killed(killed: dict) -> list[list]:
    """[[iteration, address], ...] of the KILLs the server sent (the trace attr)."""
    return [[int(t), address] for t, victims in sorted(killed.items()) for address in victims]


class StarSession(ResidentSession):
    """The runtime's residents of one fit; the server is the resident of rank 0."""

    topology = "star"

    def __enter__(self) -> StarSession:
        super().__enter__()
        self.server = self.runtime.workers[0]
        return self

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "server": self.server}


# -- staleness=0: the synchronous server (the server resident's worker thread) ----------------


@dataclass(frozen=True)
class SyncJob:
    token: str
    server: str
    optimizer: Optimizer
    objective: Objective
    w0: np.ndarray
    max_iter: int
    tol: float
    kills: dict = field(default_factory=dict)


@dataclass
class SyncProgress:
    """The synchronous server's state, kept in its resident's state across a rebuild."""

    iterate: Any = None
    iteration: int = 0
    evaluations: int = 0
    stalled: bool = False
    rows: list = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    killed: dict = field(default_factory=dict)  # as ps.Progress.killed
    stopped: str = ""  # 'client': asked to stop (ps.request_stop)


def _sync_run(resident: Any, job: SyncJob) -> dict:
    """Every resident's function for staleness=0: the server serves, the others work."""
    ps.check_server(resident, job.server)
    records = ps.records_of(resident, job.token)
    if resident.address != job.server:
        ps.work(resident, job.server, (ps.PUSH, resident.rank), records)
        return {"records": records}
    key = f"{ps.STATE}-{job.token}-progress"
    progress = resident.state.setdefault(key, SyncProgress())
    others = [peer for peer in resident.peers if peer != resident.address]
    try:
        _sync_rounds(resident, job, progress, records, others)
    except BaseException:
        for peer in others:  # stop them now (best effort: some may be gone)
            resident.send(peer, ps.PULL, ps.STOP, wait=False, exact=True)
        raise
    for peer in others:
        resident.send(peer, ps.PULL, ps.STOP, exact=True)
    return {"records": records, "progress": progress}


def _sync_rounds(resident, job: SyncJob, progress: SyncProgress, records, others) -> None:
    ids: list[int] = []
    evaluate = Evaluator(_round(resident, progress, records, others, ids), job.objective)
    optimizer, objective = job.optimizer, job.objective
    if progress.iterate is None:
        progress.iterate = first_iterate(optimizer, objective, job.w0, evaluate)
        check_finite(progress.iterate, 0)
        progress.rows.append(_row(0, progress.iterate, ids))
    _kill(resident, job, progress)
    while not progress.iterate.optimality <= job.tol and progress.iteration < job.max_iter:
        if ps.stop_requested(resident, job.token):  # the client stops the fit: seen per round
            progress.stopped = "client"
            return
        new = next_iterate(optimizer, objective, progress.iterate, evaluate)
        if new.state.stalled:
            progress.stalled = True
            return
        check_finite(new, progress.iteration + 1)
        progress.iteration += 1
        progress.iterate = new
        progress.rows.append(_row(progress.iteration, new, ids))
        _kill(resident, job, progress)


def _kill(resident: Any, job: SyncJob, progress: SyncProgress) -> None:
    """Emulated failures due after this iteration: a KILL pull to each victim (ordered
    before the next round's w); the server's own worker dies at once."""
    victims = ps.kills_due(job.kills, progress.iteration, progress.killed, resident.peers)
    for peer in victims:
        if peer != resident.address:
            resident.send(peer, ps.PULL, ps.KILL, wait=False, exact=True)
    if resident.address in victims:
        os.kill(os.getpid(), signal.SIGKILL)


def _round(resident, progress: SyncProgress, records: dict, others: list[str], ids: list):
    """The server's gather: w to every other worker, its own sums, theirs back."""
    meter = resident.meter
    rank = {peer: index for index, peer in enumerate(resident.peers)}

    def gather(w: np.ndarray, blocks=None) -> Evaluation:
        start = time.perf_counter()
        before = {name: getattr(meter, name) for name in ps._TIMED}
        number = progress.evaluations
        progress.evaluations += 1
        payload = np.append(w, float(number))
        for peer in others:  # all at once: the writes go on while this worker computes
            resident.send(peer, ps.PULL, payload, wait=False, exact=True)
        partials = {resident.address: resident.local_sums(w)}
        for peer in others:
            partials[peer] = resident.recv((ps.PUSH, rank[peer]))
        resident.flush()  # delivered, since they answered: this only forgets the writes
        total = np.zeros(resident.n_params + 2)
        for peer in resident.peers:  # rank order, as direct adds them
            total += partials[peer]
        records[number] = {name: getattr(meter, name) - before[name] for name in ps._TIMED}
        ids.append(number)
        loss_sum, grad_sum, n_rows = unpack(total)
        return Evaluation(loss_sum, grad_sum, n_rows, time.perf_counter() - start, 1, "ps")

    return gather


def _row(iteration: int, iterate: Any, ids: list[int]) -> dict:
    row = {"iteration": iteration, "loss": float(iterate.value), "time": time.time(),
           "grad_norm": float(iterate.grad_norm), "optimality": float(iterate.optimality),
           "step_size": float(iterate.state.step_size), "evaluations": list(ids)}  # fmt: skip
    ids.clear()
    return row


# -- the exact losses of a stale server's kept w (after the run) ---------------------------


def _exact_at(runtime: Any, objective: Objective, step: float, snapshots: dict) -> dict:
    """{version: loss, grad_norm, optimality} of the full data at the kept w (one request)."""
    versions = sorted(snapshots)
    W = np.array([snapshots[v] for v in versions])
    # One chunk pass per kept w on every worker: bounded like that many evaluations.
    sums = runtime.call_with(ps.snapshot_sums, (W,), timeout=runtime.timeout * (1 + len(W)))
    total = np.zeros((len(versions), runtime.n_params + 2))
    for address in runtime.workers:  # rank order
        total += sums[address]
    exact = {}
    for version, w, row in zip(versions, W, total, strict=True):
        loss_sum, grad_sum, n_rows = unpack(row)
        value, grad = objective.smooth_value_grad(w, loss_sum, grad_sum, n_rows)
        norm = objective.gradient_mapping_norm(w, grad, step)
        exact[version] = {"loss": value + objective.nonsmooth(w), "grad_norm": norm,
                          "optimality": norm}  # fmt: skip
    return exact
