"""Memory and setup time of fits on the same data: no copy of X per fit.

On a LocalCluster of 2 workers x 1 thread, X (n x d float64, default 2,000,000 x 50:
800 MB, 400 MB per worker) is persisted by the user, then fitted (LinearRegression,
lbfgs, a few iterations) twice. Printed:

- peak worker memory during a fit / the worker's share of X: the largest rise of a
  worker's process memory (distributed's own SystemMonitor, sampled every 100 ms here)
  above its memory before X existed, divided by X.nbytes / n_workers (target <= 1.25;
  a fit that copies X holds it twice, ~2);
- setup time of the second fit on the same data / the first: the seconds from ``fit``
  to the first iteration (the fit's wall time minus the trace's last elapsed_seconds),
  the placement and checks (target: no copy, ratio well below 1);

for persisted input (used in place), and for a lazy dask array (placed once, the copy
reused), with the load average before and after. ``--quick`` uses 400,000 rows.

Run ``PYTHONPATH=. python benchmarks/bench_memory.py [--quick]`` from the repository root.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import dask
import dask.array as da
import distributed
import numpy as np

import daskgd
from daskgd.cluster.local import make_local_cluster
from daskgd.data import reuse

TARGET_MEMORY_RATIO = 1.25
SAMPLE_INTERVAL = "500ms"  # distributed's default: 100 ms slowed the workers


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=2_000_000)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="400,000 rows")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples = 400_000
    return args


def _memory(since=0.0, dask_worker=None):
    """This worker's process memory now and its largest sample taken after ``since``."""
    monitor = dask_worker.monitor
    times, values = list(monitor.quantities["time"]), list(monitor.quantities["memory"])
    recent = [value for moment, value in zip(times, values, strict=False) if moment >= since]
    return {"now": monitor.proc.memory_info().rss, "peak": max(recent, default=0)}


def fit_once(client, X, y):
    """(setup seconds, {worker: peak process memory during the fit})."""
    since = time.time()
    model = daskgd.LinearRegression(max_iter=5, client=client)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X, y)
    whole = time.perf_counter() - start
    setup = whole - float(model.trace_.elapsed_seconds.values[-1])
    time.sleep(0.6)  # one more monitor sample after the fit's end
    peaks = client.run(_memory, since)
    return setup, {worker: value["peak"] for worker, value in peaks.items()}


def scenario(client, label, X, y, baseline, share):
    first, first_peaks = fit_once(client, X, y)
    second, second_peaks = fit_once(client, X, y)
    peaks = {w: max(first_peaks[w], second_peaks[w]) for w in first_peaks}
    ratio = max((peaks[w] - baseline[w]) / share for w in peaks)
    print(
        f"  {label:32s} peak/share {ratio:5.2f} (target <= {TARGET_MEMORY_RATIO})   setup "
        f"first {first:6.3f} s, second {second:6.3f} s, ratio {second / first:5.2f}"
    )
    return ratio, second / first


def _trim(dask_worker=None):
    """Give freed heap pages back to the system (what the nanny's memory manager does)."""
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)


def run_scenario(args, label, persist):
    """A fresh cluster per scenario, so one's freed memory does not hide the other's."""
    config = {"distributed.admin.system-monitor.interval": SAMPLE_INTERVAL}
    with dask.config.set(config), make_local_cluster(args.workers) as cluster:
        with distributed.Client(cluster) as client:
            client.wait_for_workers(args.workers)
            # Warm up first: numba and its compiled kernels take ~100 MB of a worker's
            # memory, which is not the data's (1.7 shares of X at --quick otherwise).
            small = da.random.RandomState(1).normal(size=(4000, args.features), chunks=1000)
            fit_once(client, small, small[:, 0])
            reuse.CACHE.clear()
            del small
            client.run(_trim)
            idle = {w: v["now"] for w, v in client.run(_memory).items()}
            rows = -(-args.samples // (4 * args.workers))
            X = da.random.RandomState(0).normal(size=(args.samples, args.features), chunks=rows)
            y = X @ np.linspace(-1.0, 1.0, args.features)
            if persist:  # the user's persisted data, evenly placed (by daskgd's placement)
                placed = daskgd.data.distribute(X, y)
                X, y = placed.X, placed.y[:, 0]
                reuse.CACHE.clear()
                del placed
            client.run(_trim)
            result = scenario(client, label, X, y, idle, X.nbytes / args.workers)
            reuse.CACHE.clear()
            return result


def main(argv=None):
    args = parse_args(argv)
    print("daskgd benchmark: memory and setup of repeated fits on the same data")
    print(f"  load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    nbytes = args.samples * args.features * 8
    print(
        f"  X: {args.samples:,} x {args.features} float64, {nbytes / 1e6:,.0f} MB, "
        f"{4 * args.workers} chunks; share per worker {nbytes / args.workers / 1e6:,.0f} MB"
    )
    run_scenario(args, "persisted (used in place)", persist=True)
    run_scenario(args, "lazy dask array (copy reused)", persist=False)
    print(f"  load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
