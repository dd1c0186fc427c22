"""Emulated slow networks, stragglers and failures, applied inside a real cluster.

:class:`Emulation` is a frozen configuration; a fit with ``emulation=`` set applies it:

network (latency, bandwidth)
    :class:`EmulationPlugin`, a ``distributed.WorkerPlugin`` registered for the fit,
    wraps two handlers of every worker: ``update_data`` (w arriving from the client)
    and ``get_data`` (a worker serving keys to a peer, the scheduler or the client: the
    partial sums of the reduction and the total). Each call first sleeps
    ``latency + nbytes / bandwidth``, nbytes the ``sizeof`` of the keys moved. Control
    messages (task assignments, heartbeats) are not slowed.
stragglers
    The plugin gives each worker a slowdown; the chunk task (wrapped by the strategy
    only when emulation is on) sleeps ``(factor - 1) x`` its measured compute time,
    plus a random delay drawn from a seeded distribution when one is given.
emulated compute (``chunk_compute_seconds``)
    Every chunk's gradient takes at least this long: the worker computes it for real,
    then sleeps the rest. A straggler's factor multiplies that time. A sleeping worker
    holds no core, so the figures measure the algorithm, not how many worker processes
    share the machine's cores: with 4 processes on 2 cores a fast worker's real pass
    can cost more when the others compute at the same time (asynchronous and SSP
    parameter servers) than when they sit idle waiting for a straggler (synchronous
    rounds; 1.5-2x reported at loads 13-26), which is the machine, not the algorithm.
    The seconds slept are counted as compute and also as ``emulated_seconds`` (the
    real cost is the difference).
failures
    :class:`daskgd.engine.failures.FailureInjector`, an engine callback, kills a worker
    process (SIGKILL of the pid ``client.run(os.getpid)`` returns) at the end of the
    chosen iteration; its nanny restarts it, the strategy retries and the lost chunks are
    recomputed.

Worker references are indices into the sorted worker addresses at the start of the fit
(``0``, ``1``, ...) or addresses; they are checked before the fit starts.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import signal
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from distributed import WorkerPlugin

from daskgd.data import waits
from daskgd.data.waits import DEFAULT_TIMEOUT_SECONDS

__all__ = [
    "Emulation",
    "EmulationPlugin",
    "KillAt",
    "KillRandomly",
    "RandomDelay",
    "parse_bandwidth",
    "parse_duration",
    "parse_failure",
    "parse_straggler",
]

_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
_DURATION_UNITS = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_BANDWIDTH_UNITS = {
    "b": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20, "gib": 2**30,
    "bit": 1 / 8, "kbit": 1e3 / 8, "mbit": 1e6 / 8, "gbit": 1e9 / 8,
}  # fmt: skip


def parse_duration(text: str) -> float:
    """Seconds of ``'5ms'``, ``'0.2s'``, ``'150us'`` or a bare number of seconds."""
    match = re.fullmatch(r"\s*(-)?" + _NUMBER + r"\s*([a-zµ]*)\s*", str(text), re.IGNORECASE)
    if not match or match.group(3).lower() not in _DURATION_UNITS:
        raise ValueError(f"cannot read a duration from {text!r}; write e.g. '5ms', '0.2s', '150us'")
    if match.group(1):
        raise ValueError(f"a duration cannot be negative, got {text!r}")
    return float(match.group(2)) * _DURATION_UNITS[match.group(3).lower()]


def parse_bandwidth(text: str) -> float:
    """Bytes per second of ``'100MB/s'``, ``'1Gbit/s'``, ``'512KiB/s'`` (decimal MB)."""
    match = re.fullmatch(r"\s*(-)?" + _NUMBER + r"\s*([a-z]*)\s*(?:/\s*s|ps)?\s*", str(text), re.I)
    unit = match.group(3).lower() if match else ""
    if not match or unit not in _BANDWIDTH_UNITS:
        raise ValueError(
            f"cannot read a bandwidth from {text!r}; write e.g. '100MB/s', '1Gbit/s', '512KiB/s'"
        )
    value = float(match.group(2)) * _BANDWIDTH_UNITS[unit]
    if match.group(1) or value <= 0:
        raise ValueError(f"a bandwidth must be > 0, got {text!r}")
    return value


@dataclass(frozen=True)
class RandomDelay:
    """Extra seconds added to every chunk task on every worker, drawn from a distribution.

    ``distribution`` is ``'exponential'`` or ``'lognormal'`` (sigma ``sigma``, scaled so
    that the mean is ``mean_seconds``); each worker draws from its own generator seeded
    with ``(seed, worker index)``.
    """

    distribution: str
    mean_seconds: float
    seed: int = 0
    sigma: float = 1.0

    def __post_init__(self) -> None:
        if self.distribution not in ("exponential", "lognormal"):
            raise ValueError(
                f"unknown delay distribution {self.distribution!r}; "
                "choose 'exponential' or 'lognormal'"
            )
        if not (math.isfinite(self.mean_seconds) and self.mean_seconds >= 0):
            raise ValueError(f"the mean delay must be >= 0 seconds, got {self.mean_seconds!r}")
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"sigma must be > 0, got {self.sigma!r}")

    def draw(self, rng: np.random.Generator) -> float:
        if self.distribution == "exponential":
            return float(rng.exponential(self.mean_seconds))
        mu = math.log(self.mean_seconds) - self.sigma**2 / 2 if self.mean_seconds > 0 else 0.0
        return float(rng.lognormal(mu, self.sigma)) if self.mean_seconds > 0 else 0.0


@dataclass(frozen=True)
class KillAt:
    """Kill ``worker`` (index or address) at the end of iteration ``iteration``."""

    worker: int | str
    iteration: int

    def __post_init__(self) -> None:
        _check_worker_ref(self.worker)
        if isinstance(self.iteration, bool) or not isinstance(self.iteration, (int, np.integer)):
            raise ValueError(f"the failure iteration must be an integer, got {self.iteration!r}")
        if self.iteration < 0:
            raise ValueError(f"the failure iteration must be >= 0, got {self.iteration!r}")


@dataclass(frozen=True)
class KillRandomly:
    """Kill each worker with probability ``probability`` at the end of every iteration."""

    probability: float
    seed: int = 0

    def __post_init__(self) -> None:
        p = self.probability
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ValueError(f"the failure probability must be in [0, 1], got {p!r}")


def _check_worker_ref(worker: Any) -> None:
    if isinstance(worker, bool) or not isinstance(worker, (int, np.integer, str)):
        raise ValueError(f"a worker is an index or an address, got {worker!r}")
    if isinstance(worker, (int, np.integer)) and worker < 0:
        raise ValueError(f"a worker index must be >= 0, got {worker!r}")


def _worker_ref(text: str, spec: str) -> int | str:
    text = text.strip()
    if re.fullmatch(r"[0-9]+", text):
        return int(text)
    if "://" in text:
        return text
    raise ValueError(f"{spec!r}: cannot read a worker index or address from {text!r}")


def parse_straggler(text: str) -> dict | RandomDelay:
    """``'1:3x'`` (worker 1 three times slower) or ``'exp:20ms'``, ``'lognormal:20ms:seed=4'``.

    Returns ``{worker: factor}`` or a :class:`RandomDelay`.
    """
    spec = str(text).strip()
    random = re.fullmatch(r"(exp|exponential|lognormal)\s*:\s*([^:]+?)(?:\s*:\s*seed=(\d+))?", spec)
    if random:
        name = "lognormal" if random.group(1) == "lognormal" else "exponential"
        try:
            mean = parse_duration(random.group(2))
        except ValueError as error:
            raise ValueError(f"straggler {text!r}: {error}") from None
        return RandomDelay(name, mean, int(random.group(3) or 0))
    worker, _, factor = spec.rpartition(":")
    match = re.fullmatch(r"\s*" + _NUMBER + r"\s*x?\s*", factor)
    if not worker or not match:
        raise ValueError(
            f"cannot read a straggler from {text!r}; write WORKER:FACTORx (e.g. '1:3x') or "
            "exp:MEAN / lognormal:MEAN[:seed=N] (e.g. 'exp:20ms')"
        )
    value = float(match.group(1))
    if value < 1:
        raise ValueError(f"{text!r}: a slowdown factor must be >= 1, got {value:g}")
    return {_worker_ref(worker, spec): value}


def parse_failure(text: str) -> KillAt | KillRandomly:
    """``'1@20'`` (kill worker 1 after iteration 20) or ``'p=0.01'`` / ``'p=0.01,seed=3'``."""
    spec = str(text).strip()
    random = re.fullmatch(r"p\s*=\s*([^,]+?)(?:\s*,\s*seed\s*=\s*(\d+))?", spec)
    if random:
        try:
            p = float(random.group(1))
        except ValueError:
            raise ValueError(
                f"{text!r}: cannot read a probability from {random.group(1)!r}"
            ) from None
        if not 0 <= p <= 1:
            raise ValueError(f"{text!r}: the failure probability must be in [0, 1], got {p:g}")
        return KillRandomly(p, int(random.group(2) or 0))
    worker, at, iteration = spec.rpartition("@")
    if not at or not re.fullmatch(r"\s*[0-9]+\s*", iteration):
        raise ValueError(
            f"cannot read a failure from {text!r}; write WORKER@ITERATION (e.g. '1@20') or "
            "p=PROBABILITY[,seed=N] (e.g. 'p=0.01')"
        )
    return KillAt(_worker_ref(worker, spec), int(iteration))


@dataclass(frozen=True)
class Emulation:
    """What to emulate during a fit.

    Parameters
    ----------
    latency_seconds : float, default=0
        One-way latency added to every transfer of w or of a partial sum (>= 0).
    bandwidth_bytes_per_second : float, default=inf
        Link bandwidth: a transfer of n bytes waits an extra ``n / bandwidth`` (> 0).
    stragglers : dict or RandomDelay or None
        ``{worker index or address: slowdown factor >= 1}``, or a random extra delay
        per chunk task on every worker.
    failures : sequence of KillAt, or KillRandomly, or None
    chunk_compute_seconds : float, default=0
        Emulated compute: each chunk's gradient takes at least this long on every
        worker (computed for real, then the rest slept), times a straggler's factor.

    Examples
    --------
    >>> Emulation.from_strings(latency="5ms", bandwidth="100MB/s", stragglers=["1:3x"],
    ...                        failures=["0@10"])  # doctest: +SKIP
    """

    latency_seconds: float = 0.0
    bandwidth_bytes_per_second: float = math.inf
    stragglers: Any = None
    failures: Any = None
    chunk_compute_seconds: float = 0.0
    _slowdowns: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        latency, bandwidth = self.latency_seconds, self.bandwidth_bytes_per_second
        if isinstance(latency, bool) or not isinstance(latency, (int, float)):
            raise ValueError(f"latency_seconds must be a number, got {latency!r}")
        if not (math.isfinite(latency) and latency >= 0):
            raise ValueError(f"latency_seconds must be >= 0 and finite, got {latency!r}")
        if isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float)):
            raise ValueError(f"bandwidth_bytes_per_second must be a number, got {bandwidth!r}")
        if not bandwidth > 0:
            raise ValueError(f"bandwidth_bytes_per_second must be > 0, got {bandwidth!r}")
        chunk = self.chunk_compute_seconds
        if isinstance(chunk, bool) or not isinstance(chunk, (int, float)):
            raise ValueError(f"chunk_compute_seconds must be a number, got {chunk!r}")
        if not (math.isfinite(chunk) and chunk >= 0):
            raise ValueError(f"chunk_compute_seconds must be >= 0 and finite, got {chunk!r}")
        stragglers = self.stragglers
        slowdowns: tuple = ()
        if isinstance(stragglers, Mapping):
            for worker, factor in stragglers.items():
                _check_worker_ref(worker)
                if isinstance(factor, bool) or not isinstance(factor, (int, float)):
                    raise ValueError(f"slowdown of worker {worker!r} must be a number: {factor!r}")
                if not (math.isfinite(factor) and factor >= 1):
                    raise ValueError(f"slowdown of worker {worker!r} must be >= 1, got {factor!r}")
            slowdowns = tuple(stragglers.items())
        elif stragglers is not None and not isinstance(stragglers, RandomDelay):
            raise ValueError(
                f"stragglers must be a dict {{worker: factor}} or a RandomDelay, got {stragglers!r}"
            )
        object.__setattr__(self, "_slowdowns", slowdowns)
        failures = self.failures
        if isinstance(failures, (KillAt, KillRandomly)):
            failures = (failures,)
        failures = tuple(failures or ())
        for failure in failures:
            if not isinstance(failure, (KillAt, KillRandomly)):
                raise ValueError(f"a failure must be a KillAt or KillRandomly, got {failure!r}")
        object.__setattr__(self, "failures", failures)

    @classmethod
    def from_strings(
        cls,
        latency: str | None = None,
        bandwidth: str | None = None,
        stragglers: Sequence[str] = (),
        failures: Sequence[str] = (),
    ) -> Emulation:
        """An Emulation from CLI-style strings (see the ``parse_*`` functions)."""
        slow: dict = {}
        random = None
        for text in stragglers or ():
            parsed = parse_straggler(text)
            if isinstance(parsed, RandomDelay):
                random = parsed
            else:
                slow.update(parsed)
        if random is not None and slow:
            raise ValueError("give either per-worker slowdowns or one random delay, not both")
        return cls(
            latency_seconds=parse_duration(latency) if latency else 0.0,
            bandwidth_bytes_per_second=parse_bandwidth(bandwidth) if bandwidth else math.inf,
            stragglers=random if random is not None else (slow or None),
            failures=tuple(parse_failure(text) for text in failures or ()),
        )

    def message_seconds(self, nbytes: float) -> float:
        """Emulated extra transit of one message of ``nbytes`` bytes: latency + size / bandwidth.

        The worker-resident runtime (:mod:`daskgd.runtime.plugin`) sleeps this long on the
        receiving side of every vector it moves, as :class:`EmulationPlugin` does for
        ``update_data`` and ``get_data`` on the mapreduce path.
        """
        bandwidth = self.bandwidth_bytes_per_second
        return self.latency_seconds + (nbytes / bandwidth if math.isfinite(bandwidth) else 0.0)

    @property
    def network(self) -> bool:
        return self.latency_seconds > 0 or math.isfinite(self.bandwidth_bytes_per_second)

    @property
    def slows_chunks(self) -> bool:
        return (bool(self._slowdowns) or isinstance(self.stragglers, RandomDelay)
                or self.chunk_compute_seconds > 0)  # fmt: skip

    def resolve(self, workers: Sequence[str]) -> dict[str, float]:
        """``{address: factor}`` of the stragglers among ``workers`` (sorted addresses).

        Raises
        ------
        ValueError
            A straggler or failure names a worker that is not there.
        """
        workers = sorted(workers)
        refs = [w for w, _ in self._slowdowns]
        refs += [f.worker for f in self.failures if isinstance(f, KillAt)]
        for ref in refs:
            _address(ref, workers)
        return {_address(w, workers): float(f) for w, f in self._slowdowns}

    def to_attrs(self) -> dict:
        """The settings as plain values, for the trace's attrs."""
        stragglers: Any = None
        if isinstance(self.stragglers, RandomDelay):
            s = self.stragglers
            stragglers = {"distribution": s.distribution, "mean_seconds": s.mean_seconds,
                          "seed": s.seed, "sigma": s.sigma}  # fmt: skip
        elif self._slowdowns:
            stragglers = {str(w): f for w, f in self._slowdowns}
        failures = [
            {"worker": str(f.worker), "iteration": f.iteration}
            if isinstance(f, KillAt)
            else {"probability": f.probability, "seed": f.seed}
            for f in self.failures
        ]
        bandwidth = self.bandwidth_bytes_per_second
        return {
            "latency_seconds": self.latency_seconds,
            "bandwidth_bytes_per_second": bandwidth if math.isfinite(bandwidth) else None,
            "stragglers": stragglers,
            "failures": failures,
            "chunk_compute_seconds": float(self.chunk_compute_seconds),
        }


def _address(ref: int | str, workers: Sequence[str]) -> str:
    if isinstance(ref, str):
        if ref not in workers:
            raise ValueError(f"unknown worker {ref!r}; the workers are {list(workers)}")
        return ref
    if not 0 <= ref < len(workers):
        raise ValueError(
            f"unknown worker index {ref}: the cluster has {len(workers)} workers "
            f"(indices 0..{len(workers) - 1})"
        )
    return workers[ref]


# -- inside the workers --------------------------------------------------------------------

#: Attribute of a worker holding its emulation state while the plugin is registered.
STATE_ATTRIBUTE = "_daskgd_emulation"


class _WorkerState:
    def __init__(self, factor: float, delay: RandomDelay | None, index: int,
                 chunk_seconds: float = 0.0):  # fmt: skip
        self.factor = factor
        self.delay = delay
        self.chunk_seconds = chunk_seconds
        self.rng = np.random.default_rng([delay.seed, index]) if delay is not None else None

    def extra_seconds(self, compute_seconds: float, n_chunks: int = 1) -> float:
        """Seconds to sleep after ``n_chunks`` chunks really computed in ``compute_seconds``."""
        emulated = max(compute_seconds, n_chunks * self.chunk_seconds)
        extra = emulated - compute_seconds + (self.factor - 1.0) * emulated
        if self.delay is not None and self.rng is not None:
            extra += self.delay.draw(self.rng)
        return extra


def worker_slowdown(emulation: Emulation, factor: float, index: int) -> _WorkerState:
    """The straggler state of one worker: ``factor`` and the seeded random delay, if any.

    ``index`` is the worker's position among the sorted workers at the start of the run
    (a worker that joined later gets ``len(workers)``), which seeds its generator.
    """
    delay = emulation.stragglers if isinstance(emulation.stragglers, RandomDelay) else None
    return _WorkerState(float(factor), delay, index, float(emulation.chunk_compute_seconds))


class EmulationPlugin(WorkerPlugin):
    """WorkerPlugin: network delays in ``update_data``/``get_data``, per-worker slowdowns."""

    idempotent = False

    def __init__(
        self, emulation: Emulation, slowdowns: Mapping[str, float], workers: Sequence[str]
    ):
        self.latency = float(emulation.latency_seconds)
        self.bandwidth = float(emulation.bandwidth_bytes_per_second)
        self.slowdowns = dict(slowdowns)
        self.delay = emulation.stragglers if isinstance(emulation.stragglers, RandomDelay) else None
        self.chunk_seconds = float(emulation.chunk_compute_seconds)
        self.workers = sorted(workers)
        self.network = emulation.network

    def _delay(self, nbytes: float) -> float:
        return self.latency + (nbytes / self.bandwidth if math.isfinite(self.bandwidth) else 0.0)

    def setup(self, worker: Any) -> None:
        # a worker that joined later (a restarted one) draws from a generator of its own
        workers = self.workers
        index = workers.index(worker.address) if worker.address in workers else len(workers)
        factor = self.slowdowns.get(worker.address, 1.0)
        state = _WorkerState(factor, self.delay, index, self.chunk_seconds)
        setattr(worker, STATE_ATTRIBUTE, state)
        self._originals = {name: worker.handlers[name] for name in ("update_data", "get_data")}
        if not self.network:
            return
        original_update, original_get = self._originals["update_data"], self._originals["get_data"]
        plugin = self

        async def update_data(data: dict, stimulus_id: str | None = None) -> Any:
            from dask.sizeof import sizeof

            await asyncio.sleep(plugin._delay(sum(sizeof(v) for v in data.values())))
            return original_update(data=data, stimulus_id=stimulus_id)

        async def get_data(comm: Any, keys: Any, who: Any = None, serializers: Any = None):
            await asyncio.sleep(plugin._delay(_nbytes(worker, keys)))
            return await original_get(comm, keys=keys, who=who, serializers=serializers)

        worker.handlers["update_data"] = update_data
        worker.handlers["get_data"] = get_data

    def teardown(self, worker: Any) -> None:
        worker.handlers.update(getattr(self, "_originals", {}))
        if hasattr(worker, STATE_ATTRIBUTE):
            delattr(worker, STATE_ATTRIBUTE)


def _nbytes(worker: Any, keys: Any) -> float:
    from dask.sizeof import sizeof

    total = 0.0
    for key in keys:
        task = worker.state.tasks.get(key)
        if task is not None and task.nbytes is not None:
            total += task.nbytes
        elif key in worker.data:
            total += sizeof(worker.data[key])
    return total


def straggle(compute_seconds: float) -> None:
    """In a chunk task: sleep as the emulated slowdown of this worker says."""
    try:
        from distributed import get_worker

        state = getattr(get_worker(), STATE_ATTRIBUTE, None)
    except ValueError:  # not on a worker (threaded scheduler)
        return
    if state is not None:
        extra = state.extra_seconds(compute_seconds)
        if extra > 0:
            time.sleep(extra)


def register(client: Any, emulation: Emulation, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> str:
    """Register the plugin for the current workers; return its name (for unregister).

    Each request to the scheduler is answered within ``timeout`` seconds or the fit stops
    with :class:`~daskgd.data.waits.ClusterTimeoutError` (a frozen scheduler or worker).
    """
    import uuid

    from distributed.protocol.pickle import dumps

    running = waits.running_workers(client, what="the workers to emulate on", timeout=timeout)
    workers = sorted(running)
    slowdowns = emulation.resolve(workers)
    name = f"daskgd-emulation-{uuid.uuid4().hex[:8]}"
    plugin = EmulationPlugin(emulation, slowdowns, workers)
    # the scheduler's own handler, as Client.register_plugin calls it, but with a bound
    responses = waits.call(
        client, client.scheduler.register_worker_plugin, plugin=dumps(plugin), name=name,
        idempotent=False, what="registering the emulation plugin on the workers",
        timeout=timeout,
    )  # fmt: skip
    failed = {a: r for a, r in responses.items() if r.get("status") == "error"}
    if failed:
        address, response = next(iter(failed.items()))
        raise RuntimeError(
            f"the emulation plugin failed on worker {address}: {response.get('exception')}"
        )
    return name


# -- failures ------------------------------------------------------------------------------


def kill_worker(client: Any, address: str, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
    """SIGKILL the process of the worker at ``address`` (each request bounded by ``timeout``)."""
    answers = waits.call(
        client, client.run, _host_pid, workers=[address], asynchronous=True,
        what=f"finding the process of worker {address}", timeout=timeout,
    )  # fmt: skip
    host, pid = answers[address]
    if host == socket.gethostname():
        os.kill(pid, signal.SIGKILL)
    else:  # another machine: the worker kills itself just after replying
        waits.call(
            client, client.run, _kill_soon, workers=[address], asynchronous=True,
            what=f"stopping worker {address}", timeout=timeout,
        )  # fmt: skip


def _host_pid() -> tuple[str, int]:
    return socket.gethostname(), os.getpid()


async def _kill_soon() -> int:
    asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGKILL)
    return os.getpid()
