"""A live dashboard of a fit: the plots of :mod:`daskgd.viz.plots`, redrawn while it runs.

Every live view is fed by a *source*: a callable returning the current trace, an
object with a ``snapshot()`` method (such as :class:`LiveTrace`), a fixed trace, or
None for the most recent :class:`LiveTrace`. Three ways to show it:

- :func:`serve` runs a standalone Bokeh server in a background thread; works with
  any cluster (LocalCluster, ``dask scheduler``, dask-jobqueue) and any browser;
- :func:`register_dask_pages` adds ``/individual-daskgd-*`` pages to the dask
  dashboard of a scheduler started later in the same process (a LocalCluster), so
  dask-labextension lists them beside dask's own panes;
- :func:`notebook_view` shows the plots in a Jupyter notebook without a server
  (``jupyter_bokeh.BokehModel``), redrawn from a background thread.

Example::

    live = LiveTrace()
    dashboard = serve(live)            # or register_dask_pages(live) before the cluster
    print(dashboard.url)
    model.fit(X, y, callbacks=[live])
    dashboard.stop()
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import xarray as xr

from daskgd.engine.driver import Callback, FitResult, IterationRecord
from daskgd.observe.trace import build_trace
from daskgd.viz.plots import Memory, TraceDashboard

__all__ = [
    "LiveDashboard",
    "LiveTrace",
    "NotebookView",
    "TraceDashboard",
    "current_trace",
    "notebook_view",
    "register_dask_pages",
    "serve",
    "unregister_dask_pages",
]

logger = logging.getLogger(__name__)

#: How often live views pull their source, in milliseconds.
DEFAULT_INTERVAL_MS = 500

Source = Callable[[], "xr.Dataset | None"]


# ----------------------------------------------------------------------------------
# The trace of a running fit
# ----------------------------------------------------------------------------------

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
        hooks on to it, so snapshots have the per-worker variables.
    instrumentation : daskgd.observe.instrument.Instrumentation, optional
        Or merge the measurements of an instrumentation that is already a callback of
        the fit (its hooks are not passed on).

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
        with self._lock:
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
        """The trace of the iterations recorded so far (it may have 0 iterations)."""
        with self._lock:
            version, records, info = self._version, list(self._records), dict(self._info)
            done, cached = self.done, self._cached
        workers = None
        if self.instrumentation is not None and records:
            workers = self.instrumentation.worker_dataset(records)
        key = (version, _measured(workers))
        if cached is not None and cached[0] == key:
            return cached[1]
        trace = build_trace(records, info)
        if workers is not None and workers.data_vars:
            trace = trace.merge(workers, combine_attrs="override")
            trace.attrs.update(workers.attrs)
        trace.attrs["daskgd_live"] = int(not done)
        with self._lock:
            self._cached = (key, trace)
        return trace

    __call__ = snapshot


def _measured(workers: xr.Dataset | None) -> tuple:
    """What changes in the per-worker data as measurements arrive."""
    if workers is None or "compute_seconds" not in workers:
        return ()
    compute = workers["compute_seconds"]
    return (compute.shape, int(compute.notnull().sum()), float(compute.sum()))


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


class _Puller:
    """Calls a source for one view; logs a failing source once instead of crashing."""

    def __init__(self, source: Source, dashboard: TraceDashboard) -> None:
        self.source, self.dashboard = source, dashboard
        self.failed = False

    def __call__(self, memory: Memory | None = None) -> None:
        try:
            trace = self.source()
        except Exception:  # noqa: BLE001 - a live view must survive its source
            if not self.failed:
                logger.exception("daskgd dashboard: the trace source raised")
            self.failed = True
            return
        self.failed = False
        self.dashboard.update(trace, memory)


def _connected(doc: Any) -> bool:
    """Whether a browser is connected to the server session of ``doc`` (True if unknown)."""
    session = getattr(getattr(doc, "session_context", None), "_session", None)
    return getattr(session, "connection_count", 1) > 0


def _document(source: Source, doc: Any, interval_ms: int, memory: Callable | None = None):
    dashboard = TraceDashboard()
    pull = _Puller(source, dashboard)

    def tick() -> None:
        # A closed page's session lives on for a while: don't draw for nobody.
        if _connected(doc):
            pull(memory() if memory is not None else None)

    pull(memory() if memory is not None else None)
    doc.add_root(dashboard.layout)
    doc.title = "daskgd"
    doc.add_periodic_callback(tick, interval_ms)
    return dashboard


# ----------------------------------------------------------------------------------
# Standalone Bokeh server in a thread
# ----------------------------------------------------------------------------------


class LiveDashboard:
    """A Bokeh server showing a trace source, running in a background thread.

    Made by :func:`serve`. ``url`` is the page; ``stop()`` shuts the server down (also
    on leaving a ``with`` block).
    """

    def __init__(self, source: Source, host: str, port: int, interval_ms: int,
                 allow_websocket_origin: Sequence[str] | None = None,
                 memory: Callable[[], Memory] | None = None) -> None:  # fmt: skip
        self._source, self._interval_ms, self._memory = source, interval_ms, memory
        self.host, self.port = host, port
        self._origins = list(allow_websocket_origin or [])
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: Any = None
        self._server: Any = None
        self._thread = threading.Thread(target=self._run, name="daskgd-dashboard", daemon=True)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", None) else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> LiveDashboard:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the daskgd dashboard server did not start within 30 s")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            self._server = self._make_server()
        except BaseException as error:  # reported to the caller of start()
            self._error = error
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            self._loop.start()
        finally:
            loop.close()

    def _make_server(self) -> Any:
        from bokeh.application import Application
        from bokeh.application.handlers.function import FunctionHandler
        from bokeh.server.server import BaseServer
        from bokeh.server.tornado import BokehTornado
        from bokeh.server.util import bind_sockets
        from tornado.httpserver import HTTPServer
        from tornado.ioloop import IOLoop

        sockets, self.port = bind_sockets(self.host, self.port)
        origins = {f"{name}:{self.port}" for name in ("localhost", "127.0.0.1", self.host)}
        make = functools.partial(
            _document, self._source, interval_ms=self._interval_ms, memory=self._memory
        )
        app = BokehTornado(
            {"/": Application(FunctionHandler(lambda doc: make(doc=doc)))},
            extra_websocket_origins=sorted(origins | set(self._origins)),
        )
        http = HTTPServer(app)
        http.add_sockets(sockets)
        self._loop = IOLoop.current()
        server = BaseServer(self._loop, app, http)
        server.start()
        return server

    def stop(self, timeout: float = 10) -> None:
        """Stop the server and wait for its thread."""
        if self._loop is None or not self._thread.is_alive():
            return

        def shutdown() -> None:
            self._server.stop()
            self._loop.stop()

        self._loop.add_callback(shutdown)
        self._thread.join(timeout)

    def __enter__(self) -> LiveDashboard:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self._thread.is_alive() else "stopped"
        return f"<LiveDashboard {self.url} {state}>"


def client_memory(client: Any) -> Callable[[], Memory]:
    """Memory of every worker, from ``client.scheduler_info()`` (RSS and limit)."""

    def memory() -> Memory:
        try:
            workers = client.scheduler_info(n_workers=-1)["workers"]
        except Exception:  # noqa: BLE001 - no memory column rather than no dashboard
            return {}
        return {
            address: (info.get("metrics", {}).get("memory"), info.get("memory_limit"))
            for address, info in workers.items()
        }

    return memory


def serve(
    source: Any = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    interval_ms: int = DEFAULT_INTERVAL_MS,
    client: Any = None,
    allow_websocket_origin: Sequence[str] | None = None,
) -> LiveDashboard:
    """Serve a live dashboard of ``source`` from a Bokeh server in a background thread.

    Parameters
    ----------
    source : callable, object with ``snapshot()``, xarray.Dataset or None
        Where the trace comes from; None: the most recent :class:`LiveTrace`.
    host, port : str, int
        Address to listen on; port 0 picks a free port (see ``.url``).
    interval_ms : int
        How often each open page pulls ``source``.
    client : distributed.Client, optional
        When given, the worker table shows each worker's memory (in use / limit).
    allow_websocket_origin : sequence of str, optional
        Extra ``host:port`` origins allowed to connect (e.g. behind a proxy).

    Returns
    -------
    LiveDashboard
        Running; ``.url`` to open, ``.stop()`` to end.
    """
    memory = client_memory(client) if client is not None else None
    dashboard = LiveDashboard(
        as_source(source), host, port, interval_ms, allow_websocket_origin, memory
    )
    return dashboard.start()


# ----------------------------------------------------------------------------------
# Pages of the dask dashboard
# ----------------------------------------------------------------------------------

#: Route -> which figure of :class:`TraceDashboard` the page shows (None: all of it).
DASK_PAGES = {
    "/individual-daskgd-dashboard": None,
    "/individual-daskgd-loss": "loss",
    "/individual-daskgd-loss-time": "loss_time",
    "/individual-daskgd-time-split": "split",
    "/individual-daskgd-stragglers": "stragglers",
    "/individual-daskgd-bytes": "bytes",
    "/individual-daskgd-bytes-cumulative": "bytes_cumulative",
    "/individual-daskgd-workers": "workers",
}


def _scheduler_memory(scheduler: Any) -> Memory:
    return {
        address: (state.memory.process, state.memory_limit)
        for address, state in scheduler.workers.items()
    }


def _dask_page(source: Source, part: str | None, interval_ms: int, scheduler: Any,
               extra: dict, doc: Any) -> None:  # fmt: skip
    stretch = part is not None
    dashboard = TraceDashboard(sizing_mode="stretch_both" if stretch else None)
    pull = _Puller(source, dashboard)

    def tick() -> None:
        if _connected(doc):
            pull(_scheduler_memory(scheduler))

    pull(_scheduler_memory(scheduler))
    if part is None:
        root = dashboard.layout
    elif part == "workers":
        root = dashboard.workers_table
    else:
        root = dashboard.figures[part]
    doc.add_root(root)
    doc.title = "daskgd"
    # Runs on the scheduler's event loop: the update skips unchanged traces.
    doc.add_periodic_callback(tick, interval_ms)


def _running_schedulers() -> list:
    try:
        from distributed import Scheduler
    except ImportError:  # pragma: no cover - distributed is a dependency
        return []
    return [s for s in list(Scheduler._instances) if getattr(s.status, "name", "") == "running"]


def register_dask_pages(source: Any = None, *, interval_ms: int = DEFAULT_INTERVAL_MS) -> list[str]:
    """Add ``/individual-daskgd-*`` pages to the dask dashboard of schedulers started
    later in this process (e.g. a ``LocalCluster``).

    Call it before the scheduler starts: the dashboard reads its page list once.
    dask-labextension then lists the pages ("Individual Daskgd Time Split", ...).
    ``source`` as for :func:`serve`; None shows the most recent :class:`LiveTrace`.
    The pages run on the scheduler's event loop and pull ``source`` every
    ``interval_ms`` while a page is open: the source must not call the cluster
    (a :class:`LiveTrace` does not).

    Returns
    -------
    list of str
        The routes added.
    """
    from distributed.dashboard import scheduler as dask_dashboard

    pull = as_source(source)
    if _running_schedulers():
        warnings.warn(
            "a dask scheduler is already running in this process: its dashboard will not "
            "show the daskgd pages; call register_dask_pages() before starting the cluster",
            stacklevel=2,
        )
    for route, part in DASK_PAGES.items():
        dask_dashboard.applications[route] = functools.partial(_dask_page, pull, part, interval_ms)
    return list(DASK_PAGES)


def unregister_dask_pages() -> None:
    """Remove the pages added by :func:`register_dask_pages` (for later schedulers)."""
    from distributed.dashboard import scheduler as dask_dashboard

    for route in DASK_PAGES:
        dask_dashboard.applications.pop(route, None)


# ----------------------------------------------------------------------------------
# Jupyter, without a server
# ----------------------------------------------------------------------------------


class NotebookView:
    """The dashboard as a Jupyter widget, redrawn from a background thread.

    Made by :func:`notebook_view`; displays itself as the last expression of a cell.
    ``widget`` is the ``jupyter_bokeh.BokehModel``; ``stop()`` ends the updates.
    Updates keep flowing while another cell blocks (a ``fit`` in progress), since the
    kernel sends widget messages from any thread.
    """

    def __init__(self, source: Source, interval_ms: int) -> None:
        from jupyter_bokeh import BokehModel

        self.dashboard = TraceDashboard()
        self._pull = _Puller(source, self.dashboard)
        self._lock = threading.Lock()
        self.update()
        self.widget = BokehModel(self.dashboard.layout)
        self._interval = interval_ms / 1000
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="daskgd-notebook", daemon=True)
        self._thread.start()

    def update(self) -> None:
        """Pull the source and redraw now."""
        with self._lock:
            self._pull()

    def _loop(self) -> None:
        while not self._stopped.wait(self._interval):
            if getattr(self.widget, "comm", True) is None:  # the widget was closed
                break
            self.update()

    def stop(self, timeout: float = 5) -> None:
        """Stop updating (the view keeps its last state)."""
        self._stopped.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


def notebook_view(source: Any = None, *, interval_ms: int = DEFAULT_INTERVAL_MS) -> NotebookView:
    """A live view of ``source`` in a Jupyter notebook, without a Bokeh server.

    Needs ``jupyter_bokeh`` (``pip install 'daskgd[notebook]'``). ``source`` as for
    :func:`serve`. Put it last in a cell to display it; it redraws every
    ``interval_ms`` until ``.stop()``.
    """
    return NotebookView(as_source(source), interval_ms)
