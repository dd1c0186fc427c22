"""What the worker-resident runtime costs per iteration, against today's mapreduce graph.

The W3 problem: logistic regression, n=100,000 x d=20 float64 (``--samples``,
``--features``), ``--chunks-per-worker`` chunks per worker, a LocalCluster of 2 workers x
1 thread (``daskgd.cluster.make_local_cluster``). Rows, measured in one run, interleaved
round by round so that the drift of a busy machine hits them alike:

rpc round trip
    ``client.rpc(worker).daskgd_runs()``: a handler that does nothing (the floor).
direct evaluate
    :meth:`Runtime.evaluate`: w to both residents at once, partial sums back.
allreduce iteration (client-driven)
    :meth:`Runtime.call` of one iteration as the allreduce strategy runs it: local sums,
    ring all-reduce of the d+3 vector, a gradient step taken on every worker.
allreduce iteration (loop on the workers)
    One call running ``--loop`` such iterations on the workers, no client in between.
ring allreduce alone
    One all-reduce of a d+1 vector, timed on the workers inside a call.
mapreduce evaluate (baseline)
    ``MapReduce().session(...).evaluate(w)``: today's graph (broadcast, map_blocks,
    sum, compute), with its default cluster tuning.

"beyond compute" is wall minus the busiest worker's compute (as the residents measure
it: ``compute_seconds``), per sample; its median and 10th percentile are printed. The
mapreduce row has no such figure of its own; it uses the direct row's median busiest
compute (the same chunks and chunk function). Also printed: the
runtime's direct evaluate with distributed's batched streams shortened as mapreduce
does (``tune_for_iterations``; the runtime uses no batched stream, so it should not
matter), and what the timers and counters cost per request (the tracing overhead).

Run ``PYTHONPATH=. python benchmarks/bench_runtime.py`` from the repository root.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from distributed import Client

from daskgd.cluster.local import make_local_cluster
from daskgd.data import distribute
from daskgd.data.synthetic import make_classification
from daskgd.models.losses import Logistic
from daskgd.models.penalties import NoPenalty
from daskgd.runtime.handle import Runtime
from daskgd.runtime.measures import per_worker
from daskgd.runtime.messaging import Meter
from daskgd.runtime.tuning import tune_for_iterations
from daskgd.strategies.base import FitProblem
from daskgd.strategies.mapreduce import MapReduce

TARGETS_MS = {"direct evaluate": 3.0, "allreduce iteration (client-driven)": 4.0}
LEARNING_RATE = 1e-6


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--chunks-per-worker", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=40, help="per row and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--loop", type=int, default=40, help="iterations per worker loop")
    return parser.parse_args(argv)


# -- functions run on the residents ----------------------------------------------------------


def allreduce_step(resident, w, algorithm="ring"):
    """One iteration of the allreduce strategy: sums, ring total, the step on every worker."""
    total = resident.allreduce(resident.local_sums(w), "gradient", algorithm=algorithm)
    with resident.timing("compute"):
        w = w - LEARNING_RATE * total[1:-1]
    return w


def allreduce_loop(resident, w, iterations):
    """``iterations`` allreduce iterations on the workers; (w, seconds per iteration)."""
    start = time.perf_counter()
    for _ in range(iterations):
        total = resident.allreduce(resident.local_sums(w), "gradient")
        w = w - LEARNING_RATE * total[1:-1]
    return w, (time.perf_counter() - start) / iterations


def ring_only(resident, vector, repeats):
    """Seconds per ring all-reduce of ``vector``, timed on this worker."""
    resident.allreduce(vector, "warm")
    start = time.perf_counter()
    for index in range(repeats):
        resident.allreduce(vector, ("ring", index))
    return (time.perf_counter() - start) / repeats


# -- rows ----------------------------------------------------------------------------------


def busiest(measures):
    return max(values["compute_seconds"] for values in measures.values())


def row_rpc(runtime, iterations):
    address = runtime.workers[0]

    async def ping():
        await runtime.client.rpc(address).daskgd_runs()

    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        runtime.client.sync(ping)
        samples.append((time.perf_counter() - start, 0.0))
    return samples


def row_direct(runtime, w, iterations):
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        _, measures = runtime.evaluate(w)
        samples.append((time.perf_counter() - start, busiest(measures)))
    return samples


def row_allreduce(runtime, w, iterations, algorithm="ring"):
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        results = runtime.call(allreduce_step, w, algorithm)
        samples.append((time.perf_counter() - start, busiest(results.measures)))
    return samples


def row_loop(runtime, w, loop):
    start = time.perf_counter()
    results = runtime.call(allreduce_loop, w, loop)
    wall = (time.perf_counter() - start) / loop
    return [(wall, busiest(results.measures) / loop)]


def row_ring(runtime, size, iterations):
    results = runtime.call(ring_only, np.ones(size), iterations)
    return [(max(results.values()), 0.0)]


def row_mapreduce(session, w, iterations):
    return [(_timed(session.evaluate, w), np.nan) for _ in range(iterations)]


def _timed(function, *args):
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def tracing_cost(runtime, w, repeats=2000):
    """Seconds per request of the measuring itself: the worker's meter and the client's
    per-worker figures, timed here on a copy of a real reply."""
    _, measures = runtime.evaluate(w)
    replies = {a: ({"measures": dict(v)}, v["round_trip_seconds"]) for a, v in measures.items()}
    meter = Meter()
    start = time.perf_counter()
    for _ in range(repeats):
        meter.reset()
        for _ in range(6):  # the timer reads of one evaluate on a worker
            time.perf_counter()
        meter.compute_seconds += 1e-3
        meter.as_dict()
        per_worker(replies)
    return (time.perf_counter() - start) / repeats


# -- the run -------------------------------------------------------------------------------


def measure(client, data, args):
    w = np.zeros(args.features + 1)
    rows: dict[str, list] = {}

    def add(name, samples):
        rows.setdefault(name, []).extend(samples)

    with (
        Runtime(client, data, Logistic(), True) as runtime,
        MapReduce().session(FitProblem(data, Logistic(), True, NoPenalty())) as session,
    ):
        for function, arguments in ((runtime.evaluate, (w,)), (session.evaluate, (w,))):
            for _ in range(5):  # warm the connections and the graph template
                function(*arguments)
        for _ in range(args.rounds):
            add("rpc round trip", row_rpc(runtime, args.iterations))
            add("direct evaluate", row_direct(runtime, w, args.iterations))
            add("allreduce iteration (client-driven)",
                row_allreduce(runtime, w, args.iterations))  # fmt: skip
            add("  the same with algorithm='exchange'",
                row_allreduce(runtime, w, args.iterations, "exchange"))  # fmt: skip
            add("allreduce iteration (loop on the workers)", row_loop(runtime, w, args.loop))
            add("ring allreduce alone", row_ring(runtime, args.features + 1, args.iterations))
            add("mapreduce evaluate (baseline)", row_mapreduce(session, w, args.iterations))
        undo = tune_for_iterations(client)
        try:
            for _ in range(args.rounds):
                add("direct evaluate, batched streams shortened",
                    row_direct(runtime, w, args.iterations))  # fmt: skip
        finally:
            undo()
        tracing = tracing_cost(runtime, w)
    return rows, tracing


def report(rows, tracing):
    """Medians (and 10th percentiles: the path's cost when the machine let it run) of the
    per-sample wall, busiest compute and their difference."""
    compute = statistics.median(c for _, c in rows["direct evaluate"])
    baseline = statistics.median(wall for wall, _ in rows["mapreduce evaluate (baseline)"])
    print(f"{'row (ms)':44s} {'wall':>7s} {'compute':>8s} {'beyond':>7s} {'p10':>6s} "
          f"{'target':>7s} {'/ mapreduce':>11s}")  # fmt: skip
    for name, samples in rows.items():
        walls = np.array([wall for wall, _ in samples])
        busy = np.array([compute if np.isnan(c) else c for _, c in samples])
        beyond = walls - busy
        target = TARGETS_MS.get(name)
        target_text = f"<= {target:g}" if target else ""
        print(f"{name:44s} {np.median(walls) * 1e3:7.2f} {np.median(busy) * 1e3:8.2f} "
              f"{np.median(beyond) * 1e3:7.2f} {np.percentile(beyond, 10) * 1e3:6.2f} "
              f"{target_text:>7s} {np.median(walls) / baseline:11.3f}")  # fmt: skip
    direct = statistics.median(s[0] for s in rows["direct evaluate"])
    print(f"\ntracing: {tracing * 1e6:.1f} us per request = {100 * tracing / direct:.2f} % "
          "of a direct evaluate (target <= 5 %)")  # fmt: skip


def main(argv=None):
    args = parse_args(argv)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with make_local_cluster(2) as cluster, Client(cluster) as client:
        X, y = make_classification(args.samples, args.features, random_state=0)
        data = distribute(X, y, client, chunks_per_worker=args.chunks_per_worker)
        print(f"n={args.samples} d={args.features}, {data.n_chunks} chunks on 2 workers x 1 "
              f"thread; {args.rounds} rounds x {args.iterations} iterations per row")  # fmt: skip
        rows, tracing = measure(client, data, args)
    report(rows, tracing)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
