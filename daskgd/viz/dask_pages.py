"""Pages of the dask dashboard: ``/individual-daskgd-*``, listed by dask-labextension.

distributed builds a scheduler's dashboard from
``distributed.dashboard.scheduler.applications`` once, when the scheduler starts, so
:func:`register_dask_pages` must run before (a ``LocalCluster`` started later in the
same process shows the pages; a running one does not, and the function says so by
returning None).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

from daskgd.viz.columns import Memory
from daskgd.viz.live import Puller, Source, as_source
from daskgd.viz.plots import TraceDashboard
from daskgd.viz.server import DEFAULT_INTERVAL_MS, connected

__all__ = ["DASK_PAGES", "register_dask_pages", "unregister_dask_pages"]

#: Route -> which figure of :class:`TraceDashboard` the page shows (None: all of it).
DASK_PAGES = {
    "/individual-daskgd-dashboard": None,
    "/individual-daskgd-loss": "loss",
    "/individual-daskgd-loss-time": "loss_time",
    "/individual-daskgd-gradient": "gradient",
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
    pull = Puller(source, dashboard)

    def tick() -> None:
        if connected(doc):
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


def register_dask_pages(
    source: Any = None, *, interval_ms: int = DEFAULT_INTERVAL_MS
) -> list[str] | None:
    """Add ``/individual-daskgd-*`` pages to the dask dashboard of schedulers started
    later in this process (e.g. a ``LocalCluster``).

    Call it before the scheduler starts: the dashboard reads its page list once.
    dask-labextension then lists the pages ("Individual Daskgd Time Split", ...).
    ``source`` as for :func:`daskgd.viz.server.serve`; None shows the most recent
    :class:`~daskgd.viz.live.LiveTrace`. The pages run on the scheduler's event loop
    and pull ``source`` every ``interval_ms`` while a page is open: the source must not
    call the cluster (a :class:`~daskgd.viz.live.LiveTrace` does not).

    Returns
    -------
    list of str or None
        The routes added; None (and a warning) when a scheduler already runs in this
        process, whose dashboard will not show them (schedulers started later will).
    """
    from distributed.dashboard import scheduler as dask_dashboard

    pull = as_source(source)
    for route, part in DASK_PAGES.items():
        dask_dashboard.applications[route] = functools.partial(_dask_page, pull, part, interval_ms)
    if _running_schedulers():
        warnings.warn(
            "a dask scheduler is already running in this process: its dashboard will not "
            "show the daskgd pages (schedulers started later will); call "
            "register_dask_pages() before starting the cluster, or use serve()",
            stacklevel=2,
        )
        return None
    return list(DASK_PAGES)


def unregister_dask_pages() -> None:
    """Remove the pages added by :func:`register_dask_pages` (for later schedulers)."""
    from distributed.dashboard import scheduler as dask_dashboard

    for route in DASK_PAGES:
        dask_dashboard.applications.pop(route, None)
