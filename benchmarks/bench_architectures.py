"""The lecture's architectures side by side under a straggler (issue 8).

Parts (``--parts``; each an independent function taking the shared cluster):

ps  Parameter server on 4 worker processes x 1 thread, logistic regression, one worker
    slowed 3x. The synchronous server (staleness=0) runs T rounds of gd with a fixed
    step; SSP (staleness=2) and the asynchronous server (staleness=None) run with the
    same step until they reach the loss synchronous reached at round T; for each step
    in ``--step-fractions`` (of 1/L: 0.5/L and 1/L by default) and each stale step rule
    in ``--step-rules`` (:func:`daskgd.runtime.server.stale_step`). Printed: each one's
    wall time to that loss (the server's clock, ``trace_.elapsed_seconds``), its ratio
    to synchronous (target <= 0.8 for both), updates used, the loss's rises along the
    run (updates whose full-data loss is above the best before it, and the largest
    rise), and the staleness of the applied pushes (mean, median, max, per worker).
    Every run starts from w = 0 on the same placed data.

    Emulated compute (``--chunk-compute``, default 20 ms per chunk; ``0``: real compute
    only, on ``--samples 400000`` by default). 4 worker processes share this machine's
    2 cores: in synchronous rounds the fast workers sit idle while the straggler runs,
    under SSP and async they compute all the time and compete for the cores (a fast
    push then costs more: 1.5-2x reported on a loaded machine), which measures the
    machine, not the algorithm.
    With ``Emulation(chunk_compute_seconds=c)`` every chunk's gradient is computed for
    real (on small data: 40,000 rows by default) and then the worker sleeps until c has
    passed (the straggler 3 x c): a sleeping worker holds no core. Printed per worker:
    what a push's compute really cost (compute minus the emulated sleep) and the sleep.

ps-live  The overhead of the live records' polls (:mod:`daskgd.strategies.pslive`):
    the same parameter-server fits (staleness 0, 2, None; under the ps part's emulated
    compute and straggler, then with real compute only, where the server's event loop
    is busiest) with a LiveTrace callback (polled every 0.2 s) and without callbacks
    (no poll), interleaved; printed: the server's seconds per update and the ratio.

Run ``PYTHONPATH=. python benchmarks/bench_architectures.py --parts ps`` from the
repository root; the load average is printed before and after (4 processes on 2 cores:
with real compute only the ratios move with the load).
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
from daskgd.runtime.server import STEP_RULES
from daskgd.strategies import get_strategy

TARGET_PS = 0.8


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", default=["ps"], choices=sorted(PARTS))
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--samples",
        type=int,
        default=None,
        help="rows (default 40,000 with emulated compute, else 400,000)",
    )
    parser.add_argument(
        "--chunk-compute",
        type=float,
        default=0.02,
        metavar="SECONDS",
        help="emulated compute per chunk (Emulation.chunk_compute_seconds); 0: real compute only",
    )
    parser.add_argument(
        "--step-rules",
        nargs="+",
        default=list(STEP_RULES),
        choices=STEP_RULES,
        help="stale servers' step rules to compare",
    )
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
    args = parser.parse_args(argv)
    if args.samples is None:
        args.samples = 40_000 if args.chunk_compute > 0 else 400_000
    return args


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


def rises(trace) -> str:
    """Updates whose full-data loss is above the best one before it, and the largest rise."""
    loss = trace.loss.dropna("iteration").values
    best = np.minimum.accumulate(loss)
    above = loss[1:] - best[:-1]
    count = int((above > 0).sum())
    return f"{count}/{len(above)} (+{max(float(above.max()), 0.0):.1e})"


def real_compute(trace) -> str:
    """Per worker, the median push's compute minus the emulated sleep, and the sleep (ms)."""
    applied = trace.compute_seconds.where(~np.isnan(trace.staleness))
    emulated = trace.get("emulated_seconds", 0.0 * applied).where(~np.isnan(trace.staleness))
    cells = []
    for worker in trace.worker.values:
        real = float((applied - emulated).sel(worker=worker).median()) * 1e3
        slept = float(emulated.sel(worker=worker).median()) * 1e3
        cells.append(f"{real:.1f}+{slept:.0f}")
    return "[" + ", ".join(cells) + "] ms real+slept"


def part_ps(client, args):
    X, y = make_classification(args.samples, args.features,
                               chunks=-(-args.samples // args.chunks), random_state=0)  # fmt: skip
    # 1/L, L = max eigenvalue of [X 1]'[X 1] / (4 n): logistic's bound, gd's classic step.
    Xa = np.hstack([np.asarray(X), np.ones((X.shape[0], 1))])
    inverse_l = 1 / float(np.linalg.eigvalsh(Xa.T @ Xa / (4 * len(Xa)))[-1])
    # The chunk kernel is compiled (numba) on each worker's first call: seconds, not timed.
    fit(X, y, client, get_strategy("parameter-server", timeout=300.0), 1, inverse_l)
    compute = (f"emulated compute {args.chunk_compute * 1e3:g} ms per chunk"
               if args.chunk_compute > 0 else "real compute only")  # fmt: skip
    print(
        f"\n[ps] {args.workers} workers, logistic n={args.samples:,} d={args.features}, "
        f"{args.chunks} chunks, worker 1 slowed {args.slowdown:g}x, {compute}, "
        f"1/L = {inverse_l:.3g}"
    )
    for fraction in args.step_fractions:
        ps_at_step(client, args, X, y, fraction * inverse_l, fraction)


def ps_at_step(client, args, X, y, lr, fraction):
    emulation = Emulation(stragglers={1: args.slowdown}, chunk_compute_seconds=args.chunk_compute)
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
    print(f"  {'':<13}compute per round {real_compute(trace)}")
    print(f"  {'strategy':<26}{'seconds':>9}{'ratio':>8}{'updates':>9}  {'rises':<18}staleness")
    for rule in args.step_rules:
        for label, staleness in (("SSP s=2", 2), ("async", None)):
            strategy = get_strategy("parameter-server", staleness=staleness,
                                    emulation=emulation, step_rule=rule)  # fmt: skip
            model, seconds = fit(X, y, client, strategy, rounds * 12, lr)
            report(model.trace_, f"{label} {rule}", target, base, rounds * 12)


def report(trace, label, target, base, max_updates):
    reached, updates = time_to(trace, target)
    if reached is None:
        final = float(trace.loss.values[-1])
        print(f"  {label:<26} did not reach it in {max_updates} updates (loss {final:.8f}); "
              f"rises {rises(trace)}")  # fmt: skip
        return
    ratio = reached / base
    verdict = "ok" if ratio <= TARGET_PS else f"above the target {TARGET_PS}"
    print(f"  {label:<26}{reached:>9.3f}{ratio:>8.2f}{updates:>9}  {rises(trace):<18}"
          f"{staleness_summary(trace)}  [{verdict}]")  # fmt: skip
    print(f"  {'':<26}compute per push {real_compute(trace)}")


def part_ps_live(client, args):
    """The live records' polls (0.2 s) against none: the same fits with a LiveTrace
    callback (polled) and without callbacks (no poll), interleaved, 3 of each; the
    server's seconds per update (its clock) and their ratio, medians."""
    X, y = make_classification(args.samples, args.features,
                               chunks=-(-args.samples // args.chunks), random_state=0)  # fmt: skip
    fit(X, y, client, get_strategy("parameter-server", timeout=300.0), 1, 1.0)  # compile
    print(f"\n[ps-live] {args.workers} workers, n={args.samples:,}, {args.chunks} chunks, "
          f"gd step 1, load {load()}")  # fmt: skip
    straggler = Emulation(stragglers={1: args.slowdown}, chunk_compute_seconds=0.02)
    conditions = (("emulated 20 ms/chunk, worker 1 slowed 3x", straggler),
                  ("real compute only", None))  # fmt: skip
    long = args.rounds * 12
    for label, emulation in conditions:
        for staleness, updates in ((0, args.rounds), (2, long), (None, long)):
            per_update: dict[str, list] = {"polled": [], "none": []}
            for _ in range(3):
                for kind, times in per_update.items():
                    times.append(_seconds_per_update(X, y, client, staleness, emulation,
                                                     updates, kind == "polled"))  # fmt: skip
            polled, none = (float(np.median(per_update[k])) for k in ("polled", "none"))
            print(
                f"  {label}, staleness={staleness}: {updates} updates, {polled * 1e3:.2f} ms "
                f"per update polled, {none * 1e3:.2f} without: ratio {polled / none:.3f}"
            )
    print(f"  load {load()}")


def _seconds_per_update(X, y, client, staleness, emulation, updates, polled):
    from daskgd.viz.live import LiveTrace

    strategy = get_strategy("parameter-server", staleness=staleness, emulation=emulation)
    model = LogisticRegression(solver="gd", learning_rate=1.0, max_iter=updates, tol=0,
                               client=client, strategy=strategy)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X, y, callbacks=[LiveTrace()] if polled else [])
    return float(model.trace_.elapsed_seconds.values[-1]) / updates


PARTS = {"ps": part_ps, "ps-live": part_ps_live}


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
