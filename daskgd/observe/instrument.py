"""Where the time goes: per-worker compute, communication, wait and bytes of every iteration.

:class:`Instrumentation` is an engine callback that reads what ``distributed`` already
records and adds no timer of its own:

- a :class:`~distributed.diagnostics.plugin.SchedulerPlugin`, registered for the fit,
  follows the tasks of each evaluation through the ``daskgd_evaluation`` annotation the
  strategy gives them (the evaluation's ``key_prefix``; an annotation lives and dies with
  its task, where a ``distributed.span`` per evaluation would stay on the scheduler for
  good): from ``processing -> memory`` transitions the task's worker and ``startstops``,
  from ``update_graph`` the scattered inputs (w) with the nbytes and holders the
  scheduler knows; and what a failure cost: workers leaving the cluster, placed chunks
  (and their inputs) computed again after they were lost;
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
    communication, at least 0: idle. The sum of
sync_seconds
    the slowest worker's compute in the iteration minus this worker's (at most the
    wait): waiting for a slower peer, the lecture's synchronisation; and
overhead_seconds
    the rest of the wait: the scheduler's and the client's orchestration (the gap
    between w's broadcast and the first task while the client submits the graph, the
    scheduler's dispatch between a task and its dependents).
bytes_sent, bytes_received
    The transfer logs' ``total`` (the keys' ``sizeof``, not compressed wire bytes),
    each transfer once. w put on a worker by an ``update_data`` RPC (the strategy's
    broadcast from the client, or the first hop of ``client.scatter``) is logged
    nowhere: its bytes are the nbytes the scheduler registered for w, received by each
    holder of w that no logged transfer delivered it to; its time is not measured (it
    is before the window; the client sees it in ``evaluation_seconds``).
n_tasks, straggler
    Tasks of the evaluation the worker ran. Straggler: persistently slower than the
    other workers, compared per byte of data the tasks read (the scheduler plugin
    records the bytes of each task's data chunks); the rule and why it takes medians
    over a window of iterations are in :mod:`daskgd.observe.stragglers`.

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
from distributed.protocol.pickle import dumps

from daskgd.data import waits
from daskgd.engine.driver import Callback
from daskgd.observe.stragglers import (
    STRAGGLER_MIN_EXCESS_SECONDS,
    STRAGGLER_RATIO,
    STRAGGLER_WINDOW,
    check_rule,
    straggler_flags,
)
from daskgd.observe.trace import build_trace
from daskgd.observe.worker_measures import Collected, worker_dataset

__all__ = ["EvaluationRecorder", "Instrumentation", "straggler_flags"]

#: Prefix of the evaluation names (key prefixes) the scheduler plugin follows.
EVALUATION_MARKER = "daskgd-"
#: The task annotation holding the evaluation's name (set by the strategy).
EVALUATION_ANNOTATION = "daskgd_evaluation"
#: Dependents followed from a recomputed task to find the lost chunk it rebuilds.
_LINEAGE_SEARCH_LIMIT = 64

#: Seconds a log entry may finish out of order; re-read entries are de-duplicated.
_LOG_OVERLAP_SECONDS = 1.0

# ------------------------------------------------------------------- cluster side


class EvaluationRecorder(SchedulerPlugin):
    """Scheduler plugin: tasks and inputs of the evaluations named ``marker...``, and the
    failures under them (workers lost, lost chunks computed again).

    Rows accumulate on the scheduler until :func:`drain_recorder` takes them.
    """

    def __init__(self, marker: str = EVALUATION_MARKER):
        self.marker = marker
        self.tasks: list[tuple] = []
        self.inputs: list[tuple] = []
        #: (kind, prefix, detail, seconds, time): kind 'worker_lost' (detail: address),
        #: 'chunk_recomputed' or 'input_recomputed' (detail: the key as text).
        self.failures: list[tuple] = []
        self._prefix_of: dict[Any, str] = {}
        self._inputs_seen: set[tuple] = set()
        self._chunks: set[Any] = set()  # data chunks the evaluations read
        self._current = ""  # the latest evaluation submitted
        self.scheduler: Any = None

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def update_graph(self, scheduler: Any, *, tasks: list, annotations: dict, **kwargs: Any):
        for key, name in annotations.get(EVALUATION_ANNOTATION, {}).items():
            if isinstance(name, str) and name.startswith(self.marker):
                self._prefix_of[key] = self._current = name
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
                if not scattered:
                    self._chunks.add(dependency.key)
                self.inputs.append(
                    (prefix, dependency.key, scattered, dependency.nbytes, holders, now)
                )

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        self.failures.append(("worker_lost", self._current, worker, 0.0, cluster_time()))

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish == "forgotten":
            self._prefix_of.pop(key, None)
            self._chunks.discard(key)
            return
        if start != "processing" or finish != "memory":
            return
        startstops = kwargs.get("startstops", ())
        compute = tuple((s["start"], s["stop"]) for s in startstops if s["action"] == "compute")
        prefix = self._prefix_of.get(key)
        if prefix is not None:
            worker = kwargs.get("worker")
            self.tasks.append((prefix, key, worker, compute, self._data_bytes(key)))
            return
        kind = "chunk_recomputed" if key in self._chunks else None
        if kind is None and self._chunks and self._rebuilds_a_chunk(key):
            kind = "input_recomputed"
        if kind is not None:
            seconds = sum(stop - begin for begin, stop in compute)
            self.failures.append((kind, self._current, str(key), seconds, cluster_time()))

    def _data_bytes(self, key: Any) -> int:
        """Bytes of the data chunks the task ``key`` read (0 for a reduction task): the
        straggler rule compares compute per byte of data, so a worker that ran more
        chunks than another in an iteration is not taken for a slow one."""
        ts = self.scheduler.tasks.get(key) if self.scheduler is not None else None
        if ts is None:
            return 0
        return sum(max(d.nbytes, 0) for d in ts.dependencies if d.key in self._chunks)

    def _rebuilds_a_chunk(self, key: Any) -> bool:
        """Whether the task ``key`` is in the lineage of a data chunk the fit reads."""
        ts = self.scheduler.tasks.get(key) if self.scheduler is not None else None
        frontier = list(ts.dependents) if ts is not None else []
        seen: set[Any] = set()
        while frontier and len(seen) < _LINEAGE_SEARCH_LIMIT:
            dependent = frontier.pop()
            if dependent.key in self._chunks:
                return True
            if dependent.key not in seen:
                seen.add(dependent.key)
                frontier.extend(dependent.dependents)
        return False

    def drain(self) -> dict:
        tasks, self.tasks = self.tasks, []
        inputs, self.inputs = self.inputs, []
        failures, self.failures = self.failures, []
        self._inputs_seen = {seen for seen in self._inputs_seen if seen[1] in self.scheduler.tasks}
        names = {address: str(ws.name) for address, ws in self.scheduler.workers.items()}
        # The process memory the workers last reported in their heartbeats, and the limit.
        memory = {
            address: (int(ws.memory.process), int(ws.memory_limit or 0))
            for address, ws in self.scheduler.workers.items()
        }
        return {
            "tasks": tasks,
            "inputs": inputs,
            "failures": failures,
            "names": names,
            "memory": memory,
            "time": cluster_time(),
        }


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
    straggler_window : int, default=11
        Iterations over which the straggler rule takes its medians
        (:mod:`daskgd.observe.stragglers`).
    straggler_ratio : float, default=1.3
        Median compute per byte of data over the other workers' above which a worker is
        a straggler...
    straggler_min_excess_seconds : float, default=0.002
        ...when its median excess compute is above this, too.
    poll_interval_seconds : float or None, default=1.0
        Period of the background poll of the scheduler plugin and the transfer logs;
        None polls only at the end of the fit and when :meth:`snapshot` is called.
    timeout : float, default=60.0
        Seconds a request to the cluster may go unanswered
        (:data:`daskgd.data.waits.DEFAULT_TIMEOUT_SECONDS`); a poll that waits longer is
        given up, and so is the end of the fit's wait for it.

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
        straggler_window: int = STRAGGLER_WINDOW,
        straggler_ratio: float = STRAGGLER_RATIO,
        straggler_min_excess_seconds: float = STRAGGLER_MIN_EXCESS_SECONDS,
        poll_interval_seconds: float | None = 1.0,
        timeout: float = waits.DEFAULT_TIMEOUT_SECONDS,
    ):
        check_rule(straggler_window, straggler_ratio, straggler_min_excess_seconds)
        if poll_interval_seconds is not None and not poll_interval_seconds > 0:
            raise ValueError(
                f"poll_interval_seconds must be > 0 or None, got {poll_interval_seconds!r}"
            )
        self.timeout = waits.check_seconds("timeout", timeout)
        self.client = client
        self.straggler_rule = {
            "window": int(straggler_window),
            "ratio": float(straggler_ratio),
            "min_excess_seconds": float(straggler_min_excess_seconds),
        }
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
            self._call(
                self.client.scheduler.register_scheduler_plugin,
                plugin=dumps(EvaluationRecorder()),
                name=name,
                idempotent=False,
                what="registering the instrumentation plugin",
            )
            first = self._drain(name)
        except waits.ClusterTimeoutError:
            raise
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
        if self._thread is not None:  # its poll is bounded by the timeout too
            # then its poll waits for nothing (a frozen worker's logs, for the bound)
            gone = waits.unanswered(self.client) or waits.frozen_workers(self.client)
            self._thread.join(timeout=min(self.timeout, 0.5) if gone else self.timeout)
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
            self._call(
                self.client.scheduler.unregister_scheduler_plugin,
                name=self._plugin_name,
                what="removing the instrumentation plugin",
            )
        self._plugin_name = None

    def _call(self, request: Any, *args: Any, what: str, **kwargs: Any) -> Any:
        return waits.call(self.client, request, *args, what=what, timeout=self.timeout, **kwargs)

    def _drain(self, name: str) -> dict:
        return self._call(
            self.client.run_on_scheduler,
            drain_recorder,
            name=name,
            asynchronous=True,
            what="collecting the instrumentation's records",
        )

    # -- collection -------------------------------------------------------------
    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_interval_seconds):
            with contextlib.suppress(Exception):  # a failed poll is retried next time
                self._poll()

    def _poll(self) -> None:
        """Take the plugin's rows and the new transfer log entries (one round trip each)."""
        with self._poll_lock:
            if self._plugin_name is None:  # the fit ended between two polls
                return
            drained = self._drain(self._plugin_name)
            # Entries may be appended slightly out of order: re-read an overlap, dedupe.
            since = {worker: t - _LOG_OVERLAP_SECONDS for worker, t in self._since.items()}
            logs = waits.run_on_workers(
                self.client,
                read_transfer_logs,
                since=since,
                default=self._start_time,
                on_error="ignore",
                what="reading the workers' transfer logs",
                timeout=self.timeout,
            )
            with self._lock:
                before = len(self._raw.incoming) + len(self._raw.outgoing)
                self._raw.tasks.extend(drained["tasks"])
                self._raw.inputs.extend(drained["inputs"])
                self._raw.failures.extend(drained["failures"])
                self._raw.names.update(drained["names"])
                self._raw.add_memory(drained.get("memory", {}))
                for worker, result in logs.items():
                    self._add_log_entries(worker, result)
                oldest = min(self._since.values(), default=self._start_time) - _LOG_OVERLAP_SECONDS
                self._seen = {identity for identity in self._seen if identity[4] >= oldest}
                after = len(self._raw.incoming) + len(self._raw.outgoing)
                if drained["tasks"] or drained["inputs"] or drained["failures"] or after > before:
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
        dataset = worker_dataset(records, raw, **self.straggler_rule)
        with self._lock:
            self._cached = (key, dataset)
        return dataset.copy(deep=True)

    def recovery_events(self) -> list[tuple] | None:
        """What failures cost, as the scheduler plugin saw it (see
        :func:`daskgd.observe.recovery.recovery_dataset`); None without measurements."""
        with self._lock:
            if not self._raw.tasks:
                return None
            return list(self._raw.failures)

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
