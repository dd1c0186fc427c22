"""The live dashboard in a Jupyter notebook, without a server (``jupyter_bokeh``).

A ``jupyter_bokeh.BokehModel`` widget needs BokehJS in the page, and nothing loads
it by itself: without it JupyterLab shows "Click to show javascript error"
(``Cannot read properties of undefined (reading 'require')``), and
``bokeh.io.output_notebook()`` with its default resources fetches BokehJS from a CDN,
which hangs on a machine without internet (an HPC compute node). So
:func:`notebook_view` first publishes BokehJS inline, only the parts its layout
needs (about 1.7 MB for the compact layout, in the cell's output), as BokehJS's
JupyterLab load type only (bokeh's own loader adds a second copy for the classic
notebook), then the widget: it works as the first and only call, online or offline.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from daskgd.viz.columns import Memory
from daskgd.viz.live import Puller, Source, as_source, memory_source
from daskgd.viz.plots import TraceDashboard
from daskgd.viz.server import DEFAULT_INTERVAL_MS, _in_jupyter_kernel

__all__ = ["NotebookView", "bokehjs_components", "notebook_view", "publish_bokehjs"]


def bokehjs_components(model: Any) -> list[str]:
    """The BokehJS bundles that ``model`` and the models it references need."""
    from bokeh.models.widgets import TableWidget, Widget

    models = model.references()
    components = ["bokeh"]
    if any(isinstance(m, Widget) for m in models):
        components.append("bokeh-widgets")
    if any(isinstance(m, TableWidget) for m in models):
        components.append("bokeh-tables")
    return components


def publish_bokehjs(model: Any) -> bool:
    """Publish BokehJS, inline, to the notebook page of this kernel, with the bundles
    ``model`` needs. Returns False (and does nothing) outside a Jupyter kernel."""
    if not _in_jupyter_kernel():
        return False
    from bokeh.resources import Resources

    components: Any = bokehjs_components(model)  # names Resources checks itself
    resources = Resources(mode="inline", components=components)
    try:
        from bokeh.embed.bundle import bundle_for_objs_and_resources
        from bokeh.io.notebook import LOAD_MIME_TYPE, _loading_js
    except ImportError:  # another bokeh: its loader, which publishes both types
        from bokeh.io.notebook import load_notebook

        load_notebook(resources, hide_banner=True)
        return True
    from IPython.display import publish_display_data

    # bokeh's load_notebook publishes the bundle twice, as application/javascript (the
    # classic notebook) and as BokehJS's load type (JupyterLab, through jupyter_bokeh's
    # renderer, which the widget needs anyway): 1.7 MB each in the saved notebook.
    # Only the second.
    bundle = bundle_for_objs_and_resources(None, resources)
    publish_display_data({LOAD_MIME_TYPE: _loading_js(bundle, None, register_mime=False)})
    return True


class NotebookView:
    """The dashboard as a Jupyter widget, redrawn from a background thread.

    Made by :func:`notebook_view`; displays itself as the last expression of a cell.
    ``widget`` is the ``jupyter_bokeh.BokehModel``; ``stop()`` ends the updates.
    Updates keep flowing while another cell blocks (a ``fit`` in progress), since the
    kernel sends widget messages from any thread.
    """

    def __init__(self, source: Source, interval_ms: int, layout: str = "compact",
                 memory: Callable[[], Memory] | None = None) -> None:  # fmt: skip
        from jupyter_bokeh import BokehModel

        self.dashboard = TraceDashboard(layout=layout)
        self._pull = Puller(source, self.dashboard, memory)
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


def notebook_view(
    source: Any = None,
    *,
    layout: str = "compact",
    interval_ms: int = DEFAULT_INTERVAL_MS,
    client: Any = None,
    load_bokehjs: bool = True,
) -> NotebookView:
    """A live view of ``source`` in a Jupyter notebook, without a Bokeh server.

    Needs ``jupyter_bokeh`` (``pip install 'daskgd[notebook]'``). Put it last in a
    cell to display it; it redraws every ``interval_ms`` until ``.stop()``.

    Parameters
    ----------
    source : callable, object with ``snapshot()``, xarray.Dataset or None
        As for :func:`daskgd.viz.server.serve`; None: the most recent LiveTrace.
    layout : {"compact", "full"}, default "compact"
        The loss, the split and the stragglers in one row (about 320 px tall, so a
        progress bar below stays on screen), or every figure and the workers table.
    client : distributed.Client, optional
        Where the workers' memory comes from (the full layout's table); default: the
        client of a LiveTrace source, once its fit has started.
    load_bokehjs : bool, default True
        Publish BokehJS inline first (works offline). False if the page already has
        the same BokehJS, e.g. from ``bokeh.io.output_notebook(INLINE)``.
    """
    view = NotebookView(as_source(source), interval_ms, layout, memory_source(source, client))
    if load_bokehjs:
        publish_bokehjs(view.dashboard.layout)
    return view
