"""The dashboard, its three live modes, the HTML report and ``daskgd report``.

Browser tests open the pages in headless Chromium (the ``browser`` fixture) and check
that there are no console errors, that every plot has drawn something inside its
frame, and that live pages show new iterations as the trace grows.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest
from synthetic_traces import WORKERS, make_trace, without_workers

from daskgd.engine.callbacks import Callback
from daskgd.engine.driver import IterationRecord
from daskgd.observe.summary import split
from daskgd.viz.columns import pending_span
from daskgd.viz.dashboard import (
    DASK_PAGES,
    LiveTrace,
    as_source,
    current_trace,
    notebook_view,
    register_dask_pages,
    serve,
    unregister_dask_pages,
)
from daskgd.viz.notebook import bokehjs_components
from daskgd.viz.plots import TraceDashboard, bytes_columns, heatmap_columns, loss_columns
from daskgd.viz.report import write_report

TESTS = Path(__file__).resolve().parent
PLOTS = (
    "loss-iteration",
    "loss-elapsed",
    "gradient",
    "split",
    "stragglers",
    "bytes",
    "bytes-cumulative",
)

#: The inner frames (data areas) of Bokeh plots, in page coordinates.
FRAMES_JS = """names => names.map(name => {
  const model = Bokeh.documents[0].get_model_by_name(name);
  const view = Bokeh.index.find_one(model);
  const page = view.el.getBoundingClientRect();
  const frame = view.frame.bbox;
  return [page.x + frame.x, page.y + frame.y, frame.width, frame.height];
})"""

LENGTH_JS = "name => Bokeh.documents[0].get_model_by_name(name).data.iteration.length"

#: All iterations of a finished fit shown, with per-worker data.
FINAL_JS = """n => {
  const doc = Bokeh.documents[0];
  return doc.get_model_by_name("daskgd-loss-data").data.iteration.length == n
    && doc.get_model_by_name("daskgd-heatmap-data").data.iteration.length > 0;
}"""


class GrowingTrace:
    """A synthetic trace that gains ``step`` iterations every ``period`` seconds."""

    def __init__(self, n_iterations: int = 300, start: int = 3, step: int = 2, period=0.1):
        self.full = make_trace(n_iterations)
        self.n, self.step, self.period = start, step, period
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._grow, daemon=True)
        self._thread.start()

    def _grow(self) -> None:
        while not self._stop.wait(self.period):
            with self._lock:
                self.n = min(self.n + self.step, self.full.sizes["iteration"])

    def snapshot(self):
        with self._lock:
            n = self.n
        return self.full.isel(iteration=slice(0, n))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _record(i: int) -> IterationRecord:
    return IterationRecord(
        iteration=i, loss=1.0 / (i + 1), grad_norm=0.1, step_size=0.5, wall_seconds=0.01,
        elapsed_seconds=0.01 * (i + 1), n_evaluations=1, evaluation_seconds=0.008,
        attempts=1, key_prefixes=(f"daskgd-{i}",), start_time=1.7e9 + i,
    )  # fmt: skip


# ----------------------------------------------------------------------------------
# Columns and the component, without a browser
# ----------------------------------------------------------------------------------


def test_heatmap_marks_exactly_the_stragglers():
    trace = make_trace(n_iterations=20)
    cells, marks = heatmap_columns(trace)
    assert len(cells["iteration"]) == 21 * len(WORKERS)
    assert len(marks["iteration"]) == int(trace["straggler"].sum())
    assert set(marks["worker"]) == {"2 127.0.0.1:40103"}
    np.testing.assert_allclose(
        np.sort(cells["compute_ms"]), np.sort(trace["compute_seconds"].values.ravel() * 1e3)
    )


def test_bytes_columns_split_broadcast_reduce_and_other():
    trace = make_trace(n_iterations=20)
    trace["bytes_total"][0] += 5e6  # data chunks moved in the first iteration
    columns, unit, cumulative_unit = bytes_columns(split(trace))
    assert unit == "kB" and cumulative_unit == "MB"
    np.testing.assert_allclose(columns["other"][0], 5e3)
    np.testing.assert_allclose(columns["other"][1:], 0)
    np.testing.assert_allclose(
        columns["broadcast"] + columns["reduce"] + columns["other"], columns["total"]
    )


def test_loss_columns_drop_values_a_log_axis_cannot_show():
    trace = make_trace(n_iterations=2)
    trace["loss"][1] = 0.0
    assert np.isnan(loss_columns(trace)["loss"][1])


def test_update_redraws_only_when_the_trace_changed():
    dashboard = TraceDashboard()
    trace = make_trace(n_iterations=5)
    assert dashboard.update(trace)
    assert not dashboard.update(trace.copy())
    assert dashboard.update(make_trace(n_iterations=6))
    assert len(dashboard.sources["loss"].data["iteration"]) == 7
    assert dashboard.update(None)
    assert len(dashboard.sources["loss"].data["iteration"]) == 0


def test_update_sends_only_the_sources_that_changed():
    """A browser redraws every plot of a source whose data is set: equal data is left."""
    dashboard = TraceDashboard()
    trace = make_trace(n_iterations=8)
    dashboard.update(trace)
    before = {name: source.data for name, source in dashboard.sources.items()}
    longer = trace.assign_attrs(daskgd_live=1)  # same data, another fingerprint
    assert dashboard.update(longer)
    assert all(dashboard.sources[name].data is data for name, data in before.items())
    loss = trace["loss"].values.copy()
    loss[-1] = np.nan  # NaN = NaN for what is unchanged, a change where it is new
    dashboard.update(trace.assign(loss=("iteration", loss)))
    assert np.isnan(dashboard.sources["loss"].data["loss"][-1])
    assert dashboard.sources["heatmap"].data is before["heatmap"]


def _columns_equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for name in a:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        if x.shape != y.shape:
            return False
        same = np.array_equal(x, y, equal_nan=True) if x.dtype.kind in "fc" else (x == y).all()
        if not same:
            return False
    return True


def test_a_grown_trace_sends_its_new_rows_only():
    """A page gets the rows a grown trace added (streamed) and its old rows that changed
    (patched), not every column again; the sources end as a dashboard drawn afresh."""
    from bokeh.document import Document
    from bokeh.document.events import (
        ColumnDataChangedEvent,
        ColumnsPatchedEvent,
        ColumnsStreamedEvent,
    )

    trace = make_trace(n_iterations=60)
    dashboard = TraceDashboard()
    document = Document()
    document.add_root(dashboard.layout)
    dashboard.update(trace.isel(iteration=slice(0, 30)))
    events: list = []
    document.on_change(events.append)
    loss = trace["loss"].values.copy()
    loss[28] = 0.123  # an old row that changed (a pending iteration measured since)
    grown = trace.assign(loss=("iteration", loss)).isel(iteration=slice(0, 33))
    dashboard.update(grown)
    of_loss = [e for e in events if getattr(e, "model", None) is dashboard.sources["loss"]]
    assert not [e for e in of_loss if isinstance(e, ColumnDataChangedEvent)], of_loss
    (streamed,) = [e for e in of_loss if isinstance(e, ColumnsStreamedEvent)]
    assert list(streamed.data["iteration"]) == [30, 31, 32]
    (patched,) = [e for e in of_loss if isinstance(e, ColumnsPatchedEvent)]
    assert patched.patches["loss"][0][0] == slice(28, 30)
    heatmap = [e for e in events if getattr(e, "model", None) is dashboard.sources["heatmap"]]
    assert heatmap and all(isinstance(e, ColumnsStreamedEvent) for e in heatmap), heatmap
    fresh = TraceDashboard()
    fresh.update(grown)
    for name, source in dashboard.sources.items():
        assert _columns_equal(source.data, fresh.sources[name].data), name
    shorter = grown.isel(iteration=slice(0, 10))  # another fit: replaced, not patched
    events.clear()
    dashboard.update(shorter)
    assert any(isinstance(e, ColumnDataChangedEvent) for e in events)
    fresh.update(shorter)
    for name, source in dashboard.sources.items():
        assert _columns_equal(source.data, fresh.sources[name].data), name


@pytest.mark.parametrize(
    ("trace", "title"),
    [
        pytest.param(without_workers(make_trace(5)), "not measured", id="no-workers"),
        pytest.param(make_trace(5).isel(iteration=slice(0, 0)), "0 stragglers", id="empty"),
    ],
)
def test_update_accepts_sparse_traces(trace, title):
    dashboard = TraceDashboard()
    assert dashboard.update(trace)
    assert len(dashboard.sources["split"].data["iteration"]) == trace.sizes["iteration"]
    assert len(dashboard.sources["heatmap"].data["iteration"]) == 0
    assert title in dashboard.figures["stragglers"].title.text


def _pending_trace(n_iterations: int = 20, measured_through: int = 12):
    """A live trace whose per-worker figures stop at ``measured_through``, as while the
    instrumentation's next poll is still to come."""
    trace = make_trace(n_iterations)
    later = trace["iteration"] > measured_through
    for name in ("compute_seconds", "communication_seconds", "wait_seconds", "bytes_sent",
                 "bytes_received", "bytes_total", "bytes_broadcast", "bytes_reduce"):  # fmt: skip
        trace[name] = trace[name].where(~later)
    trace["straggler"] = trace["straggler"] & ~later
    trace.attrs.update(daskgd_live=1, daskgd_instrumented=1)
    return trace


def test_pending_iterations_are_marked_not_drawn_as_flat_totals():
    trace = _pending_trace(20, measured_through=12)
    assert pending_span(trace) == (13, 20)
    columns, _, unit = bytes_columns(split(trace))
    scale = {"B": 1.0, "kB": 1e3, "MB": 1e6, "GB": 1e9}[unit]
    assert np.isnan(columns["total_cumulative"][13:]).all()  # not a flat line
    np.testing.assert_allclose(
        columns["total_cumulative"][:13] * scale, np.cumsum(trace["bytes_total"].values[:13])
    )
    dashboard = TraceDashboard()
    dashboard.update(trace)
    box = dashboard.figures["split"].select_one({"name": "daskgd-split-pending"})
    assert box.visible and (box.left, box.right) == (12.5, 20.5)
    assert "iterations 13-20: per-worker measurements pending" in dashboard.header.text
    finished = trace.assign_attrs(daskgd_live=0)
    assert pending_span(finished) is None
    dashboard.update(finished)
    assert not box.visible


def test_nothing_is_pending_without_instrumentation():
    trace = without_workers(make_trace(5)).assign_attrs(daskgd_live=1)
    assert pending_span(trace) is None
    trace.attrs["daskgd_instrumented"] = 1  # measurements are coming, none arrived yet
    assert pending_span(trace) == (0, 5)


def test_compact_layout_shows_loss_split_and_stragglers():
    compact = TraceDashboard(layout="compact")
    assert set(compact.figures) == {"loss", "split", "stragglers"}
    assert compact.workers_table is None
    assert compact.update(make_trace(10))
    assert len(compact.sources["heatmap"].data["iteration"]) == 11 * len(WORKERS)
    # Narrow plots: worker names alone when they tell the workers apart.
    assert compact.figures["stragglers"].y_range.factors == ["worker 0", "worker 1", "worker 2"]
    assert set(compact.sources["stragglers"].data["worker"]) == {"worker 2"}
    assert bokehjs_components(compact.layout) == ["bokeh", "bokeh-widgets"]
    full = TraceDashboard()
    assert bokehjs_components(full.layout) == ["bokeh", "bokeh-widgets", "bokeh-tables"]
    with pytest.raises(ValueError, match="unknown layout 'tiny'"):
        TraceDashboard(layout="tiny")


def test_live_trace_snapshots_while_records_are_appended():
    live = LiveTrace()
    live.on_fit_start({"solver": "gd", "chunk_workers": list(WORKERS)})
    sizes = []

    def fit() -> None:
        for i in range(300):
            live.on_iteration_end(_record(i))
        live.on_fit_end(None)

    thread = threading.Thread(target=fit)
    thread.start()
    while thread.is_alive():
        sizes.append(live.snapshot().sizes["iteration"])
    thread.join()
    final = live.snapshot()
    assert sizes == sorted(sizes)
    assert final.sizes["iteration"] == 300 and live.done
    assert final.attrs["solver"] == "gd" and final.attrs["daskgd_live"] == 0
    assert live.snapshot() is final  # unchanged: cached
    assert current_trace() is final


def test_sources_are_callables_objects_with_snapshot_or_traces():
    trace = make_trace(2)
    assert as_source(trace)() is trace
    assert as_source(lambda: trace)() is trace
    live = LiveTrace()
    assert as_source(live) == live.snapshot
    with pytest.raises(TypeError, match="source must be"):
        as_source(42)


def test_notebook_view_updates_from_its_thread_until_stopped():
    pytest.importorskip("jupyter_bokeh")
    growing = GrowingTrace(period=0.05)
    view = notebook_view(growing, interval_ms=50)
    try:
        first = len(view.dashboard.sources["loss"].data["iteration"])
        # it grows within a few intervals (0.6 s was not enough once on a loaded machine)
        deadline = time.monotonic() + 15
        while len(view.dashboard.sources["loss"].data["iteration"]) == first:
            assert time.monotonic() < deadline, f"the view stayed at {first} iterations"
            time.sleep(0.05)
    finally:
        view.stop()
        growing.stop()
    assert not view.running


# ----------------------------------------------------------------------------------
# Browser
# ----------------------------------------------------------------------------------


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1200, "height": 1100})
    page.errors = []  # type: ignore[attr-defined]
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.goto(url)
    page.wait_for_function("window.Bokeh && Bokeh.documents.length > 0", timeout=20_000)
    page.wait_for_function("Bokeh.documents[0].is_idle", timeout=20_000)
    return page


def _assert_drawn(page, plots=PLOTS) -> None:
    """Something coloured inside every plot's frame (grid, axes and text are grey)."""
    from PIL import Image

    boxes = page.evaluate(FRAMES_JS, [f"daskgd-{plot}-plot" for plot in plots])
    shot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    image = np.asarray(shot, dtype=np.float64)
    for plot, (x, y, width, height) in zip(plots, boxes, strict=True):
        assert width > 50 and height > 50, (plot, width, height)
        pixels = image[round(y) : round(y + height), round(x) : round(x + width)]
        coloured = (pixels.max(axis=2) - pixels.min(axis=2) > 60).mean()
        assert pixels.std() > 5 and coloured > 0.005, (plot, pixels.std(), coloured)


def _wait_for_growth(page, name: str, timeout: float = 10) -> tuple[int, int]:
    first = page.evaluate(LENGTH_JS, name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page.wait_for_timeout(200)
        now = page.evaluate(LENGTH_JS, name)
        if now > first:
            return first, now
    return first, first


def test_report_opens_offline_with_every_plot_drawn(browser, tmp_path):
    path = write_report(make_trace(60), tmp_path / "report.html")
    text = path.read_text()
    assert "<script src=" not in text.replace('<script src="data:', "")  # all inline
    page = _open(browser, path.as_uri())
    try:
        _assert_drawn(page)
        content = page.content()
        assert "where the time went" in content
        for address in WORKERS:
            assert address in content
        assert page.errors == []
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    finally:
        page.close()


def test_report_of_a_trace_without_workers_opens(browser, tmp_path):
    path = write_report(without_workers(make_trace(20)), tmp_path / "report.html")
    page = _open(browser, path.as_uri())
    try:
        _assert_drawn(page, ("loss-iteration", "loss-elapsed"))
        assert "no per-worker measurements" in page.content()
        assert page.errors == []
    finally:
        page.close()


def test_served_page_shows_new_iterations(browser):
    growing = GrowingTrace()
    live = serve(growing, interval_ms=200)
    try:
        page = _open(browser, live.url)
        try:
            first, later = _wait_for_growth(page, "daskgd-loss-data")
            assert later > first >= 3
            growing.stop()  # a still page: the screenshot needs no redraw to wait for
            _assert_drawn(page)
            assert page.errors == []
        finally:
            page.close()
    finally:
        live.stop()
        growing.stop()
    assert "stopped" in repr(live)
    with pytest.raises(OSError):
        urllib.request.urlopen(live.url, timeout=2)


def _screenshot_variance(path: Path) -> tuple[float, float]:
    """(grey-level standard deviation, share of non-white pixels) of a PNG."""
    from PIL import Image

    grey = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    return float(grey.std()), float((grey < 250).mean())


def test_served_page_draws_in_a_plain_headless_screenshot(chromium_executable, tmp_path):
    """``chromium --headless --screenshot`` captures at the load event, before the
    websocket round trip that brings the server's document: the page draws a static
    copy of the document first (server.PAGE_TEMPLATE). Before, this was a blank page
    (standard deviation 0); a 500 error page has about 4, the dashboard about 60."""
    import subprocess

    live = serve(make_trace(40), interval_ms=200)
    out = tmp_path / "out.png"
    try:
        command = [
            chromium_executable, "--headless", "--no-sandbox", "--disable-gpu",
            f"--screenshot={out}", "--window-size=1200,900", live.url,
        ]  # fmt: skip
        subprocess.run(command, capture_output=True, timeout=120, check=False, cwd=tmp_path)
    finally:
        live.stop()
    assert out.exists(), "chromium wrote no screenshot"
    std, drawn = _screenshot_variance(out)
    assert std > 30 and drawn > 0.05, (std, drawn)


def test_served_page_swaps_its_static_copy_for_the_live_document(browser):
    growing = GrowingTrace()
    live = serve(growing, interval_ms=200)
    try:
        page = _open(browser, live.url)
        try:
            page.wait_for_function(
                "() => !document.getElementById('daskgd-static-view')"
                " && Bokeh.documents.length == 1",
                timeout=30_000,
            )
            first, later = _wait_for_growth(page, "daskgd-loss-data")
            assert later > first
            growing.stop()
            _assert_drawn(page)
            assert page.errors == []
        finally:
            page.close()
    finally:
        live.stop()
        growing.stop()


def test_served_page_under_a_prefix_asks_for_nothing_by_absolute_path(browser):
    """Behind a proxy that keeps its path (``prefix=``) or strips it (the page's own
    URLs are relative): tested through jupyter-server-proxy in test_jupyterlab.py."""
    growing = GrowingTrace()
    live = serve(growing, interval_ms=200, prefix="/user/someone/daskgd/")
    try:
        assert live.url.endswith("/user/someone/daskgd/")
        with urllib.request.urlopen(live.url, timeout=10) as response:
            text = response.read().decode()
        assert 'src="./static/js/bokeh' in text and 'src="/static' not in text
        page = _open(browser, live.url)
        try:
            first, later = _wait_for_growth(page, "daskgd-loss-data")
            assert later > first
            assert page.errors == []
        finally:
            page.close()
    finally:
        live.stop()
        growing.stop()


def test_proxied_path_under_jupyterhub(monkeypatch):
    from daskgd.viz import server

    assert server.jupyter_proxy_path(8787) is None  # not in a Jupyter kernel
    monkeypatch.setattr(server, "_in_jupyter_kernel", lambda: True)
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/ada/")
    assert server.jupyter_proxy_path(8787) == "/user/ada/proxy/8787/"
    assert server.jupyter_proxy_path(8787, "/daskgd") == "/user/ada/proxy/8787/daskgd/"


@pytest.mark.parametrize("prefix", ["http://host/x", "/a?b", 3])
def test_serve_rejects_a_prefix_that_is_not_a_path(prefix):
    with pytest.raises(ValueError, match="prefix must be a URL path"):
        serve(make_trace(2), prefix=prefix)


def test_register_before_any_scheduler_returns_the_routes(monkeypatch):
    from daskgd.viz import dask_pages

    monkeypatch.setattr(dask_pages, "_running_schedulers", lambda: [])
    try:
        assert register_dask_pages(make_trace(2)) == list(DASK_PAGES)
    finally:
        unregister_dask_pages()


@pytest.fixture
def dask_pages():
    """(routes registered for the test only, unregistered afterwards; their trace)."""
    from distributed.dashboard import scheduler as dask_dashboard

    growing = GrowingTrace()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the session's cluster may be running already
        register_dask_pages(growing, interval_ms=200)
    try:
        yield [route for route in DASK_PAGES if route in dask_dashboard.applications], growing
    finally:
        unregister_dask_pages()
        growing.stop()


def test_dask_dashboard_lists_and_serves_the_pages(browser, dask_pages):
    from distributed import LocalCluster

    routes, growing = dask_pages
    assert routes == list(DASK_PAGES)
    with LocalCluster(
        n_workers=1, processes=False, threads_per_worker=1, dashboard_address="127.0.0.1:0"
    ) as cluster:
        base = f"http://127.0.0.1:{cluster.scheduler.http_server.port}"
        with urllib.request.urlopen(f"{base}/individual-plots.json", timeout=10) as response:
            listed = set(json.load(response).values())
        assert set(DASK_PAGES) <= listed
        page = _open(browser, f"{base}/individual-daskgd-time-split")
        try:
            first, later = _wait_for_growth(page, "daskgd-split-data")
            assert later > first
            growing.stop()
            _assert_drawn(page, ("split",))
            page.goto(f"{base}/individual-daskgd-dashboard")
            page.wait_for_function("window.Bokeh && Bokeh.documents.length > 0")
            page.wait_for_function("Bokeh.documents[0].is_idle")
            _assert_drawn(page)
            assert page.errors == []
        finally:
            page.close()


def test_register_warns_when_a_scheduler_already_runs():
    from distributed import LocalCluster

    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0"):
        try:
            with pytest.warns(UserWarning, match="before starting the cluster"):
                routes = register_dask_pages(make_trace(2))
        finally:
            unregister_dask_pages()
    assert routes is None  # the running scheduler's dashboard does not show them


@pytest.fixture(scope="module")
def own_client():
    """A Client of its own, not the default one: tests elsewhere expect none."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


def _wait_for_the_final_trace(page, n: int, live, warned: list) -> None:
    """Wait until the page shows all ``n`` iterations and per-worker data; on a timeout,
    fail with what the page and the server's snapshot held (a loaded CI machine timed
    out once at 10 s, showing nothing of why)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(FINAL_JS, arg=n, timeout=30_000)
    except PlaywrightTimeout:
        shown = {
            name: page.evaluate(LENGTH_JS, f"daskgd-{name}-data") for name in ("loss", "heatmap")
        }
        trace = live.snapshot()
        pytest.fail(
            f"the page did not reach {n} iterations with worker data in 30 s: it shows {shown}; "
            f"the snapshot has {trace.sizes.get('iteration')} iterations, variables "
            f"{sorted(trace.data_vars)}, live={trace.attrs.get('daskgd_live')}; "
            f"page errors {page.errors}; the fit warned {warned}"
        )


class PageGate(Callback):
    """Holds the fit after some iterations until the test has seen the page show them (each
    hold bounded): the page must grow while the fit runs, whatever the machine's load. A
    free-running fit was over between two polls of a loaded CI machine's page."""

    def __init__(self, at: tuple[int, ...], bound: float = 30.0):
        self.at, self.bound = set(at), bound
        self.waiting: int | None = None
        self.released = threading.Event()
        self.shown: list[tuple[int, int]] = []  # (iteration held at, iterations shown)

    def on_iteration_end(self, record):
        if record.iteration in self.at:
            self.released.clear()
            self.waiting = record.iteration
            self.released.wait(self.bound)  # unreleased: the assertion below names it
            self.waiting = None

    def release_if_shown(self, shown: int) -> None:
        if self.waiting is not None and shown >= self.waiting:
            self.shown.append((self.waiting, shown))
            self.released.set()


def test_live_page_follows_a_real_fit(browser, own_client):
    import daskgd
    from daskgd.data.synthetic import make_classification

    client = own_client
    X, y = make_classification(20_000, 20, chunks=2_500, random_state=0)
    live = LiveTrace(client)
    gate = PageGate(at=(4, 8))
    model = daskgd.LogisticRegression(solver="gd", max_iter=12, tol=0, client=client, verbose=False)
    fit = threading.Thread(
        target=lambda: model.fit(X, y, callbacks=[live, gate]), name="fit", daemon=True
    )
    dashboard = serve(live, interval_ms=200)  # memory: from the LiveTrace's client
    try:
        page = _open(browser, dashboard.url)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fit.start()
                while fit.is_alive():
                    gate.release_if_shown(page.evaluate(LENGTH_JS, "daskgd-loss-data"))
                    page.wait_for_timeout(100)
                fit.join()
            warned = sorted({str(w.message)[:200] for w in caught})
            _wait_for_the_final_trace(page, model.trace_.sizes["iteration"], live, warned)
            # the page showed the 4th, then the 8th iteration while the fit was held there
            held = [at for at, _ in gate.shown]
            assert held == [4, 8] and all(n < 12 for _, n in gate.shown), gate.shown
            _assert_drawn(page)
            memory = page.evaluate(
                "Bokeh.documents[0].get_model_by_name('daskgd-workers-data').data.memory"
            )
            assert any(text != "unknown" for text in memory)
            assert page.errors == []
        finally:
            page.close()
    finally:
        dashboard.stop()
    trace = live.snapshot()
    assert "compute_seconds" in trace and trace.sizes["worker"] == len(client.ncores())


def test_notebook_view_updates_while_a_cell_blocks():
    """In a real kernel: widget messages flow while a cell runs (like a blocking fit)."""
    pytest.importorskip("jupyter_bokeh")
    manager = pytest.importorskip("jupyter_client.manager")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(TESTS.parent), str(TESTS), *filter(None, [env.get("PYTHONPATH")])]
    )
    kernel, kernel_client = manager.start_new_kernel(kernel_name="python3", env=env)
    try:

        def run(code: str) -> list[dict]:
            msg_id = kernel_client.execute(code)
            messages = []
            while True:
                message = kernel_client.get_iopub_msg(timeout=60)
                if message["msg_type"] == "comm_msg" or (
                    message["parent_header"].get("msg_id") == msg_id
                ):
                    messages.append(message)
                if (
                    message["parent_header"].get("msg_id") == msg_id
                    and message["msg_type"] == "status"
                    and message["content"]["execution_state"] == "idle"
                ):
                    return messages

        shown = run(
            "from synthetic_traces import make_trace\n"
            "from daskgd.viz.dashboard import notebook_view\n"
            "import time\n"
            "full, state = make_trace(100), {'n': 2}\n"
            "view = notebook_view(lambda: full.isel(iteration=slice(0, state['n'])),"
            " interval_ms=100)\n"
            "display(view)\n"
        )
        errors = [m["content"] for m in shown if m["msg_type"] == "error"]
        assert not errors, errors
        displays = [m["content"]["data"] for m in shown if m["msg_type"] == "display_data"]
        # BokehJS first, inline (no CDN: offline), then the widget that needs it.
        load = displays[0]["application/vnd.bokehjs_load.v0+json"]
        assert len(load) > 1_000_000 and "cdn.bokeh.org" not in load
        assert "application/vnd.jupyter.widget-view+json" in displays[1]
        blocked = run(
            "for _ in range(15):\n"
            "    state['n'] += 3\n"
            "    time.sleep(0.1)\n"
            "print(len(view.dashboard.sources['loss'].data['iteration']))\n"
        )
        patches = [
            m
            for m in blocked
            if m["msg_type"] == "comm_msg" and m["content"]["data"]["content"]["msg"] == "patch"
        ]
        assert len(patches) >= 3
        printed = "".join(m["content"]["text"] for m in blocked if m["msg_type"] == "stream")
        assert int(printed.split()[-1]) > 2
        run("view.stop()")
    finally:
        kernel_client.stop_channels()
        kernel.shutdown_kernel(now=True)


# ----------------------------------------------------------------------------------
# daskgd report
# ----------------------------------------------------------------------------------


def test_cli_report_writes_the_html_and_prints_the_summary(tmp_path, capsys):
    from daskgd.cli.app import main
    from daskgd.observe.trace import save_trace

    trace_path = save_trace(make_trace(10), tmp_path / "trace.nc")
    assert main(["report", str(trace_path), "-o", str(tmp_path / "out.html")]) == 0
    out = capsys.readouterr().out
    assert "where the time went" in out and WORKERS[2] in out
    assert (tmp_path / "out.html").read_text().lstrip().startswith("<!DOCTYPE html>")
    assert main(["report", str(trace_path)]) == 0
    assert (tmp_path / "trace.html").exists()


def _other_version(path: Path) -> Path:
    from daskgd.observe.trace import save_trace

    trace = make_trace(2)
    trace.attrs["daskgd_trace_version"] = 99
    return save_trace(trace, path)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing.nc", "does not exist"),
        (lambda tmp: (tmp / "text.nc").write_text("hello") and tmp / "text.nc", "not a daskgd"),
        (lambda tmp: _other_version(tmp / "v99.nc"), "version 99"),
    ],
    ids=["missing", "not-a-trace", "other-version"],
)
def test_cli_report_errors_are_one_line(tmp_path, capsys, make, message):
    from daskgd.cli.app import main

    path = make(tmp_path)
    assert main(["report", str(path), "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("daskgd: error:") and message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.html").exists()


def test_cli_report_into_a_missing_folder(tmp_path, capsys):
    from daskgd.cli.app import main
    from daskgd.observe.trace import save_trace

    trace_path = save_trace(make_trace(2), tmp_path / "trace.nc")
    assert main(["report", str(trace_path), "-o", str(tmp_path / "no" / "r.html")]) == 2
    assert "does not exist" in capsys.readouterr().err
