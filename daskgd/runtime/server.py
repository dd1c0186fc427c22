"""The parameter server's loops on the workers: pull w, push partial sums, apply them.

One :meth:`daskgd.runtime.handle.Runtime.call` runs the whole fit: every resident runs
:func:`work` in its worker thread (pull w from the server, sum its chunks, push the sum
to the server, again, until the server says stop), and the server's resident also runs
:func:`serve` as a coroutine on its worker's event loop, beside its own :func:`work`: a
push is applied the moment it arrives, with no thread switch, while that worker's thread
computes. Vectors go worker to server and back through :meth:`Resident.send` /
:meth:`Resident.post_soon` (distributed's pooled connections, the runtime's handlers):
neither the scheduler nor the client is in the loop. The client reads the progress
while it runs (:mod:`daskgd.strategies.pslive`: a peek on each worker's event loop) and
may ask the server to stop (:func:`request_stop`: read before every update, the
server then ends as at max_iter, stopping every worker).

The messages. A pull is ``[w..., version]`` (exact float64), the version being the
number of server updates w has had; an empty vector is "stop". A push is the packed
partial sum ``[loss_sum, grad_sum..., n_rows]`` of the worker's chunks at the w it last
pulled: the server knows which version that was (it sent it), so the staleness of a
push is the server's version when it is applied minus that one.

The update rule of :func:`serve` (``staleness=s`` or None) is an aggregated gradient
with delays (PIAG: Aytekin, Feyzmahdavian & Johansson 2016, "Analysis and implementation
of an asynchronous optimization algorithm for the parameter server"): the server keeps
the latest partial sum of every worker, and each push replaces that worker's one and
triggers one proximal gradient step with the sum of them all, scaled to the full data:

    G = (sum_i latest_i.grad_sum) / (sum_i latest_i.n_rows) + grad penalty(w)
    w <- prox(w - step * G, step),   step = stale_step(step_rule, ...)

The step (``step_rule=``, :func:`stale_step`). G's error against the gradient at w is
``e = sum_i p_i (g_i(w_i) - g_i(w))`` (p_i the worker's share of the rows, g_i its rows'
mean gradient, w_i the w its latest sum was computed at: the server keeps the w of every
pull), so ``||e|| <= L D`` with ``D = sum_i p_i ||w - w_i||``. With the descent lemma,
``f(w - a G) <= f(w) - a ||G||^2 (1 - L D / ||G|| - L a / 2)``: the step
``a = (1 - L D / ||G||) / L`` (0 when ``L D >= ||G||``) keeps a guaranteed descent
(with an L1 penalty ||G|| is the norm of the gradient mapping at the learning rate).

- ``'secant'`` (default): that step, capped at the learning rate, with L replaced in the
  error term by the largest curvature the workers' sums measured along their last moves,
  ``||g_i(w_i) - g_i(w_i')|| / ||w_i - w_i'||`` (two successive sums of one worker; never
  more than L): the global L bounds the curvature in every direction, while the error
  comes from the directions w actually moved in. No longer a guarantee (a measured
  curvature can underestimate the error); L still caps the step (never above 1/L, nor
  above the learning rate), and a first sum of a worker counts with L.
- ``'descent'``: the same with L in the error term: the guarantee holds (assuming each
  worker's rows have a gradient L-Lipschitz like the whole), at the price of small steps.
- ``'mean-age'`` (the rule before): ``lr / (1 + tau)``, tau the rows-weighted mean age of
  the sums in updates; ``'max-age'``: ``lr / (1 + max age)``; ``'stable'``:
  ``min(lr, 1 / (L (1 + tau)))``; ``'bounded'``: damps by ``1 / (1 + tau)`` only the part of
  lr above that bound; ``'constant'``: lr (Downpour-like, no damping).

Measured (``benchmarks/bench_architectures.py --parts ps``: 4 workers, worker 1 slowed
3x, emulated compute 20 ms per chunk, logistic n=40,000 d=20, load 2-8): time to the
loss the synchronous server reaches in 30 rounds, as a ratio of its time, and the
largest rise of the full-data loss above the best before it in 360 updates:

    step 0.5/L  SSP s=2                        async
    secant      0.21-0.22  (2e-16: rounding)   0.16-0.17  (4e-11 to 2e-10, at 1e-10
                                                           of the optimum)
    descent     0.43       (rounding)          0.33-0.34  (none)
    mean-age    0.74-0.89  (none)              0.52-0.57  (none)
    stable      0.41-0.43  (+3e-3)             0.33-0.34  (+4.4e-3)
    bounded     0.38-0.42  (+8e-3)             0.28       (+1e-2)
    constant    0.26-0.27  (+3.2e-2)           0.21       (+3.3e-2)
    max-age     1.09-1.12  (none)              1.19-1.34  (none)
    step 1/L
    secant      0.34-0.36  (rounding)          0.28-0.29  (2e-9 to 4e-9, at 4e-10 of
                                                           the optimum)
    descent     0.94-0.95  (rounding)          0.71-0.72  (none)
    mean-age    0.92-0.93  (+6e-3)             0.67-0.68  (+6.6e-3)
    stable      0.93       (+6.6e-3)           0.66-0.69  (+7e-3 to 9e-3)
    bounded     0.42-0.43  (+3e-2)             0.36       (+3e-2)
    max-age     1.19       (+2e-3)             did not reach it (+2e-3)
    constant    did not reach it (+1e-1)       did not reach it (+3e-1)

Damping by the age alone either wastes the updates SSP gains (with a persistent
straggler SSP's clocks let every worker push once per straggler period: m updates
where the synchronous server makes 1; ``max-age`` throws that away) or lets the loss
rise (at 1/L, ``mean-age``). Two workers, the server's own pushing ~10x as often (the
other's messages carry 10 ms of latency), step 0.5/L: ``mean-age`` rose by 1e-2 within
80 updates, ``secant`` and ``descent`` not (``max-age`` neither, ``constant`` by 0.5).
Where the sum of a worker is much older than the others', D grows while w moves, and
the steps shrink to 0 until it pushes: those zero steps count as updates (``max_iter``).

Every row enters every step, through its worker's latest sum, so a slow worker's rows
are never under-weighted and a fixed point is the full-data optimum (applying each
push's own partial sum alone, Downpour-style, weights each shard by how often its worker
pushes: under a fixed straggler it converges near the optimum of the fast workers'
rows). The first update waits until every worker has pushed once (the exact gradient
at w0). Stopping: ``max_iter`` server updates, or the gradient-mapping norm of G (an
estimate: the latest sums are at older w) <= ``tol`` before an update.

Bounded staleness (SSP, Ho et al. 2013): ``clock_i`` counts worker i's applied pushes; a
worker is sent its next w only while ``clock_i - min_j clock_j <= s``, so no worker is
ever more than s steps ahead of the slowest; the others are held until the slowest
pushes. ``staleness=None`` never holds anyone (asynchronous). ``staleness=0`` (the
synchronous server: all m pushes at one w, one step) runs in
:mod:`daskgd.strategies.paramserver`, with the same :func:`work` on the workers.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from daskgd.models.losses import unpack
from daskgd.models.objective import Objective
from daskgd.runtime.messaging import RecvTimeoutError, loop_result

__all__ = ["PULL", "PUSH", "STEP_RULES", "AsyncJob", "Progress", "ServerLostError",
           "request_stop", "run_async", "stale_step", "stop_requested", "work"]  # fmt: skip

PULL = "ps-pull"
PUSH = "ps-push"
STOP = np.zeros(0)
#: A pull of one value: an emulated failure (KillAt, KillRandomly): the worker SIGKILLs
#: its own process when it reads it, as a crash would end it.
KILL = np.array([-1.0])
#: resident.state key prefix of a parameter-server fit (one per fit token).
STATE = "daskgd-ps"
_TIMED = ("compute_seconds", "communication_seconds", "wait_seconds", "bytes_sent",
          "bytes_received", "messages_sent", "messages_received",
          "emulated_seconds", "data_bytes")  # fmt: skip


#: The step rules of a stale server (``step_rule=``); those in NEEDS_LIPSCHITZ read L.
STEP_RULES = ("descent", "secant", "mean-age", "max-age", "stable", "bounded", "constant")
NEEDS_LIPSCHITZ = frozenset({"descent", "secant", "stable", "bounded"})
DEFAULT_STEP_RULE = "secant"


@dataclass(frozen=True)
class Staleness:
    """How old the aggregate of one update is (see :meth:`_Server.staleness`)."""

    mean_age: float  # rows-weighted mean of the sums' ages, in updates
    max_age: float
    distance: float  # rows-weighted mean of ||w - the w each sum was computed at||_2
    mapping_norm: float  # ||G_lr||_2, the gradient mapping at the learning rate
    #: the largest secant curvature of the workers' sums along their last moves (<= L)
    curvature: float = math.inf


def stale_step(rule: str, learning_rate: float, staleness: Staleness,
               lipschitz: float | None = None) -> float:  # fmt: skip
    """The step of one update with aggregated sums that old (the rules and the
    measurements behind the default: the module docstring)."""
    if rule == "mean-age":
        return learning_rate / (1.0 + staleness.mean_age)
    if rule == "max-age":
        return learning_rate / (1.0 + staleness.max_age)
    if rule == "constant":
        return learning_rate
    if rule not in STEP_RULES:
        raise ValueError(f"unknown step_rule {rule!r}; choose one of {', '.join(STEP_RULES)}")
    if lipschitz is None:
        raise ValueError(f"step_rule={rule!r} needs the Lipschitz estimate of grad f")
    if rule in ("descent", "secant"):
        # G's error is at most L x distance: the step below keeps a descent guaranteed
        # ('secant': with the measured curvature for the error, L for the step)
        if staleness.mapping_norm <= 0:
            return 0.0
        error = lipschitz if rule == "descent" else min(lipschitz, staleness.curvature)
        share = max(0.0, 1.0 - error * staleness.distance / staleness.mapping_norm)
        return min(learning_rate, share / lipschitz)
    age = staleness.mean_age
    stable = 1.0 / (lipschitz * (1.0 + age))
    if rule == "bounded":
        return min(learning_rate, stable + (learning_rate - stable) / (1.0 + age))
    return min(learning_rate, stable)


class ServerLostError(RuntimeError):
    """The parameter server's worker is gone: w and the run's record went with it."""


@dataclass(frozen=True)
class AsyncJob:
    """What every resident is told for an asynchronous or SSP fit (pickled once)."""

    token: str
    server: str
    staleness: int | None
    learning_rate: float
    objective: Objective
    w0: np.ndarray
    max_iter: int
    tol: float
    loss_every: int
    timeout: float
    step_rule: str = "secant"
    #: L of grad f (the objective's estimate), for the rules that need it; else None
    lipschitz: float | None = None
    #: {iteration: workers to kill after it} (emulated failures)
    kills: dict = field(default_factory=dict)


@dataclass
class Progress:
    """The server's state, kept in its resident's state: it survives a rebuild of the
    others (a lost worker), so the retried call goes on from the last update."""

    w: np.ndarray
    version: int = 0
    started_at: float = field(default_factory=time.time)
    #: one per update: iteration, time, applied [(worker, staleness, pulled version)], ...
    events: list = field(default_factory=list)
    #: {version: w} every loss_every updates and the last, for the exact loss afterwards
    snapshots: dict = field(default_factory=dict)
    #: 'max_iter', 'tol', 'client' (asked to stop: :func:`request_stop`); '' while running
    stopped: str = ""
    attempts: int = 0
    #: {iteration: workers sent a KILL after it}: once per iteration across attempts
    killed: dict = field(default_factory=dict)


# -- the worker's side (a worker thread) -----------------------------------------------------


def records_of(resident: Any, token: str) -> dict:
    """{pulled version or evaluation id: what this worker measured for that push}."""
    return resident.state.setdefault(f"{STATE}-{token}-records", {})


def check_server(resident: Any, server: str) -> None:
    if server not in resident.peers:
        raise ServerLostError(
            f"the parameter server's worker {server} is no longer among the workers holding "
            f"the data ({list(resident.peers)}): its w and the run's record were lost with it"
        )


def work(resident: Any, server: str, push_tag: Any, records: dict) -> None:
    """Pull w, sum this worker's chunks at it, push the sum; until the server says stop.

    ``records[version]`` gets the push's compute, communication and wait seconds (the
    wait for the pull included) and bytes. A push to a server on this same worker
    crosses no network: its bytes are not counted.
    """
    meter = resident.meter
    local = server == resident.address
    while True:
        before = {name: getattr(meter, name) for name in _TIMED}
        pulled = resident.recv(PULL)
        if pulled.size == 0:
            return
        if pulled.size == 1:  # an emulated failure: die as a crashed worker does
            os.kill(os.getpid(), signal.SIGKILL)
        partial = resident.local_sums(pulled[:-1])
        resident.send(server, push_tag, partial)
        measured = {name: getattr(meter, name) - before[name] for name in _TIMED}
        if local:
            measured.update(bytes_sent=0, messages_sent=0, bytes_received=0, messages_received=0)
        records[int(pulled[-1])] = measured


def stop_requested(resident: Any, token: str) -> bool:
    """Whether the client asked the server of fit ``token`` to stop (:func:`request_stop`)."""
    return bool(resident.state.get(f"{STATE}-{token}-stop"))


def request_stop(resident: Any, token: str) -> None:
    """Ask the server of fit ``token`` to stop after its current update (a peek: on the
    event loop). The flag lives in the resident's state, so a rebuilt server sees it too."""
    resident.state[f"{STATE}-{token}-stop"] = True


def kills_due(kills: dict, iteration: int, killed: dict, peers: Any) -> list[str]:
    """The workers to kill after ``iteration``: the first time it is reached (a retried
    attempt that passes it again kills no one), among the workers still there."""
    if iteration in killed or iteration not in kills:
        return []
    killed[iteration] = [address for address in kills[iteration] if address in peers]
    return killed[iteration]


# -- the server's side (a coroutine on the server worker's event loop) -----------------------


class _Server:
    """One attempt of the server: the latest sums, clocks, held workers (rebuilt on retry)."""

    def __init__(self, resident: Any, job: AsyncJob, progress: Progress):
        self.resident, self.job, self.progress = resident, job, progress
        self.peers = resident.peers
        self.latest: dict[str, np.ndarray] = {}
        self.computed_at: dict[str, int] = {}  # the version each latest sum was computed at
        self.computed_w: dict[str, np.ndarray] = {}  # and the w
        self.sent: dict[str, int] = {}
        self.sent_w: dict[str, np.ndarray] = {}
        self.curvatures: dict[str, float] = {}
        self.clocks = dict.fromkeys(self.peers, 0)
        self.held: set[str] = set()
        self.applied: list = []  # pushes since the last update
        self.bytes_in = self.bytes_out = 0

    def pull(self, peer: str) -> None:
        payload = np.append(self.progress.w, float(self.progress.version))
        nbytes = self.resident.post_soon(peer, PULL, payload, exact=True)
        self.bytes_out += 0 if peer == self.resident.address else nbytes
        self.sent[peer] = self.progress.version
        self.sent_w[peer] = self.progress.w  # a step makes a new array: never changed

    def kill(self) -> None:
        """Emulated failures due after this version: a KILL pull to each victim."""
        for peer in kills_due(self.job.kills, self.progress.version, self.progress.killed,
                              self.peers):  # fmt: skip
            self.resident.post_soon(peer, PULL, KILL, exact=True)

    def allowed(self, peer: str) -> bool:
        bound = self.job.staleness
        return bound is None or self.clocks[peer] - min(self.clocks.values()) <= bound

    def release(self, candidates: list[str]) -> None:
        for peer in self.peers:  # rank order: deterministic
            if peer in candidates or peer in self.held:
                if self.allowed(peer):
                    self.held.discard(peer)
                    self.pull(peer)
                else:
                    self.held.add(peer)

    def receive(self, source: str, partial: np.ndarray, nbytes: int) -> None:
        if source in self.latest:  # the curvature of its rows along its last move
            moved = float(np.linalg.norm(self.sent_w[source] - self.computed_w[source]))
            if moved > 0:
                change = np.linalg.norm(partial[1:-1] - self.latest[source][1:-1])
                self.curvatures[source] = float(change) / (float(partial[-1]) * moved)
        self.latest[source] = partial
        self.computed_at[source] = self.sent[source]
        self.computed_w[source] = self.sent_w[source]
        self.clocks[source] += 1
        staleness = self.progress.version - self.sent[source]
        self.applied.append((source, staleness, self.sent[source]))
        self.bytes_in += 0 if source == self.resident.address else nbytes

    def staleness(self, grad: np.ndarray, n_rows: float) -> Staleness:
        """How old the aggregate is: its sums' ages and distances, rows-weighted."""
        w, version, rows = self.progress.w, self.progress.version, max(float(n_rows), 1.0)
        ages = {peer: version - self.computed_at[peer] for peer in self.peers}
        weights = {peer: float(self.latest[peer][-1]) / rows for peer in self.peers}
        distance = sum(weights[p] * float(np.linalg.norm(w - self.computed_w[p]))
                       for p in self.peers)  # fmt: skip
        lr = self.job.learning_rate
        mapping = float(np.linalg.norm(w - self.job.objective.prox(w - lr * grad, lr))) / lr
        curvature = max((self.curvatures.get(p, math.inf) for p in self.peers), default=math.inf)
        return Staleness(sum(weights[p] * ages[p] for p in self.peers),
                         float(max(ages.values())), distance, mapping, curvature)  # fmt: skip

    def step(self, started: float) -> bool:
        """One update with the latest sums (False: tol or max_iter reached, no update)."""
        job, progress = self.job, self.progress
        total = np.zeros_like(next(iter(self.latest.values())))
        for peer in self.peers:  # rank order: the same additions every time
            total += self.latest[peer]
        loss_sum, grad_sum, n_rows = unpack(total)
        _, grad = job.objective.smooth_value_grad(progress.w, loss_sum, grad_sum, n_rows)
        estimate = job.objective.gradient_mapping_norm(progress.w, grad, job.learning_rate)
        if estimate <= job.tol:
            progress.stopped = "tol"
            return False
        step = stale_step(job.step_rule, job.learning_rate, self.staleness(grad, n_rows),
                          job.lipschitz)  # fmt: skip
        progress.w = job.objective.prox(progress.w - step * grad, step)
        progress.version += 1
        if progress.version % job.loss_every == 0:
            progress.snapshots[progress.version] = progress.w.copy()
        progress.events.append({
            "iteration": progress.version, "time": time.time(), "applied": self.applied,
            "step_size": step, "estimate": estimate, "attempt": progress.attempts,
            "server": {"bytes_received": self.bytes_in, "seconds": time.perf_counter() - started},
        })  # fmt: skip
        self.applied, self.bytes_in = [], 0
        return True


async def serve(resident: Any, job: AsyncJob, progress: Progress) -> None:
    """Apply the pushes as they arrive until max_iter updates or tol; then stop everyone."""
    server = _Server(resident, job, progress)
    progress.snapshots.setdefault(progress.version, progress.w.copy())
    try:
        if not progress.stopped:
            server.kill()  # those due at iteration 0 (w0)
            for peer in server.peers:
                server.pull(peer)
            await _loop(server)
    finally:
        for peer in server.peers:
            resident.post_soon(peer, PULL, STOP, exact=True)
        progress.snapshots[progress.version] = progress.w.copy()


async def _loop(server: _Server) -> None:
    job, progress = server.job, server.progress
    while progress.version < job.max_iter:
        if stop_requested(server.resident, job.token):  # seen within one push
            progress.stopped = "client"
            return
        source, partial, nbytes = await server.resident.next_message(PUSH, job.timeout)
        started = time.perf_counter()
        server.receive(source, partial, nbytes)
        if len(server.latest) < len(server.peers):  # the first sums of this attempt
            server.held.add(source)
            continue
        if not server.step(started):
            return
        server.release([source])
        server.kill()
        events = progress.events
        events[-1]["server"]["bytes_sent"], server.bytes_out = server.bytes_out, 0
        events[-1]["server"]["seconds"] = time.perf_counter() - started
    progress.stopped = "max_iter"


def run_async(resident: Any, job: AsyncJob) -> dict:
    """The function every resident runs for an asynchronous or SSP fit (Runtime.call)."""
    check_server(resident, job.server)
    records = records_of(resident, job.token)
    if resident.address != job.server:
        work(resident, job.server, PUSH, records)
        return {"records": records}
    key = f"{STATE}-{job.token}-progress"
    progress = resident.state.get(key)
    if progress is None:
        progress = resident.state[key] = Progress(w=np.array(job.w0, dtype=np.float64))
    progress.attempts += 1
    # The event loop of this worker: the server answers pushes while this thread computes.
    future = asyncio.run_coroutine_threadsafe(serve(resident, job, progress), resident._loop)
    try:
        work(resident, job.server, PUSH, records)
    finally:
        loop_result(  # it stopped us: it is ending
            future,
            job.timeout + 1.0,
            lambda: RecvTimeoutError(
                f"the parameter server on {resident.address} did not end within "
                f"{job.timeout:g} s of its last stop message"
            ),
        )
    return {"records": records, "progress": progress}


def snapshot_sums(resident: Any, snapshots: np.ndarray) -> np.ndarray:
    """Packed partial sums of this worker's chunks at every row of ``snapshots`` (after
    the fit: an emulated straggler is not slowed for it)."""
    sums = [resident.local_sums(w, slowed=False) for w in snapshots]
    return np.stack(sums) if sums else np.zeros((0, resident.n_params + 2))
