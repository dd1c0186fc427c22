"""A live dashboard of a fit: the plots of :mod:`daskgd.viz.plots`, redrawn while it runs.

Every live view is fed by a *source*: a callable returning the current trace, an
object with a ``snapshot()`` method (such as :class:`LiveTrace`), a fixed trace, or
None for the most recent :class:`LiveTrace`. Three ways to show it:

- :func:`notebook_view` shows the plots in a Jupyter notebook without a server
  (``jupyter_bokeh.BokehModel``), redrawn from a background thread; it loads BokehJS
  inline itself, so it works offline (:mod:`daskgd.viz.notebook`);
- :func:`serve` runs a standalone Bokeh server in a background thread; works with
  any cluster (LocalCluster, ``dask scheduler``, dask-jobqueue), any browser, and
  behind Jupyter's proxy (:mod:`daskgd.viz.server`);
- :func:`register_dask_pages` adds ``/individual-daskgd-*`` pages to the dask
  dashboard of a scheduler started later in the same process (a LocalCluster), so
  dask-labextension lists them beside dask's own panes (:mod:`daskgd.viz.dask_pages`).

Example::

    live = LiveTrace()
    notebook_view(live)                # or: dashboard = serve(live); dashboard.url
    model.fit(X, y, callbacks=[live])

This module gathers them under one name.
"""

from __future__ import annotations

from daskgd.viz.dask_pages import DASK_PAGES, register_dask_pages, unregister_dask_pages
from daskgd.viz.live import LiveTrace, as_source, client_memory, current_trace, memory_source
from daskgd.viz.notebook import NotebookView, notebook_view
from daskgd.viz.plots import TraceDashboard
from daskgd.viz.server import DEFAULT_INTERVAL_MS, LiveDashboard, serve

__all__ = [
    "DASK_PAGES",
    "DEFAULT_INTERVAL_MS",
    "LiveDashboard",
    "LiveTrace",
    "NotebookView",
    "TraceDashboard",
    "as_source",
    "client_memory",
    "current_trace",
    "memory_source",
    "notebook_view",
    "register_dask_pages",
    "serve",
    "unregister_dask_pages",
]
