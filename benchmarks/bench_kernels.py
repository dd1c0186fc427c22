"""Chunk kernels: numba's fused one-pass kernels against the numpy block loop, and float32 X.

One run prints, side by side:

(a) per 125k x 100 chunk, in this process with one BLAS thread, for float64 and float32 X,
    logistic, least squares and multinomial (3 classes): the numpy block loop of
    ``Model.loss_grad`` as it was before the kernels (a fresh float64 copy of every float32
    block), as it is now
    (``DASKGD_KERNELS=numpy``), the numba kernel, and numpy's plain two-pass gradient
    ``X.T @ link(X @ coef)`` in X's dtype, and a plain read of X (``X.sum()``, the floor of
    a one-pass kernel); wall and CPU milliseconds per chunk (medians
    over rounds, cycling over several chunks so that X streams from memory as on a
    worker) and their ratios to the two-pass float64 gradient measured in the same run;
(b) on a LocalCluster of 2 workers x 1 thread, n = 1e6 x d = 100 in 8 chunks, float64 and
    float32 (a persisted ``X.astype("float32")``): per configuration (before, numpy loop,
    kernels) the chunk function run on the placed chunks (ms and minor page faults per
    call, read on the workers) and a fixed-step ``LogisticRegression(solver="gd")``
    iteration (median of ``trace_.wall_seconds[1:]``) as a ratio to one numpy float64
    gradient of the whole array in this process with one BLAS thread.

The kernels are compiled (or loaded from numba's cache) before any timing: in this
process by ``kernels.warm_up()``, on the workers by ``client.run(kernels.warm_up)``.

Run ``PYTHONPATH=. python benchmarks/bench_kernels.py`` from the repository root
(``--help`` for sizes; ``--skip-cluster`` for part (a) only). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
import warnings

import dask.array as da
import distributed
import numpy as np
from threadpoolctl import threadpool_limits

from daskgd.cluster.local import make_local_cluster
from daskgd.data.synthetic import make_classification
from daskgd.estimators.linear import LogisticRegression
from daskgd.models import kernels, losses
from daskgd.models.losses import LeastSquares, Logistic, Multinomial

TARGET_FLOAT64_RATIO = 0.55
TARGET_FLOAT32_RATIO = 0.35
CONFIGURATIONS = ("before", "numpy", "kernels")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=125_000, help="rows per chunk")
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument(
        "--chunks", type=int, default=4, help="distinct chunks cycled over in part (a)"
    )
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds in part (a)")
    parser.add_argument("--samples", type=int, default=1_000_000, help="n of part (b)")
    parser.add_argument("--cluster-chunks", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster workers x 1 thread")
    parser.add_argument("--iterations", type=int, default=12, help="gd iterations per fit")
    parser.add_argument(
        "--fit-rounds", type=int, default=2, help="fits per configuration, interleaved"
    )
    parser.add_argument("--skip-cluster", action="store_true")
    return parser.parse_args(argv)


def load():
    return "load average " + " ".join(f"{value:.2f}" for value in os.getloadavg())


# ------------------------------------------------------------ the loop before kernels


def loss_grad_before(self, w, X, y, fit_intercept):
    """``Model.loss_grad`` as it was before the kernels, kept to measure against."""
    X = np.asarray(X)
    n_rows, n_features = X.shape
    if n_rows == 0:
        return 0.0, np.zeros(np.size(w), dtype=np.float64), 0
    coef, intercept = self._split(w, n_features, fit_intercept)
    y = self._targets(y, n_rows)
    loss_sum = 0.0
    grad_coef = np.zeros(coef.shape, dtype=np.float64)
    grad_intercept = np.zeros(self._n_outputs(), dtype=np.float64)
    for start in range(0, n_rows, losses.BLOCK_ROWS):
        stop = min(start + losses.BLOCK_ROWS, n_rows)
        block = np.require(X[start:stop], np.float64, ["C", "A"])
        z = block @ coef
        if intercept is not None:
            z += intercept
        block_loss, residual = self._link(z, y[start:stop])
        loss_sum += block_loss
        grad_coef += block.T @ residual
        grad_intercept += residual.sum(axis=0)
    return float(loss_sum), self._join(grad_coef, grad_intercept, fit_intercept), n_rows


def configure(name):
    """Select a configuration in this process; sent to the workers by ``Client.run``.

    "before" puts :func:`loss_grad_before` in place of ``Model.loss_grad``; "numpy" and
    "kernels" restore today's method with ``DASKGD_KERNELS`` set to numpy or numba.
    """
    from daskgd.models import losses as module

    original = module.__dict__.setdefault("_bench_loss_grad", module.Model.loss_grad)
    module.Model.loss_grad = loss_grad_before if name == "before" else original
    os.environ[kernels.ENVIRONMENT_VARIABLE] = "numba" if name == "kernels" else "numpy"


# ----------------------------------------------------------------- (a) in memory


def two_pass(model, X, y, coef, intercept):
    """numpy's plain gradient: X @ coef, the link, X.T @ residual, in X's dtype."""
    z = X @ coef + intercept
    _, residual = model._link(z.astype(np.float64), y)
    return X.T @ residual.astype(X.dtype)


def race(candidates, rounds):
    """Median (wall, CPU) seconds per call of each candidate, interleaved per round.

    The CPU time of this thread leaves out the time the OS gave to other processes,
    which on a shared machine can exceed the work itself; wall time is what a worker sees.
    """
    times = {name: ([], []) for name in candidates}
    for function in candidates.values():
        function()
    for _ in range(rounds):
        for name, function in candidates.items():
            wall, cpu = time.perf_counter(), time.thread_time()
            function()
            times[name][0].append(time.perf_counter() - wall)
            times[name][1].append(time.thread_time() - cpu)
    return {name: tuple(map(statistics.median, values)) for name, values in times.items()}


def chunk_candidates(model, chunks, y, w):
    n_rows, n_features = chunks[0].shape
    coef, intercept = model._split(w, n_features, True)
    coef = np.ascontiguousarray(coef, dtype=chunks[0].dtype)
    labels = model._targets(y, n_rows)

    def over_chunks(function):
        return lambda: [function(X) for X in chunks]

    def path(name):
        def run(X):
            configure(name)
            return model.loss_grad(w, X, y, True)

        return run

    return {
        "numpy loop before": over_chunks(path("before")),
        "numpy loop now": over_chunks(path("numpy")),
        "numba kernel": over_chunks(path("kernels")),
        "numpy two-pass": over_chunks(lambda X: two_pass(model, X, labels, coef, intercept)),
        "read X (X.sum())": over_chunks(np.sum),  # one pass over X: the memory floor
    }


def in_memory(args):
    print(f"\n(a) one chunk of {args.rows:,} x {args.features} in this process, one BLAS thread")
    print(f"    {load()}")
    rng = np.random.default_rng(0)
    chunks64 = [rng.standard_normal((args.rows, args.features)) for _ in range(args.chunks)]
    y = rng.integers(0, 3, args.rows).astype(np.float64)  # 0/1 are half the rows' labels
    results = {}
    with threadpool_limits(limits=1):
        for dtype in (np.float64, np.float32):
            chunks = [chunk.astype(dtype) for chunk in chunks64]
            for model in (Logistic(), LeastSquares(), Multinomial(3)):
                w = rng.standard_normal(model.n_params(args.features, True)) * 0.1
                targets = np.minimum(y, 1.0) if model.name == "logistic" else y
                timed = race(chunk_candidates(model, chunks, targets, w), args.rounds)
                for name, seconds in timed.items():
                    key = (model.name, np.dtype(dtype).name, name)
                    results[key] = tuple(value / len(chunks) for value in seconds)
            del chunks
    configure("kernels")
    print_in_memory(results)
    print(f"    {load()}")
    return results


def print_in_memory(results):
    """Wall and CPU milliseconds per chunk; ratios of each (wall / wall, CPU / CPU)."""
    print(
        f"    {'model':<14}{'X':<9}{'path':<20}{'wall ms':>8}{'cpu ms':>8}"
        f"{'/ two-pass f64':>16}{'/ loop now':>12}   (wall | cpu)"
    )
    for (model, dtype, name), (wall, cpu) in results.items():
        base_wall, base_cpu = results[(model, "float64", "numpy two-pass")]
        loop_wall, loop_cpu = results[(model, dtype, "numpy loop now")]
        print(
            f"    {model:<14}{dtype:<9}{name:<20}{wall * 1e3:>8.2f}{cpu * 1e3:>8.2f}"
            f"{wall / base_wall:>10.2f} |{cpu / base_cpu:>4.2f}"
            f"{wall / loop_wall:>7.2f} |{cpu / loop_cpu:>4.2f}"
        )


# ----------------------------------------------------------------- (b) on a cluster


def probe_chunk(X, y, w, name):
    """On a worker: the chunk function on a placed chunk, ms and minor page faults per call."""
    configure(name)
    model = Logistic()
    model.loss_grad(w, X, y, True)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for _ in range(2):
        model.loss_grad(w, X, y, True)
    seconds = (time.perf_counter() - start) / 2
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / 2
    return np.array([[seconds, faults]])


def placed_chunks(X, y, w, name):
    """Median ms and page faults per call of the chunk function over the placed chunks."""
    probes = da.map_blocks(probe_chunk, X, y, w, name, chunks=(1, 2), dtype=np.float64)
    values = probes.compute()
    return float(np.median(values[:, 0])), float(np.median(values[:, 1]))


def gd_iteration(client, X, y, C, step, iterations):
    """Median wall time of a fixed-step gd iteration (iteration 0 and 1 left out)."""
    model = LogisticRegression(
        solver="gd", learning_rate=step, max_iter=iterations, tol=0, C=C, client=client
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: max_iter is the plan
        model.fit(X, y)
    return float(np.median(model.trace_.wall_seconds.values[1:]))


def compare_configurations(client, X, y, w, C, step, args):
    """Rows (dtype, configuration, chunk seconds, faults, gd iteration seconds); the
    configurations take turns, ``args.fit_rounds`` fits each, medians reported."""
    chunks, walls = {}, {name: [] for name in CONFIGURATIONS}
    for name in CONFIGURATIONS:
        client.run(configure, name)
        chunks[name] = placed_chunks(X, y[:, None], np.append(w, 0.0), name)
    for _ in range(args.fit_rounds):
        for name in CONFIGURATIONS:
            client.run(configure, name)
            walls[name].append(gd_iteration(client, X, y, C, step, args.iterations))
    dtype = str(X.dtype)
    return [(dtype, name, *chunks[name], statistics.median(walls[name])) for name in walls]


def numpy_gradient(X, y, w, repeats=7):
    """Median seconds of X.T @ (sigmoid(X @ w) - y) on the whole array, one BLAS thread."""
    with threadpool_limits(limits=1):
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            z = X @ w
            X.T @ (0.5 * (1.0 + np.tanh(0.5 * z)) - y)
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def lipschitz(X, lam):
    """0.25 * top eigenvalue of [X, 1]^T [X, 1] / n + lam: gd's fixed step is its inverse."""
    gram = np.empty((X.shape[1] + 1,) * 2)
    gram[:-1, :-1] = X.T @ X
    gram[:-1, -1] = gram[-1, :-1] = X.sum(axis=0)
    gram[-1, -1] = X.shape[0]
    return 0.25 * float(np.linalg.eigvalsh(gram / X.shape[0])[-1]) + lam


def on_cluster(args, lam=1e-4):
    n, d = args.samples, args.features
    print(
        f"\n(b) LocalCluster {args.workers} workers x 1 thread, logistic n={n:,} d={d}, "
        f"{args.cluster_chunks} chunks, gd with a fixed step 1/L, {args.iterations} iterations"
    )
    with make_local_cluster(args.workers) as cluster, distributed.Client(cluster) as client:
        client.wait_for_workers(args.workers)
        warm = client.run(kernels.warm_up)
        seconds = ", ".join(f"{value:.2f} s" for value in warm.values())
        print(f"    kernels warmed up on the workers: {seconds}")
        X, y = make_classification(n, d, chunks=-(-n // args.cluster_chunks), random_state=0)
        X, y = client.persist([X, y.astype(np.float64)])
        parts = client.gather(client.compute(list(X.to_delayed().ravel())))
        Xn = np.concatenate(parts)
        yn = np.concatenate(client.gather(client.compute(list(y.to_delayed().ravel()))))
        del parts
        w = np.random.default_rng(1).standard_normal(d) * 0.01
        baseline = numpy_gradient(Xn, yn, w)
        step = 1.0 / lipschitz(Xn, lam)
        del Xn
        print(f"    numpy float64 gradient, whole array, one thread: {baseline * 1e3:.1f} ms")
        rows = []
        for dtype in ("float64", "float32"):
            X_dtype = client.persist(X.astype(dtype)) if dtype == "float32" else X
            distributed.wait(X_dtype)
            rows += compare_configurations(client, X_dtype, y, w, 1.0 / (lam * n), step, args)
            del X_dtype
        client.run(configure, "kernels")
    print_cluster(rows, baseline)
    print(f"    {load()}")
    return rows, baseline


def print_cluster(rows, baseline):
    print(
        f"    {'X':<9}{'path':<10}{'chunk ms':>9}{'faults/chunk':>14}"
        f"{'gd iteration ms':>17}{'/ numpy f64':>13}"
    )
    for dtype, name, chunk_seconds, faults, wall in rows:
        print(
            f"    {dtype:<9}{name:<10}{chunk_seconds * 1e3:>9.2f}{faults:>14,.0f}"
            f"{wall * 1e3:>17.1f}{wall / baseline:>13.2f}"
        )
    print(
        f"    targets: float64 kernels <= {TARGET_FLOAT64_RATIO} (with the runtime's overhead "
        f"work), float32 kernels <= {TARGET_FLOAT32_RATIO}"
    )


def main(argv=None):
    args = parse_args(argv)
    print("daskgd benchmark: chunk kernels")
    print(f"    numba available: {kernels.AVAILABLE}; {load()}")
    configure("kernels")
    print(f"    kernels warmed up here: {kernels.warm_up():.2f} s; cache: {kernels.cache_status()}")
    in_memory(args)
    if not args.skip_cluster:
        on_cluster(args)


if __name__ == "__main__":
    main()
