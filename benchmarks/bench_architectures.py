"""The lecture's architectures side by side under a straggler (issue 8).

Parts (``--parts``; each an independent function taking the shared cluster):

ps  Parameter server on 4 worker processes x 1 thread, logistic regression, one worker
    slowed 3x (emulated: it sleeps twice its measured compute). The synchronous server
    (staleness=0) runs T rounds of gd with a fixed step; SSP (staleness=2) and the
    asynchronous server (staleness=None) run with the same step until they reach the
    loss synchronous reached at round T; for each step in ``--step-fractions`` (of 1/L:
    0.5/L and 1/L by default; the stale servers divide it by 1 + staleness). Printed:
    each one's wall time to that loss (the server's clock, ``trace_.elapsed_seconds``),
    its ratio to synchronous (target <= 0.8 for both), updates used, and the staleness
    of the applied pushes (mean, median, max, per worker). Every run starts from w = 0
    on the same placed data.

Run ``PYTHONPATH=. python benchmarks/bench_architectures.py --parts ps`` from the
repository root; the load average is printed before and after: on a loaded machine the
fast workers compete for the cores and the ratios move (4 processes on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np

from daskgd.cluster.local import make_local_cluster
from daskgd.data.synthetic import make_classification
from daskgd.estimators.linear import LogisticRegression
from daskgd.runtime.emulation import Emulation
from daskgd.strategies import get_strategy

TARGET_PS = 0.8


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", default=["ps"], choices=sorted(PARTS))
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--samples", type=int, default=400_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=30, help="T: synchronous rounds")
    parser.add_argument(
        "--step-fractions",
        type=float,
        nargs="+",
        default=[0.5, 1.0],
        help="gd steps to run, as fractions of 1/L (L: logistic's bound)",
    )
    parser.add_argument("--slowdown", type=float, default=3.0)
    return parser.parse_args(argv)


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def fit(X, y, client, strategy, max_iter, learning_rate):
    model = LogisticRegression(solver="gd", learning_rate=learning_rate, max_iter=max_iter,
                               tol=0, client=client, strategy=strategy)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        model.fit(X, y)
    return model, time.perf_counter() - start


def time_to(trace, loss):
    """Server time and updates until the trace's loss is <= ``loss`` (None: never)."""
    reached = np.flatnonzero(trace.loss.values <= loss)
    if not reached.size:
        return None, None
    first = int(reached[0])
    return float(trace.elapsed_seconds.values[first]), int(trace.iteration.values[first])


def staleness_summary(trace) -> str:
    values = trace.staleness.values
    applied = values[~np.isnan(values)]
    per_worker = [f"{np.nanmean(column):.1f}" if np.isfinite(column).any() else "-"
                  for column in values.T]  # fmt: skip
    return (f"mean {applied.mean():.2f} median {np.median(applied):.0f} max {applied.max():.0f}"
            f"; per worker mean [{', '.join(per_worker)}]")  # fmt: skip


def part_ps(client, args):
    X, y = make_classification(args.samples, args.features,
                               chunks=-(-args.samples // args.chunks), random_state=0)  # fmt: skip
    # 1/L, L = max eigenvalue of [X 1]'[X 1] / (4 n): logistic's bound, gd's classic step.
    Xa = np.hstack([np.asarray(X), np.ones((X.shape[0], 1))])
    inverse_l = 1 / float(np.linalg.eigvalsh(Xa.T @ Xa / (4 * len(Xa)))[-1])
    # The chunk kernel is compiled (numba) on each worker's first call: seconds, not timed.
    fit(X, y, client, get_strategy("parameter-server", timeout=300.0), 1, inverse_l)
    print(
        f"\n[ps] {args.workers} workers, logistic n={args.samples:,} d={args.features}, "
        f"{args.chunks} chunks, worker 1 slowed {args.slowdown:g}x, 1/L = {inverse_l:.3g}"
    )
    for fraction in args.step_fractions:
        ps_at_step(client, args, X, y, fraction * inverse_l, fraction)


def ps_at_step(client, args, X, y, lr, fraction):
    emulation = Emulation(stragglers={1: args.slowdown})
    rounds = args.rounds
    sync = get_strategy("parameter-server", staleness=0, emulation=emulation)
    model, seconds = fit(X, y, client, sync, rounds, lr)
    trace = model.trace_
    target = float(trace.loss.values[-1])
    base = float(trace.elapsed_seconds.values[-1])
    busiest = trace.compute_seconds.isel(iteration=slice(1, None)).max("worker")
    print(f"  gd step {lr:.3g} ({fraction:g}/L), load {load()}")
    print(f"  synchronous: {rounds} rounds to loss {target:.8f} in {base:.3f} s "
          f"({base / rounds * 1e3:.1f} ms/round, busiest compute "
          f"{float(busiest.median()) * 1e3:.1f} ms; fit {seconds:.2f} s)")  # fmt: skip
    print(f"  {'strategy':<18}{'seconds':>9}{'ratio':>8}{'updates':>9}  staleness")
    for label, staleness in (("SSP staleness=2", 2), ("async", None)):
        strategy = get_strategy("parameter-server", staleness=staleness, emulation=emulation)
        model, seconds = fit(X, y, client, strategy, rounds * 12, lr)
        reached, updates = time_to(model.trace_, target)
        if reached is None:
            final = float(model.trace_.loss.values[-1])
            print(f"  {label:<18} did not reach it in {rounds * 12} updates (loss {final:.8f})")
            continue
        ratio = reached / base
        verdict = "ok" if ratio <= TARGET_PS else f"above the target {TARGET_PS}"
        print(f"  {label:<18}{reached:>9.3f}{ratio:>8.2f}{updates:>9}  "
              f"{staleness_summary(model.trace_)}  [{verdict}]")  # fmt: skip


PARTS = {"ps": part_ps}


def main(argv=None):
    args = parse_args(argv)
    print(f"load average before: {load()}")
    cluster = make_local_cluster(args.workers, threads_per_worker=1)
    from distributed import Client

    with cluster, Client(cluster) as client:
        client.wait_for_workers(args.workers, timeout=60)
        for part in args.parts:
            PARTS[part](client, args)
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
