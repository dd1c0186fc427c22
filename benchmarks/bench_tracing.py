"""What the per-worker instrumentation costs: iteration time with and without it.

L2 logistic regression, n=1,000,000 x d=100 float64 in 8 row chunks placed on a
LocalCluster of 2 workers x 1 thread, solver gd with a fixed step, ``--iterations``
updates per fit. Fits with and without :class:`daskgd.observe.instrument.Instrumentation`
alternate on the same placed data (the order flips every repetition, so drift of a
busy machine hits both alike); the figure is the median per-iteration wall time
(``wall_seconds`` of iterations 1..n) of each, and their ratio (target <= 1.05).

Also printed, because a busy machine makes iteration times noisier than the effect:
the parts of the overhead measured one by one. The scheduler plugin's hooks (timed in
place: a LocalCluster's scheduler runs in this process), one poll of the cluster
(plugin rows + transfer logs, about once a second from a background thread), the
collection at the end of the fit and building the per-worker Dataset.

Run ``PYTHONPATH=. python benchmarks/bench_tracing.py`` from the repository root.
"""

from __future__ import annotations

import argparse
import statistics
import time

from distributed import Client

from daskgd.cluster.local import make_local_cluster
from daskgd.data import distribute
from daskgd.data.synthetic import make_classification
from daskgd.engine.driver import Stopping
from daskgd.models.losses import Logistic
from daskgd.models.penalties import make_penalty
from daskgd.observe.instrument import EvaluationRecorder, Instrumentation
from daskgd.optim import get_optimizer
from daskgd.strategies import FitProblem, MapReduce

TARGET_RATIO = 1.05
REG_STRENGTH = 1e-4


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--repetitions", type=int, default=8)
    return parser.parse_args(argv)


def run_fit(data, learning_rate, iterations, callbacks):
    """One gd fit on the placed data; the records of the engine."""
    model = Logistic()
    problem = FitProblem(data, model, True, make_penalty("l2", REG_STRENGTH))
    result = MapReduce().run(
        problem,
        get_optimizer("gd", learning_rate=learning_rate),
        Stopping(max_iter=iterations, tol=0.0),
        callbacks,
    )
    return result.records


def median_iteration_seconds(records):
    return statistics.median(record.wall_seconds for record in records[1:])


HOOK_SECONDS: list[float] = []


def timed(method):
    """Wrap a plugin hook so that each call's duration lands in HOOK_SECONDS."""

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            HOOK_SECONDS.append(time.perf_counter() - start)

    return wrapper


EvaluationRecorder.update_graph = timed(EvaluationRecorder.update_graph)
EvaluationRecorder.transition = timed(EvaluationRecorder.transition)


class TimedInstrumentation(Instrumentation):
    """Instrumentation that also times its end-of-fit collection and its polls."""

    poll_seconds: list[float]

    def on_fit_start(self, info):
        self.poll_seconds = []
        super().on_fit_start(info)

    def _poll(self):
        start = time.perf_counter()
        super()._poll()
        self.poll_seconds.append(time.perf_counter() - start)

    def on_fit_end(self, result):
        start = time.perf_counter()
        super().on_fit_end(result)
        self.end_seconds = time.perf_counter() - start


def main(argv=None):
    args = parse_args(argv)
    cluster = make_local_cluster(2, threads_per_worker=1, dashboard_address=None)
    client = Client(cluster)
    rows = -(-args.samples // args.chunks)
    X, y = make_classification(args.samples, args.features, chunks=rows, random_state=0)
    data = distribute(X, y, client)
    # A safe fixed step: the Frobenius norm bounds the largest eigenvalue of X^T X / n.
    learning_rate = 1.0 / (0.25 * (data.squared_norm / data.n_samples + 1.0) + REG_STRENGTH)
    print(
        f"n={args.samples} d={args.features} chunks={data.n_chunks} placement="
        f"{[address.rsplit(':', 1)[-1] for address in data.placement]} "
        f"iterations={args.iterations} repetitions={args.repetitions}"
    )
    run_fit(data, learning_rate, 3, [])  # warm-up: imports, task durations, caches
    medians = {False: [], True: []}
    mean_seconds = {False: [], True: []}
    polls, ends, builds, hooks = [], [], [], []
    for repetition in range(args.repetitions):
        order = (False, True) if repetition % 2 == 0 else (True, False)
        for instrumented in order:
            instrumentation = TimedInstrumentation(client)
            callbacks = [instrumentation] if instrumented else []
            hooks_before = len(HOOK_SECONDS)
            records = run_fit(data, learning_rate, args.iterations, callbacks)
            if instrumented:
                hooks.append(sum(HOOK_SECONDS[hooks_before:]) / len(records))
            medians[instrumented].append(median_iteration_seconds(records))
            mean_seconds[instrumented] += [record.wall_seconds for record in records[1:]]
            if instrumented:
                polls += instrumentation.poll_seconds[:-1]  # the last one is the end's
                ends.append(instrumentation.end_seconds)
                start = time.perf_counter()
                workers = instrumentation.worker_dataset(records)
                builds.append(time.perf_counter() - start)
        off, on = medians[False][-1], medians[True][-1]
        print(f"repetition {repetition}: without {off * 1e3:7.1f} ms   with {on * 1e3:7.1f} ms")
    off, on = statistics.median(medians[False]), statistics.median(medians[True])
    paired = statistics.median(b / a for a, b in zip(medians[False], medians[True], strict=True))
    means = {key: statistics.mean(values) for key, values in mean_seconds.items()}
    print(f"median iteration without instrumentation: {off * 1e3:7.1f} ms")
    print(f"median iteration with instrumentation:    {on * 1e3:7.1f} ms")
    print(
        f"ratio with / without: {on / off:.3f} (median of paired ratios {paired:.3f}; "
        f"target <= {TARGET_RATIO})"
    )
    print(
        f"mean iteration: without {means[False] * 1e3:.1f} ms, with {means[True] * 1e3:.1f} "
        f"ms, ratio {means[True] / means[False]:.3f}"
    )
    if polls:
        print(
            f"one background poll: median {statistics.median(polls) * 1e3:.1f} ms "
            f"({len(polls)} polls, about one per second)"
        )
    print(f"scheduler plugin hooks: median {statistics.median(hooks) * 1e3:.2f} ms per iteration")
    print(
        f"end-of-fit collection: median {statistics.median(ends) * 1e3:.1f} ms; "
        f"building the Dataset: median {statistics.median(builds) * 1e3:.1f} ms"
    )
    print_where_the_time_goes(workers)
    client.close()
    cluster.close()


def print_where_the_time_goes(workers):
    """Medians over the iterations 1..n of the last instrumented fit."""
    updates = workers.isel(iteration=slice(1, None)).median("iteration")
    print("last instrumented fit, medians per iteration:")
    for address in updates["worker"].values:
        cell = updates.sel(worker=address)
        print(
            f"  {address}: compute {float(cell.compute_seconds) * 1e3:6.1f} ms, "
            f"communication {float(cell.communication_seconds) * 1e3:5.1f} ms, "
            f"wait {float(cell.wait_seconds) * 1e3:6.1f} ms, tasks {float(cell.n_tasks):.0f}, "
            f"received {float(cell.bytes_received):.0f} B"
        )
    print(
        f"  bytes: broadcast {float(updates.bytes_broadcast):.0f}, reduce "
        f"{float(updates.bytes_reduce):.0f}, total {float(updates.bytes_total):.0f}"
    )


if __name__ == "__main__":
    main()
