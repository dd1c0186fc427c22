"""Where the time goes: per-worker compute, communication, wait and bytes of every iteration.

:class:`Instrumentation` is an engine callback that reads what ``distributed`` already
records and adds no timer of its own:

- a :class:`~distributed.diagnostics.plugin.SchedulerPlugin`, registered for the fit,
  follows the tasks of each evaluation through the ``distributed.span`` the strategy
  names after the evaluation's ``key_prefix``: from ``processing -> memory``
  transitions the task's worker and ``startstops``, from ``update_graph`` the scattered
  inputs (w) with the nbytes and holders the scheduler knows;
- the workers' ``transfer_incoming_log`` / ``transfer_outgoing_log`` (bounded by
  ``distributed.admin.low-level-log-length``) give start, stop, peer and bytes of
  every transfer.

Both are polled with one ``run_on_scheduler`` and one ``client.run`` about once a
second from a background thread (the logs cannot overflow; :meth:`~Instrumentation.
snapshot` serves a live dashboard) and once more at the end of the fit;
``on_iteration_end`` only appends the record to a list.

Definitions, per iteration and worker (an iteration sums its evaluations):

compute_seconds
    ``'compute'`` startstops of the evaluation's tasks on the worker (chunk gradients,
    fused by dask with the first level of the sum, and the reduction): the numbers of
    ``Client.get_task_stream``.
communication_seconds
    Incoming transfers (partial sums; data chunks when a task ran away from its chunk),
    the windows of the ``'transfer'`` startstops, deserialisation included; w arriving
    by the scatter's replication, which ``Worker.gather`` logs on the sending side
    only (the sender's window, which ends with the receiver's acknowledgement); and
    outgoing transfers (partial sums or w to a peer, the total to the scheduler),
    serialisation included.
wait_seconds
    The evaluation's window on the cluster, first to last activity recorded for it
    (a task, a transfer of one of its keys), minus the worker's compute and
    communication, at least 0: idle while the others finish (this includes the gap
    between w's broadcast and the first task, when the client submits the graph).
bytes_sent, bytes_received
    The transfer logs' ``total`` (the keys' ``sizeof``, not compressed wire bytes),
    each transfer once. The first hop of ``client.scatter`` (client -> scheduler ->
    one worker, an ``update_data`` RPC) is logged nowhere: its bytes are the
    scheduler's nbytes of w, received by each holder of w that no logged transfer
    delivered it to; its time is not measured.
n_tasks, straggler
    Tasks of the evaluation the worker ran. Straggler: compute above both
    ``median + k * MAD`` and ``ratio * median`` of the *other* workers that ran tasks in
    the iteration (with two workers, a median over both lies halfway and no worker
    could ever exceed it by more than one MAD).

Per iteration: ``bytes_broadcast`` (w to the workers), ``bytes_reduce`` (partial sums
between workers and the total to the scheduler, which relays the same bytes to the
client), ``bytes_total`` (both, plus any data chunk moved between workers).

Not recorded by distributed, so not here: the client -> scheduler legs (scatter,
graph), scheduler -> client, control messages, (de)serialising task specs. Spilling
(``disk-read``/``disk-write``) is neither compute nor communication: it shows as wait.
Tasks of a failed evaluation attempt (its own prefix) belong to no iteration.

The scheduler unpickles the plugin, so it must be able to import daskgd; when it
cannot, a warning says so and the trace has no per-worker variables.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.metrics import time as cluster_time

from daskgd.engine import Callback
from daskgd.trace import build_trace

#: Prefix of the span names (evaluation key prefixes) the scheduler plugin follows.
SPAN_MARKER = "daskgd-"

#: Receiver of transfers that leave the workers for the scheduler (gathers).
SCHEDULER = "scheduler"

#: Seconds a log entry may finish out of order; re-read entries are de-duplicated.
_LOG_OVERLAP_SECONDS = 1.0

#: How long the end of a fit waits for a poll in flight (a hung worker must not hang it).
_JOIN_TIMEOUT_SECONDS = 30.0

WORKER_VARIABLES = {
    "compute_seconds": ("time running chunk-gradient and reduction tasks", "s"),
    "communication_seconds": ("receiving w, moving partial sums, (de)serialisation", "s"),
    "wait_seconds": ("idle in the iteration's cluster window: synchronisation", "s"),
    "bytes_sent": ("bytes this worker sent for the iteration", "bytes"),
    "bytes_received": ("bytes this worker received for the iteration", "bytes"),
    "n_tasks": ("tasks the worker ran for the iteration", "1"),
}

ITERATION_BYTE_VARIABLES = {
    "bytes_total": ("all bytes moved for the iteration", "bytes"),
    "bytes_broadcast": ("bytes of w sent to the workers", "bytes"),
    "bytes_reduce": ("bytes of partial sums moved by the reduction and to the scheduler", "bytes"),
}


# ------------------------------------------------------------------- cluster side


class SpanRecorder(SchedulerPlugin):
    """Scheduler plugin: tasks and scattered inputs of spans named ``marker...``.

    Rows accumulate on the scheduler until :func:`drain_recorder` takes them.
    """

    def __init__(self, marker: str = SPAN_MARKER):
        self.marker = marker
        self.tasks: list[tuple] = []
        self.inputs: list[tuple] = []
        self._prefix_of: dict[Any, str] = {}
        self._inputs_seen: set[tuple] = set()
        self.scheduler: Any = None

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def update_graph(self, scheduler: Any, *, tasks: list, annotations: dict, **kwargs: Any):
        for key, span in annotations.get("span", {}).items():
            name = span["name"][-1]
            if name.startswith(self.marker):
                self._prefix_of[key] = name
        now = cluster_time()
        for key in tasks:
            prefix = self._prefix_of.get(key)
            if prefix is None:
                continue
            for dependency in scheduler.tasks[key].dependencies:
                seen = (prefix, dependency.key)
                if dependency.key in self._prefix_of or seen in self._inputs_seen:
                    continue
                self._inputs_seen.add(seen)
                holders = tuple(sorted(ws.address for ws in dependency.who_has or ()))
                # Scattered data has no run_spec: that is w; the rest are data chunks.
                scattered = dependency.run_spec is None
                self.inputs.append(
                    (prefix, dependency.key, scattered, dependency.nbytes, holders, now)
                )

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish == "forgotten":
            self._prefix_of.pop(key, None)
            return
        if start != "processing" or finish != "memory":
            return
        prefix = self._prefix_of.get(key)
        if prefix is None:
            return
        startstops = kwargs.get("startstops", ())
        compute = tuple((s["start"], s["stop"]) for s in startstops if s["action"] == "compute")
        self.tasks.append((prefix, key, kwargs.get("worker"), compute))

    def drain(self) -> dict:
        tasks, self.tasks = self.tasks, []
        inputs, self.inputs = self.inputs, []
        self._inputs_seen = {seen for seen in self._inputs_seen if seen[1] in self.scheduler.tasks}
        names = {address: str(ws.name) for address, ws in self.scheduler.workers.items()}
        return {"tasks": tasks, "inputs": inputs, "names": names, "time": cluster_time()}


def drain_recorder(dask_scheduler: Any = None, name: str = "") -> dict:
    """Run on the scheduler: the rows the plugin ``name`` collected since the last call."""
    return dask_scheduler.plugins[name].drain()


def read_transfer_logs(dask_worker: Any = None, since: dict | None = None, default: float = 0.0):
    """Run on a worker: its transfer log entries that ended after ``since[address]``."""
    after = (since or {}).get(dask_worker.address, default)

    def entries(log: Any) -> list[tuple]:
        return [
            (e["who"], dict(e["keys"]), e["start"], e["stop"], e["total"])
            for e in list(log)
            if e["stop"] > after
        ]

    return {
        "incoming": entries(dask_worker.transfer_incoming_log),
        "outgoing": entries(dask_worker.transfer_outgoing_log),
    }


# ------------------------------------------------------------------- client side


@dataclass(frozen=True)
class _Transfer:
    prefix: str
    kind: str  # "broadcast", "reduce" or "data"
    sender: str
    receiver: str
    keys: frozenset
    nbytes: float
    send_seconds: float
    receive_seconds: float
    start: float | None
    stop: float | None


@dataclass
class _Raw:
    """Everything collected from the cluster; log entries as (worker, entry) pairs."""

    tasks: list = field(default_factory=list)
    inputs: list = field(default_factory=list)
    incoming: list = field(default_factory=list)
    outgoing: list = field(default_factory=list)
    names: dict = field(default_factory=dict)

    def copy(self) -> _Raw:
        parts = (self.tasks, self.inputs, self.incoming, self.outgoing)
        return _Raw(*(list(part) for part in parts), dict(self.names))


class _KeyIndex:
    """Which evaluation (prefix) a key belongs to, and as what."""

    def __init__(self, raw: _Raw):
        self.outputs = {key: prefix for prefix, key, _, _ in raw.tasks}
        self.scattered = {row[1]: row[0] for row in raw.inputs if row[2]}
        self.data_uses: dict[Any, list[tuple[float, str]]] = defaultdict(list)
        for prefix, key, scattered, _, _, submitted in raw.inputs:
            if not scattered:
                self.data_uses[key].append((submitted, prefix))

    def attribute(self, keys: Sequence, start: float) -> tuple[str, str] | None:
        for key in keys:
            if key in self.outputs:
                return self.outputs[key], "reduce"
            if key in self.scattered:
                return self.scattered[key], "broadcast"
        for key in keys:
            uses = self.data_uses.get(key)
            if uses:
                # A chunk is an input of every evaluation: the latest one submitted before
                # the transfer started is the one that needed it.
                before = [use for use in uses if use[0] <= start] or uses
                return max(before)[1], "data"
        return None


def _transfers(raw: _Raw, index: _KeyIndex) -> list[_Transfer]:
    """Every transfer of an evaluation's key, counted once, with both sides' durations."""
    incoming = {
        (who, receiver, frozenset(keys)): (keys, start, stop, total)
        for receiver, (who, keys, start, stop, total) in raw.incoming
    }
    transfers = []
    for sender, (who, keys, start, stop, total) in raw.outgoing:
        found = index.attribute(list(keys), start)
        if found is None:
            continue
        receiver, keyset = who or SCHEDULER, frozenset(keys)
        match = incoming.pop((sender, receiver, keyset), None)
        if match is not None:
            receive = match[2] - match[1]
        else:  # Worker.gather (replicate) or a gather by the scheduler: sender's log only
            receive = (stop - start) if who else 0.0
        transfers.append(
            _Transfer(*found, sender, receiver, keyset, total, stop - start, receive, start, stop)
        )
    for (sender, receiver, keyset), (keys, start, stop, total) in incoming.items():
        found = index.attribute(list(keys), start)
        if found is not None:  # the sender's entry is gone (log overflow): receiver side only
            transfers.append(
                _Transfer(*found, sender, receiver, keyset, total, 0.0, stop - start, start, stop)
            )
    return transfers + _scatter_hops(raw, transfers)


def _scatter_hops(raw: _Raw, transfers: list[_Transfer]) -> list[_Transfer]:
    """The unlogged first hop of scatter: w reaching its holders other than by a transfer."""
    delivered = {(key, t.receiver) for t in transfers if t.kind == "broadcast" for key in t.keys}
    hops = []
    for prefix, key, scattered, nbytes, holders, _ in raw.inputs:
        if not scattered:
            continue
        for holder in holders:
            if (key, holder) not in delivered:
                hops.append(
                    _Transfer(
                        prefix, "broadcast", SCHEDULER, holder, frozenset([key]),
                        float(nbytes), 0.0, 0.0, None, None,
                    )
                )  # fmt: skip
    return hops


class _Measures:
    """Per (iteration, worker) sums and per-iteration windows and bytes."""

    def __init__(self, n_iterations: int, workers: list[str]):
        shape = (n_iterations, len(workers))
        self.column = {worker: j for j, worker in enumerate(workers)}
        self.compute = np.zeros(shape)
        self.communication = np.zeros(shape)
        self.sent = np.zeros(shape)
        self.received = np.zeros(shape)
        self.n_tasks = np.zeros(shape, dtype=np.int64)
        self.bytes = {kind: np.zeros(n_iterations) for kind in ("broadcast", "reduce", "data")}
        self.windows: dict[str, list[float]] = {}
        self.measured = np.zeros(n_iterations, dtype=bool)

    def widen(self, prefix: str, start: float | None, stop: float | None) -> None:
        if start is None or stop is None:
            return
        window = self.windows.setdefault(prefix, [start, stop])
        window[0], window[1] = min(window[0], start), max(window[1], stop)


def _workers(raw: _Raw, transfers: list[_Transfer]) -> list[str]:
    seen = {worker for _, _, worker, _ in raw.tasks}
    for t in transfers:
        seen.update((t.sender, t.receiver))
    seen.discard(SCHEDULER)
    return sorted(seen)


def _measure(raw: _Raw, row_of: dict[str, int], n_iterations: int) -> tuple[list[str], _Measures]:
    transfers = _transfers(raw, _KeyIndex(raw))
    workers = _workers(raw, transfers)
    m = _Measures(n_iterations, workers)
    for prefix, _, worker, compute in raw.tasks:
        i = row_of.get(prefix)
        if i is None:
            continue
        j = m.column[worker]
        m.measured[i] = True
        m.n_tasks[i, j] += 1
        m.compute[i, j] += sum(stop - start for start, stop in compute)
        for start, stop in compute:
            m.widen(prefix, start, stop)
    for t in transfers:
        i = row_of.get(t.prefix)
        if i is None:
            continue
        m.bytes[t.kind][i] += t.nbytes
        m.widen(t.prefix, t.start, t.stop)
        if t.sender in m.column:
            m.sent[i, m.column[t.sender]] += t.nbytes
            m.communication[i, m.column[t.sender]] += t.send_seconds
        if t.receiver in m.column:
            m.received[i, m.column[t.receiver]] += t.nbytes
            m.communication[i, m.column[t.receiver]] += t.receive_seconds
    return workers, m


def straggler_flags(compute: np.ndarray, k: float, ratio: float, active: np.ndarray) -> np.ndarray:
    """Flag (iteration, worker) cells whose compute is far above the other workers'.

    A cell of an active worker is flagged when its compute exceeds ``median + k * MAD``
    and ``ratio * median`` of the other active workers of the same iteration.
    """
    values = np.where(active, compute, np.nan)
    flags = np.zeros(compute.shape, dtype=bool)
    for j in range(compute.shape[1]):
        others = np.delete(values, j, axis=1)
        with warnings.catch_warnings():  # iterations where no other worker was active
            warnings.simplefilter("ignore", RuntimeWarning)
            median = np.nanmedian(others, axis=1)
            mad = np.nanmedian(np.abs(others - median[:, None]), axis=1)
        above = (compute[:, j] > median + k * mad) & (compute[:, j] > ratio * median)
        flags[:, j] = active[:, j] & above
    return flags


def _windows(records: Sequence[Any], m: _Measures) -> np.ndarray:
    """Seconds of recorded cluster activity of each iteration (sum over its evaluations)."""
    windows = np.zeros(len(records))
    for i, record in enumerate(records):
        for prefix in record.key_prefixes:
            if prefix in m.windows:
                windows[i] += m.windows[prefix][1] - m.windows[prefix][0]
    return windows


def _variable(dims: tuple, values: np.ndarray, table: dict, name: str, **attrs: Any) -> tuple:
    description, units = table[name]
    return dims, values, {"long_name": description, "units": units, **attrs}


def _dataset(
    records: Sequence[Any], workers: list[str], names: dict, m: _Measures, k: float, ratio: float
) -> xr.Dataset:
    cells = ("iteration", "worker")
    missing = ~m.measured[:, None]
    wait = np.maximum(_windows(records, m)[:, None] - m.compute - m.communication, 0.0)
    timed = {
        "compute_seconds": m.compute,
        "communication_seconds": m.communication,
        "wait_seconds": wait,
        "bytes_sent": m.sent,
        "bytes_received": m.received,
    }
    data_vars = {
        name: _variable(cells, np.where(missing, np.nan, values), WORKER_VARIABLES, name)
        for name, values in timed.items()
    }
    data_vars["n_tasks"] = _variable(cells, m.n_tasks, WORKER_VARIABLES, "n_tasks")
    data_vars["straggler"] = (
        cells,
        straggler_flags(m.compute, k, ratio, m.n_tasks > 0),
        {
            "long_name": "compute above median + k * MAD and ratio * median of the others",
            "units": "1",
            "straggler_k": k,
            "straggler_ratio": ratio,
        },
    )
    moved = {
        "bytes_broadcast": m.bytes["broadcast"],
        "bytes_reduce": m.bytes["reduce"],
        "bytes_total": m.bytes["broadcast"] + m.bytes["reduce"] + m.bytes["data"],
    }
    for name, values in moved.items():
        data_vars[name] = _variable(
            ("iteration",), np.where(m.measured, values, np.nan), ITERATION_BYTE_VARIABLES, name
        )
    coords = {
        "iteration": np.array([record.iteration for record in records], dtype=np.int64),
        # Variable-length strings: zarr v3 has a specification for those, not for "<U21".
        "worker": np.array(workers, dtype=object),
        "worker_name": ("worker", np.array([names.get(w, "") for w in workers], dtype=object)),
    }
    dataset = xr.Dataset(data_vars, coords=coords)
    dataset.attrs.update(straggler_k=k, straggler_ratio=ratio)
    return dataset


class Instrumentation(Callback):
    """Measure every iteration on every worker of a distributed fit.

    Parameters
    ----------
    client : distributed.Client
        The client the fit runs on.
    straggler_mad_factor : float, default=3.0
        k of the straggler rule: compute above the other workers' median + k * MAD.
    straggler_ratio : float, default=1.25
        ...and above ratio * that median (the MAD is 0 when the others agree).
    poll_interval_seconds : float or None, default=1.0
        Period of the background poll of the scheduler plugin and the transfer logs;
        None polls only at the end of the fit and when :meth:`snapshot` is called.

    Examples
    --------
    >>> instrumentation = Instrumentation(client)
    >>> result = minimize(objective, optimizer, w0, max_iter=30, tol=0,
    ...                   callbacks=[instrumentation])
    >>> per_worker = instrumentation.worker_dataset(result.records)
    """

    def __init__(
        self,
        client: Any,
        *,
        straggler_mad_factor: float = 3.0,
        straggler_ratio: float = 1.25,
        poll_interval_seconds: float | None = 1.0,
    ):
        if straggler_mad_factor < 0 or straggler_ratio < 1:
            raise ValueError(
                "straggler_mad_factor must be >= 0 and straggler_ratio >= 1, got "
                f"{straggler_mad_factor!r} and {straggler_ratio!r}"
            )
        if poll_interval_seconds is not None and not poll_interval_seconds > 0:
            raise ValueError(
                f"poll_interval_seconds must be > 0 or None, got {poll_interval_seconds!r}"
            )
        self.client = client
        self.straggler_mad_factor = float(straggler_mad_factor)
        self.straggler_ratio = float(straggler_ratio)
        self.poll_interval_seconds = poll_interval_seconds
        self._lock = threading.Lock()  # guards the collected data and the records
        self._poll_lock = threading.Lock()  # one poll at a time
        self._reset()

    def _reset(self) -> None:
        self._raw = _Raw()
        self._records: list[Any] = []
        self._seen: set[tuple] = set()
        self._since: dict[str, float] = {}
        self._start_time = 0.0
        self._plugin_name: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._version = 0  # counts the polls that brought something new
        self._cached: tuple[tuple, xr.Dataset] | None = None

    @property
    def active(self) -> bool:
        """Whether the scheduler plugin is registered (between fit start and end)."""
        return self._plugin_name is not None

    # -- engine hooks -----------------------------------------------------------
    def on_fit_start(self, info: dict) -> None:
        self._reset()
        name = f"daskgd-instrument-{uuid.uuid4().hex[:12]}"
        try:
            self.client.register_plugin(SpanRecorder(), name=name)
            first = self.client.run_on_scheduler(drain_recorder, name=name)
        except Exception as error:  # e.g. daskgd not importable on the scheduler
            warnings.warn(
                f"daskgd instrumentation is off for this fit: the scheduler plugin could not "
                f"be registered ({type(error).__name__}: {error}); is daskgd installed where "
                "the scheduler runs?",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        self._plugin_name = name
        self._start_time = first["time"]
        self._raw.names.update(first["names"])
        if self.poll_interval_seconds is not None:
            self._thread = threading.Thread(target=self._poll_loop, name=name, daemon=True)
            self._thread.start()

    def on_iteration_end(self, record: Any) -> None:
        with self._lock:
            self._records.append(record)

    def on_fit_end(self, result: Any) -> None:
        if not self.active:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=_JOIN_TIMEOUT_SECONDS)
        try:
            if self._thread is not None and self._thread.is_alive():
                raise TimeoutError("a poll of the cluster did not return")
            self._poll()
        except Exception as error:
            warnings.warn(
                f"daskgd instrumentation could not collect the last measurements "
                f"({type(error).__name__}: {error}); the trace may miss iterations",
                RuntimeWarning,
                stacklevel=2,
            )
        with contextlib.suppress(Exception):
            self.client.unregister_scheduler_plugin(self._plugin_name)
        self._plugin_name = None

    # -- collection -------------------------------------------------------------
    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_interval_seconds):
            with contextlib.suppress(Exception):  # a failed poll is retried next time
                self._poll()

    def _poll(self) -> None:
        """Take the plugin's rows and the new transfer log entries (one round trip each)."""
        with self._poll_lock:
            drained = self.client.run_on_scheduler(drain_recorder, name=self._plugin_name)
            # Entries may be appended slightly out of order: re-read an overlap, dedupe.
            since = {worker: t - _LOG_OVERLAP_SECONDS for worker, t in self._since.items()}
            logs = self.client.run(
                read_transfer_logs, since=since, default=self._start_time, on_error="ignore"
            )
            with self._lock:
                before = len(self._raw.incoming) + len(self._raw.outgoing)
                self._raw.tasks.extend(drained["tasks"])
                self._raw.inputs.extend(drained["inputs"])
                self._raw.names.update(drained["names"])
                for worker, result in logs.items():
                    self._add_log_entries(worker, result)
                oldest = min(self._since.values(), default=self._start_time) - _LOG_OVERLAP_SECONDS
                self._seen = {identity for identity in self._seen if identity[4] >= oldest}
                after = len(self._raw.incoming) + len(self._raw.outgoing)
                if drained["tasks"] or drained["inputs"] or after > before:
                    self._version += 1

    def _add_log_entries(self, worker: str, result: dict) -> None:
        latest = self._since.get(worker, self._start_time)
        for direction in ("incoming", "outgoing"):
            for entry in result[direction]:
                who, keys, start, stop, total = entry
                identity = (worker, direction, who, start, stop, total)
                if stop < self._start_time or identity in self._seen:
                    continue
                self._seen.add(identity)
                getattr(self._raw, direction).append((worker, entry))
                latest = max(latest, stop)
        self._since[worker] = latest

    # -- results ----------------------------------------------------------------
    def worker_dataset(self, records: Sequence[Any]) -> xr.Dataset:
        """Per-worker measurements of ``records`` (the engine's iteration records).

        Returns
        -------
        xarray.Dataset
            Dims ``(iteration, worker)``: compute_seconds, communication_seconds,
            wait_seconds, bytes_sent, bytes_received, n_tasks, straggler; dim
            ``iteration``: bytes_total, bytes_broadcast, bytes_reduce; coordinates
            ``worker`` (address) and ``worker_name``. Without measurements (the plugin
            could not be registered) a Dataset with the ``iteration`` coordinate only.
        """
        records = list(records)
        with self._lock:
            key = (self._version, tuple(map(id, records)))
            if self._cached is not None and self._cached[0] == key:
                return self._cached[1].copy(deep=True)
            raw = self._raw.copy()
        if not raw.tasks:
            iterations = np.array([record.iteration for record in records], dtype=np.int64)
            return xr.Dataset(coords={"iteration": iterations})
        row_of = {prefix: i for i, record in enumerate(records) for prefix in record.key_prefixes}
        workers, measures = _measure(raw, row_of, len(records))
        dataset = _dataset(
            records, workers, raw.names, measures, self.straggler_mad_factor, self.straggler_ratio
        )
        with self._lock:
            self._cached = (key, dataset)
        return dataset.copy(deep=True)

    def snapshot(self) -> xr.Dataset:
        """The trace so far (thread-safe): per-iteration and per-worker variables.

        Lags by at most ``poll_interval_seconds`` while the fit runs; without a background
        poll it polls the cluster first.
        """
        if self.active and self._thread is None:
            with contextlib.suppress(Exception):
                self._poll()
        with self._lock:
            records = list(self._records)
        return build_trace(records, workers=self.worker_dataset(records))
