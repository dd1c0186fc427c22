"""The trace of a running fit, and what the live views pull it from.

Every live view is fed by a *source*: a callable returning the current trace, an
object with a ``snapshot()`` method (such as :class:`LiveTrace`), a fixed trace, or
None for the most recent :class:`LiveTrace` (:func:`as_source`). The workers' memory
comes separately (:func:`memory_source`): from a client when the view has one, never
from a call the source makes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import xarray as xr

from daskgd.engine.driver import Callback, FitResult, IterationRecord
from daskgd.observe.resident import has_resident_measures, resident_worker_dataset
from daskgd.observe.trace import build_trace
from daskgd.viz.columns import Memory, measured_mask
from daskgd.viz.plots import TraceDashboard

__all__ = ["LiveTrace", "as_source", "client_memory", "current_trace", "memory_source"]

logger = logging.getLogger(__name__)

Source = Callable[[], "xr.Dataset | None"]

_current_lock = threading.Lock()
_current: list[LiveTrace] = []


class LiveTrace(Callback):
    """Keeps the records of a running fit; :meth:`snapshot` returns the partial trace.

    Pass it in ``callbacks`` of ``fit``. It is thread-safe: the fit appends from its
    thread while dashboards call :meth:`snapshot` from theirs. A new fit with the same
    object starts a new trace. The latest started ``LiveTrace`` is what live views
    show when given no source (see :func:`current_trace`).

    Parameters
    ----------
    client : distributed.Client, optional
        Measure the workers too: the ``LiveTrace`` makes a
        :class:`daskgd.observe.instrument.Instrumentation` on ``client`` and passes the fit's
        hooks on to it, so snapshots have the per-worker variables; views of it show
        the workers' memory from this client.
    instrumentation : daskgd.observe.instrument.Instrumentation, optional
        Or merge the measurements of an instrumentation that is already a callback of
        the fit (its hooks are not passed on). An estimator with ``instrument=True``
        (the default on a distributed client) hands its own to every ``LiveTrace`` in
        ``callbacks``, so ``LiveTrace()`` alone gets the per-worker data and memory too.

    Examples
    --------
    >>> live = LiveTrace(client)
    >>> dashboard = serve(live)
    >>> model.fit(X, y, callbacks=[live])
    """

    def __init__(self, client: Any = None, *, instrumentation: Any = None) -> None:
        if client is not None and instrumentation is not None:
            raise ValueError("give LiveTrace a client or an instrumentation, not both")
        self._owns_instrumentation = client is not None
        if client is not None:
            from daskgd.observe.instrument import Instrumentation

            instrumentation = Instrumentation(client)
        self.instrumentation = instrumentation
        self._lock = threading.Lock()
        self._records: list[IterationRecord] = []
        self._info: dict = {}
        self._version = 0
        self._cached: tuple[tuple, xr.Dataset] | None = None
        self.done = False

    @property
    def client(self) -> Any:
        """The client of the measurements (None without instrumentation)."""
        return getattr(self.instrumentation, "client", None)

    def on_fit_start(self, info: dict) -> None:
        with self._lock:
            self._records, self._info = [], dict(info)
            self._version += 1
            self.done = False
        with _current_lock:
            _current[:] = [self]
        if self._owns_instrumentation:
            self.instrumentation.on_fit_start(info)

    def on_iteration_end(self, record: IterationRecord) -> None:
        with self._lock:
            self._records.append(record)
            self._version += 1
        if self._owns_instrumentation:
            self.instrumentation.on_iteration_end(record)

    def on_fit_end(self, result: FitResult) -> None:
        if self._owns_instrumentation:
            self.instrumentation.on_fit_end(result)
        final = list(getattr(result, "records", None) or [])
        with self._lock:
            # The result's records replace those seen live when they are the same
            # iterations: a stale parameter server's losses are evaluated after its run.
            if [r.iteration for r in final] == [r.iteration for r in self._records]:
                self._records = final
            self.done = True
            self._version += 1

    def use_instrumentation(self, instrumentation: Any) -> None:
        """Merge the measurements of ``instrumentation`` (a callback of the same fit)
        into the snapshots, unless this ``LiveTrace`` was given its own.

        A hook for code that runs the fit with an instrumentation the user cannot
        reach (an estimator with ``instrument=True``)."""
        if self.instrumentation is None:
            self.instrumentation = instrumentation

    @property
    def n_records(self) -> int:
        """Iterations recorded so far (iteration 0 included)."""
        with self._lock:
            return len(self._records)

    def snapshot(self) -> xr.Dataset:
        """The trace of the iterations recorded so far (it may have 0 iterations).

        Attributes ``daskgd_live`` (1 while the fit runs) and ``daskgd_instrumented``
        (1 when per-worker measurements are coming) tell views what is pending.
        """
        with self._lock:
            version, records, info = self._version, list(self._records), dict(self._info)
            done, cached = self.done, self._cached
        instrumentation = self.instrumentation
        workers = None
        if instrumentation is not None and records:
            workers = instrumentation.worker_dataset(records)
        elif has_resident_measures(records):
            # Resident strategies (direct, allreduce, the parameter server...) measure
            # themselves: each record carries its workers' figures, staleness included.
            workers = resident_worker_dataset(records)
        key = (version, _measured(workers), instrumentation is not None)
        if cached is not None and cached[0] == key:
            return cached[1]
        trace = build_trace(records, info)
        if workers is not None and workers.data_vars:
            trace = trace.merge(workers, combine_attrs="override")
            trace.attrs.update(workers.attrs)
        trace.attrs["daskgd_live"] = int(not done)
        trace.attrs["daskgd_instrumented"] = int(instrumentation is not None)
        with self._lock:
            self._cached = (key, trace)
        return trace

    __call__ = snapshot


def _measured(workers: xr.Dataset | None) -> tuple:
    """What changes in the per-worker data as measurements arrive."""
    if workers is None or "compute_seconds" not in workers:
        return ()
    compute = workers["compute_seconds"]
    return (compute.shape, int(measured_mask(workers).sum()), float(compute.sum()))


def current_trace() -> xr.Dataset | None:
    """Snapshot of the most recently started :class:`LiveTrace`, or None."""
    with _current_lock:
        live = _current[0] if _current else None
    return live.snapshot() if live is not None else None


def as_source(source: Any = None) -> Source:
    """Turn what the live views accept into a callable returning a trace or None."""
    if source is None:
        return current_trace
    if isinstance(source, xr.Dataset):
        return lambda: source
    snapshot = getattr(source, "snapshot", None)
    if callable(snapshot):
        return snapshot
    if callable(source):
        return source
    raise TypeError(
        "source must be a callable returning a trace, an object with snapshot(), "
        f"an xarray.Dataset or None; got {type(source).__name__}"
    )


#: Bound on the scheduler's answer about the workers' memory.
MEMORY_TIMEOUT_SECONDS = 5.0


def client_memory(client: Any) -> Callable[[], Memory]:
    """Memory of every worker (RSS and limit), from the scheduler's identity, as
    ``client.scheduler_info()`` reads it, but with a bounded wait."""

    def memory() -> Memory:
        try:
            info = client.sync(
                client.scheduler.identity, n_workers=-1, callback_timeout=MEMORY_TIMEOUT_SECONDS
            )
            workers = info["workers"]
        except Exception:  # noqa: BLE001 - no memory column rather than no dashboard
            return {}
        return {
            address: (info.get("metrics", {}).get("memory"), info.get("memory_limit"))
            for address, info in workers.items()
        }

    return memory


def memory_source(source: Any = None, client: Any = None) -> Callable[[], Memory] | None:
    """Where a view gets the workers' memory: ``client``, else the client of a
    :class:`LiveTrace` source (found when its fit starts), else nowhere (None)."""
    if client is not None:
        return client_memory(client)
    if source is None or isinstance(source, LiveTrace):

        def memory() -> Memory:
            live = source
            if live is None:
                with _current_lock:
                    live = _current[0] if _current else None
            found = getattr(live, "client", None)
            return client_memory(found)() if found is not None else {}

        return memory
    return None


class Puller:
    """Calls a source for one view; logs a failing source once instead of crashing."""

    def __init__(self, source: Source, dashboard: TraceDashboard,
                 memory: Callable[[], Memory] | None = None) -> None:  # fmt: skip
        self.source, self.dashboard, self.memory = source, dashboard, memory
        self.failed = False

    def __call__(self, memory: Memory | None = None) -> None:
        try:
            trace = self.source()
            if memory is None and self.memory is not None:
                memory = self.memory()
        except Exception:  # noqa: BLE001 - a live view must survive its source
            if not self.failed:
                logger.exception("daskgd dashboard: the trace source raised")
            self.failed = True
            return
        self.failed = False
        self.dashboard.update(trace, memory)
