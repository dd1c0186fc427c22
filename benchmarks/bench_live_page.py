"""What a live dashboard page receives and how far it falls behind a fast fit.

A real trace (L2 logistic regression, solver gd, ``--iterations`` updates on a
LocalCluster of 2 workers x 1 thread, with the per-worker instrumentation) is recorded
once; a source then shows it growing by ``--rate`` iterations per second, as a live fit
would, to a page of ``daskgd.viz.dashboard.serve`` (``--interval`` ms) open in headless
Chromium. Two ways of updating the page alternate (the order flips every repetition):

replace
    every source whose data changed is set again, all of its rows (the baseline);
stream
    the rows a grown trace added are streamed and its changed old rows patched (what
    ``TraceDashboard`` does).

Printed per way (medians over repetitions): the kB per second the page received over
its websocket, how many iterations the page showed fewer than the source (sampled once
a second), and the share of the page's main thread spent in long tasks (> 50 ms, Long
Tasks API); then the ratios stream / replace.

Needs Chromium (``DASKGD_CHROMIUM`` or ``chromium`` on PATH) and playwright (the test
extra). Run ``PYTHONPATH=. python benchmarks/bench_live_page.py`` from the repository root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import threading
import time

from distributed import Client

from daskgd import LogisticRegression
from daskgd.cluster.local import make_local_cluster
from daskgd.data.synthetic import make_classification
from daskgd.viz import plots
from daskgd.viz.dashboard import serve

LONG_TASKS_JS = """() => { window.daskgdLong = 0; window.daskgdStart = performance.now();
  new PerformanceObserver(list => {
    for (const e of list.getEntries()) window.daskgdLong += e.duration;
  }).observe({entryTypes: ["longtask"]}); }"""
SHOWN_JS = "() => Bokeh.documents[0].get_model_by_name('daskgd-loss-data').data.iteration.length"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--rate", type=float, default=20.0, help="iterations per second")
    parser.add_argument("--interval", type=int, default=200, help="page update period, ms")
    parser.add_argument("--seconds", type=float, default=12.0, help="per measurement")
    parser.add_argument("--repetitions", type=int, default=3)
    return parser.parse_args(argv)


class Growing:
    """The recorded trace, ``rate`` more iterations of it every second from ``restart()``."""

    def __init__(self, trace, rate: float) -> None:
        self.trace, self.rate = trace, rate
        self._lock = threading.Lock()
        self.restart()

    def restart(self) -> None:
        with self._lock:
            self._start = time.monotonic()

    def count(self) -> int:
        with self._lock:
            grown = int((time.monotonic() - self._start) * self.rate)
        return min(3 + grown, self.trace.sizes["iteration"])

    def snapshot(self):
        return self.trace.isel(iteration=slice(0, self.count()))


def record_trace(iterations: int):
    with make_local_cluster(2, dashboard_address=None) as cluster, Client(cluster) as client:
        X, y = make_classification(100_000, 20, chunks=25_000, random_state=0)
        model = LogisticRegression(solver="gd", max_iter=iterations, tol=0, client=client)
        return model.fit(X, y).trace_


def measure(browser, growing: Growing, stream: bool, args) -> dict:
    plots.STREAM = stream
    live = serve(growing, interval_ms=args.interval)
    page = browser.new_page(viewport={"width": 1200, "height": 1100})
    received = [0]
    page.on(
        "websocket",
        lambda ws: ws.on(
            "framereceived", lambda payload: received.__setitem__(0, received[0] + len(payload))
        ),
    )
    try:
        page.goto(live.url)
        page.wait_for_function("window.Bokeh && Bokeh.documents.length > 0", timeout=30_000)
        page.wait_for_function("Bokeh.documents[0].is_idle", timeout=30_000)
        page.evaluate(LONG_TASKS_JS)
        growing.restart()
        received[0], start = 0, time.monotonic()
        lags = []
        while time.monotonic() - start < args.seconds:
            page.wait_for_timeout(1000)
            lags.append(growing.count() - page.evaluate(SHOWN_JS))
        seconds = time.monotonic() - start
        share = page.evaluate("() => window.daskgdLong / (performance.now() - window.daskgdStart)")
    finally:
        page.close()
        live.stop()
    return {"kB/s": received[0] / 1e3 / seconds, "lag": statistics.median(lags),
            "long tasks": share}  # fmt: skip


def main(argv=None) -> None:
    from playwright.sync_api import sync_playwright

    args = parse_args(argv)
    chromium = os.environ.get("DASKGD_CHROMIUM") or shutil.which("chromium")
    if not chromium:
        raise SystemExit("bench_live_page: no Chromium (set DASKGD_CHROMIUM or install chromium)")
    print(f"load average {os.getloadavg()[0]:.2f}; recording a {args.iterations}-iteration trace")
    growing = Growing(record_trace(args.iterations), args.rate)
    print(
        f"{args.rate:g} iterations/s, page updates every {args.interval} ms, "
        f"{args.seconds:g} s per measurement, {args.repetitions} repetitions"
    )
    results: dict[str, list[dict]] = {"replace": [], "stream": []}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking"])  # fmt: skip
        try:
            for rep in range(args.repetitions):
                order = ("replace", "stream") if rep % 2 == 0 else ("stream", "replace")
                for way in order:
                    results[way].append(measure(browser, growing, way == "stream", args))
        finally:
            browser.close()
            plots.STREAM = True
    medians = {way: {k: statistics.median(r[k] for r in rows) for k in rows[0]}
               for way, rows in results.items()}  # fmt: skip
    print(f"{'':>8} {'kB/s':>8} {'lag (iterations)':>17} {'long tasks':>11}")
    for way, m in medians.items():
        print(f"{way:>8} {m['kB/s']:8.1f} {m['lag']:17.0f} {m['long tasks']:11.0%}")
    r, s = medians["replace"], medians["stream"]
    print(
        f"stream / replace: kB/s {s['kB/s'] / r['kB/s']:.2f}, long tasks "
        f"{s['long tasks'] / r['long tasks']:.2f}, lag {s['lag']:.0f} vs {r['lag']:.0f} "
        "iterations"
    )


if __name__ == "__main__":
    main()
