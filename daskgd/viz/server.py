"""A standalone Bokeh server for the live dashboard, in a background thread.

It works with any cluster and any browser that reaches it. Behind a proxy the page
still loads: it asks for BokehJS by URLs relative to itself (``./static/...``) and
BokehJS opens its websocket relative to the page too, so a proxy that maps
``/proxy/PORT/`` (jupyter-server-proxy, JupyterHub) or any other path to this
server's ``/`` needs no setting. A proxy that keeps its path (``/proxy/absolute/
PORT/...``) needs ``prefix=`` set to that path.

In a Jupyter kernel with jupyter-server-proxy installed, :func:`serve` prints the
path of the page through Jupyter's own proxy, and the dashboard also accepts
websockets from pages served by any port of this machine (where Jupyter runs).
"""

from __future__ import annotations

import asyncio
import functools
import html
import importlib.util
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from daskgd.viz.columns import Memory
from daskgd.viz.live import Puller, Source, as_source, memory_source
from daskgd.viz.plots import TraceDashboard

__all__ = ["DEFAULT_INTERVAL_MS", "LiveDashboard", "jupyter_proxy_path", "serve"]

#: How often live views pull their source, in milliseconds.
DEFAULT_INTERVAL_MS = 500

#: How long start() waits for the server thread to bind its socket.
START_TIMEOUT_SECONDS = 30


def connected(doc: Any) -> bool:
    """Whether a browser is connected to the server session of ``doc`` (True if unknown)."""
    session = getattr(getattr(doc, "session_context", None), "_session", None)
    return getattr(session, "connection_count", 1) > 0


#: The page of a session: a static copy of its document, drawn as soon as BokehJS has
#: loaded, gives way to the live one once the server's websocket delivered it. Without
#: it, a page is blank until that round trip: ``chromium --headless --screenshot``
#: captures at the load event, before it, and gave a blank image (a Playwright
#: screenshot that waits for the plots drew). Bokeh puts ``{% extends base %}`` in front.
PAGE_TEMPLATE = """{% block contents %}
<div id="daskgd-static-view">{{ daskgd_static_div | safe }}</div>
{{ daskgd_static_script | safe }}
{{ super() }}
<script>
(function () {
  const started = Date.now();
  const timer = setInterval(function () {
    const docs = (window.Bokeh && window.Bokeh.documents) || [];
    // the static copy is the first document; the server's is the next one
    if (docs.length > 1 || Date.now() - started > 600000) {
      clearInterval(timer);
      requestAnimationFrame(function () {
        const stale = document.getElementById("daskgd-static-view");
        if (stale) { stale.remove(); }
        // the live document becomes Bokeh.documents[0], as on a page without a copy
        if (docs.length > 1) { docs.splice(0, 1); }
      });
    }
  }, 100);
})();
</script>
{% endblock %}
"""


def _static_copy(doc: Any) -> tuple[str, str]:
    """(script, div) of a standalone copy of ``doc``'s roots, as they are now."""
    from bokeh.embed import components

    script, divs = components(tuple(doc.roots))
    return script, "".join(divs)


def _document(source: Source, doc: Any, interval_ms: int, memory: Callable | None = None):
    dashboard = TraceDashboard()
    pull = Puller(source, dashboard, memory)

    def tick() -> None:
        # A closed page's session lives on for a while: don't draw for nobody.
        if connected(doc):
            doc.hold("combine")
            try:
                pull()
            finally:
                doc.unhold()

    pull()
    doc.add_root(dashboard.layout)
    doc.title = "daskgd"
    script, div = _static_copy(doc)
    doc.template = PAGE_TEMPLATE
    doc.template_variables.update(daskgd_static_script=script, daskgd_static_div=div)
    doc.add_periodic_callback(tick, interval_ms)
    return dashboard


def _in_jupyter_kernel() -> bool:
    if "ipykernel" not in sys.modules:
        return False
    from IPython import get_ipython

    return getattr(get_ipython(), "kernel", None) is not None


def _jupyter_base_url() -> str:
    """Base URL of the Jupyter server that started this kernel ('/' if not found)."""
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX")
    if prefix:
        return prefix
    try:
        from jupyter_server.serverapp import list_running_servers

        for info in list_running_servers():
            if info.get("pid") == os.getppid():  # the server is the kernel's parent
                return str(info.get("base_url") or "/")
    except Exception:  # noqa: BLE001 - the default base URL is right for most servers
        pass
    return "/"


def jupyter_proxy_path(port: int, prefix: str = "") -> str | None:
    """The page's path through Jupyter's proxy (``{base_url}proxy/{port}/``), when
    this runs in a Jupyter kernel that has jupyter-server-proxy; else None."""
    if not _in_jupyter_kernel() or importlib.util.find_spec("jupyter_server_proxy") is None:
        return None
    base = _jupyter_base_url().rstrip("/")
    return f"{base}/proxy/{port}{prefix}/"


def _normalise_prefix(prefix: str | None) -> str:
    if prefix is None:
        return ""
    if not isinstance(prefix, str) or any(c in prefix for c in "?#") or "://" in prefix:
        raise ValueError(f"prefix must be a URL path such as '/daskgd', got {prefix!r}")
    prefix = prefix.strip("/")
    return f"/{prefix}" if prefix else ""


def _make_tornado(applications: dict, prefix: str, origins: list[str]) -> Any:
    from bokeh.resources import Resources
    from bokeh.server.tornado import BokehTornado
    from bokeh.server.urls import StaticHandler
    from bokeh.settings import settings

    class RelativeBokehTornado(BokehTornado):
        """Pages load BokehJS relative to themselves: right directly and behind a proxy."""

        def resources(self, absolute_url: Any = None) -> Resources:
            if settings.resources(default="server") != "server":
                return super().resources(absolute_url)
            return Resources(
                mode="server", root_url="./", path_versioner=StaticHandler.append_version
            )

    return RelativeBokehTornado(applications, prefix=prefix, extra_websocket_origins=origins)


class LiveDashboard:
    """A Bokeh server showing a trace source, running in a background thread.

    Made by :func:`serve`. ``url`` is the page; ``jupyter_url`` its path through
    Jupyter's proxy when there is one (else None); ``stop()`` shuts the server down
    (also on leaving a ``with`` block).
    """

    def __init__(self, source: Source, host: str, port: int, interval_ms: int,
                 allow_websocket_origin: Sequence[str] | None = None,
                 memory: Callable[[], Memory] | None = None, prefix: str = "") -> None:  # fmt: skip
        self._source, self._interval_ms, self._memory = source, interval_ms, memory
        self.host, self.port, self.prefix = host, port, _normalise_prefix(prefix)
        self._origins = list(allow_websocket_origin or [])
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: Any = None
        self._server: Any = None
        self._thread = threading.Thread(target=self._run, name="daskgd-dashboard", daemon=True)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", None) else self.host
        return f"http://{host}:{self.port}{self.prefix}/"

    @property
    def jupyter_url(self) -> str | None:
        """Path of the page through Jupyter's proxy (open it from the notebook's page)."""
        return jupyter_proxy_path(self.port, self.prefix)

    def start(self) -> LiveDashboard:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_SECONDS):
            raise RuntimeError(
                f"the daskgd dashboard server did not start within {START_TIMEOUT_SECONDS} s"
            )
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

    def _websocket_origins(self) -> list[str]:
        origins = {f"{name}:{self.port}" for name in ("localhost", "127.0.0.1", self.host)}
        if _in_jupyter_kernel():
            # Through Jupyter's proxy the page's origin is the Jupyter server's, on a
            # port of this machine the kernel cannot know (an ssh tunnel changes it).
            origins |= {"localhost:*", "127.0.0.1:*"}
        return sorted(origins | set(self._origins))

    def _make_server(self) -> Any:
        from bokeh.application import Application
        from bokeh.application.handlers.function import FunctionHandler
        from bokeh.server.server import BaseServer
        from bokeh.server.util import bind_sockets
        from tornado.httpserver import HTTPServer
        from tornado.ioloop import IOLoop

        sockets, self.port = bind_sockets(self.host, self.port)
        make = functools.partial(
            _document, self._source, interval_ms=self._interval_ms, memory=self._memory
        )
        app = _make_tornado(
            {"/": Application(FunctionHandler(lambda doc: make(doc=doc)))},
            self.prefix,
            self._websocket_origins(),
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
        through = f" (through Jupyter: {self.jupyter_url})" if self.jupyter_url else ""
        return f"<LiveDashboard {self.url}{through} {state}>"

    def _repr_html_(self) -> str:
        links = [self.jupyter_url, self.url] if self.jupyter_url else [self.url]
        anchors = " or ".join(
            f'<a href="{html.escape(u)}" target="_blank">{html.escape(u)}</a>' for u in links
        )
        return f"daskgd dashboard: {anchors}"


def serve(
    source: Any = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    interval_ms: int = DEFAULT_INTERVAL_MS,
    client: Any = None,
    allow_websocket_origin: Sequence[str] | None = None,
    prefix: str | None = None,
) -> LiveDashboard:
    """Serve a live dashboard of ``source`` from a Bokeh server in a background thread.

    Parameters
    ----------
    source : callable, object with ``snapshot()``, xarray.Dataset or None
        Where the trace comes from; None: the most recent :class:`LiveTrace`.
    host, port : str, int
        Address to listen on (loopback by default); port 0 picks a free port.
    interval_ms : int
        How often each open page pulls ``source``.
    client : distributed.Client, optional
        Where the worker table reads each worker's memory (in use / limit); default:
        the client of a :class:`LiveTrace` source, once its fit has started.
    allow_websocket_origin : sequence of str, optional
        Extra ``host[:port]`` origins of pages allowed to connect, e.g. the public
        host of a JupyterHub whose proxy forwards to this server.
    prefix : str, optional
        Serve under this path (``/prefix/``), for a proxy that forwards its path
        unchanged; a proxy that strips its path (``/proxy/PORT/``) needs none.

    Returns
    -------
    LiveDashboard
        Running; ``.url`` to open (``.jupyter_url`` through Jupyter), ``.stop()`` to end.
        In a Jupyter kernel the URL through Jupyter's proxy is printed.
    """
    memory = memory_source(source, client)
    dashboard = LiveDashboard(
        as_source(source), host, port, interval_ms, allow_websocket_origin, memory,
        _normalise_prefix(prefix),
    )  # fmt: skip
    dashboard.start()
    if dashboard.jupyter_url:
        print(f"daskgd dashboard: {dashboard.jupyter_url} (through Jupyter), {dashboard.url}")
    return dashboard
