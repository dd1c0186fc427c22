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
    the windows of the ``'transfer'`` startstops, deserialisation included; w copied
    from a peer (``Scheduler.replicate`` behind ``scatter(broadcast=True)`` goes
    through ``Worker.gather``, logged on the sending side only: the sender's window,
    which ends with the receiver's acknowledgement); and outgoing transfers (partial
    sums or w to a peer, the total to the scheduler), serialisation included.
wait_seconds
    The evaluation's window on the cluster, first to last activity recorded for it
    (a task, a transfer of one of its keys), minus the worker's compute and
    communication, at least 0: idle while the others finish (this includes the gap
    between w's broadcast and the first task, when the client submits the graph).
bytes_sent, bytes_received
    The transfer logs' ``total`` (the keys' ``sizeof``, not compressed wire bytes),
    each transfer once. w put on a worker by an ``update_data`` RPC (the strategy's
    broadcast from the client, or the first hop of ``client.scatter``) is logged
    nowhere: its bytes are the nbytes the scheduler registered for w, received by each
    holder of w that no logged transfer delivered it to; its time is not measured (it
    is before the window; the client sees it in ``evaluation_seconds``).
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
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.metrics import time as cluster_time

from daskgd.engine.driver import Callback
from daskgd.observe.trace import build_trace
from daskgd.observe.worker_measures import Collected, straggler_flags, worker_dataset

__all__ = ["Instrumentation", "SpanRecorder", "straggler_flags"]

#: Prefix of the span names (evaluation key prefixes) the scheduler plugin follows.
SPAN_MARKER = "daskgd-"

#: Seconds a log entry may finish out of order; re-read entries are de-duplicated.
_LOG_OVERLAP_SECONDS = 1.0

#: How long the end of a fit waits for a poll in flight (a hung worker must not hang it).
_JOIN_TIMEOUT_SECONDS = 30.0

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
        self._raw = Collected()
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
        dataset = worker_dataset(records, raw, self.straggler_mad_factor, self.straggler_ratio)
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
