"""Sparse L2 logistic regression: daskgd on CSR chunks against scikit-learn's lbfgs.

The problem: X a random CSR matrix, n=1,000,000 x d=100,000 with 0.01 % of its entries
stored (~10 per row, N(0, 1) values; ~120 MB), y drawn from the logistic model of a
coefficient vector with 1,000 nonzeros, objective mean-logloss + lambda/2 ||coef||^2
(intercept unpenalised; scikit-learn's C = 1 / (lambda n)). Both fit the same CSR matrix.

Printed: the time to a relative objective gap (default 1e-6; f* from a tight scipy
L-BFGS-B on the whole matrix) of

- daskgd ``LogisticRegression(solver="lbfgs")`` on a LocalCluster of 2 workers x 1
  thread: ``trace_`` elapsed seconds at the first iteration within the gap (the fit's
  own setup, the placement of the chunks, is printed apart), and the whole fit;
- scikit-learn ``LogisticRegression(solver="lbfgs")`` in this process: the fastest fit
  whose max_iter (found by bisection) reaches the gap;

and their ratio (daskgd / scikit-learn; below 1 means daskgd is faster), with the load
average, since the machine is shared. ``--quick`` runs n=100,000 x d=10,000 (same
density per row) in a minute.

Run ``PYTHONPATH=. python benchmarks/bench_sparse.py [--quick]`` from the repository root.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import time
import warnings

import distributed
import numpy as np
import scipy.optimize
import scipy.special

import daskgd
from daskgd.cluster.local import make_local_cluster
from daskgd.data.sparse import random_csr


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=100_000)
    parser.add_argument("--density", type=float, default=1e-4)
    parser.add_argument("--lam", type=float, default=1e-5, help="L2 strength lambda")
    parser.add_argument("--gap", type=float, default=1e-6, help="target relative gap")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-budget", type=float, default=900.0, help="seconds per fit")
    parser.add_argument(
        "--quick", action="store_true", help="n=100,000 x d=10,000 at 10 stored entries per row"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.features, args.density = 100_000, 10_000, 1e-3
    return args


def make_problem(n, d, density, seed):
    X = random_csr(n, d, density, random_state=seed)
    rng = np.random.default_rng(seed + 1)
    coef = np.zeros(d)
    support = rng.choice(d, size=min(d, 1000), replace=False)
    coef[support] = rng.standard_normal(len(support)) * 2.0
    y = (rng.random(n) < scipy.special.expit(X @ coef)).astype(np.int64)
    return X, y


class Objective:
    """F(w) = mean logloss + lam/2 ||coef||^2 on the CSR matrix, w = [coef, intercept]."""

    def __init__(self, X, y, lam):
        self.X, self.y, self.lam, self.n = X, y.astype(np.float64), lam, X.shape[0]

    def __call__(self, w):
        coef, intercept = w[:-1], w[-1]
        z = self.X @ coef + intercept
        loss = float(np.sum(np.logaddexp(0.0, z) - self.y * z)) / self.n
        residual = scipy.special.expit(z) - self.y
        grad = np.empty_like(w)
        grad[:-1] = self.X.T @ residual / self.n + self.lam * coef
        grad[-1] = residual.sum() / self.n
        return loss + 0.5 * self.lam * float(coef @ coef), grad

    def value(self, coef, intercept):
        return self(np.append(np.ravel(coef), intercept))[0]


def reference_minimum(objective, d):
    options = {"gtol": 1e-12, "ftol": 1e-16, "maxiter": 20_000, "maxcor": 20}
    result = scipy.optimize.minimize(
        objective, np.zeros(d + 1), jac=True, method="L-BFGS-B", options=options
    )
    return float(result.fun)


class _ReachedError(Exception):
    pass


class StopAtGap:
    """A daskgd callback: records the iterations, stops once the loss is within the gap."""

    def __init__(self, threshold, budget):
        self.threshold, self.budget, self.records = threshold, budget, []

    def on_fit_start(self, info):
        pass

    def on_iteration_end(self, record):
        self.records.append(record)
        if record.loss <= self.threshold or record.elapsed_seconds > self.budget:
            raise _ReachedError

    def on_fit_end(self, result):
        pass


def daskgd_time_to_gap(client, X, y, C, threshold, budget):
    stopper = StopAtGap(threshold, budget)
    model = daskgd.LogisticRegression(C=C, solver="lbfgs", tol=0, max_iter=100_000, client=client)
    start = time.perf_counter()
    with contextlib.suppress(_ReachedError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X, y, callbacks=[stopper])
    whole = time.perf_counter() - start
    reached = [r for r in stopper.records if r.loss <= threshold]
    return {
        "seconds": reached[0].elapsed_seconds if reached else math.nan,
        "whole": whole,
        "setup": whole - stopper.records[-1].elapsed_seconds,
        "iterations": (reached[0] if reached else stopper.records[-1]).iteration,
        "loss": (reached[0] if reached else stopper.records[-1]).loss,
    }


def sklearn_fit(X, y, C, max_iter, tol, objective):
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter, tol=tol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        model.fit(X, y)
        seconds = time.perf_counter() - start
    return seconds, objective.value(model.coef_, model.intercept_[0]), int(model.n_iter_[0])


def sklearn_time_to_gap(X, y, C, objective, threshold):
    """The fastest fit reaching the gap: bisection on max_iter with tol=0."""
    full = sklearn_fit(X, y, C, 20_000, 1e-14, objective)
    if full[1] > threshold:
        return {"seconds": math.nan, "iterations": full[2], "loss": full[1]}
    low, high, fits = 0, full[2], [full]
    while high - low > 1:
        middle = (low + high) // 2
        fits.append(sklearn_fit(X, y, C, middle, 0.0, objective))
        low, high = (low, middle) if fits[-1][1] <= threshold else (middle, high)
    fits.append(sklearn_fit(X, y, C, high, 0.0, objective))
    seconds, value, iterations = min(fit for fit in fits if fit[1] <= threshold)
    return {"seconds": seconds, "iterations": iterations, "loss": value}


def main(argv=None):
    args = parse_args(argv)
    n, d = args.samples, args.features
    C = 1.0 / (args.lam * n)
    print("daskgd benchmark: sparse L2 logistic regression (CSR chunks)")
    X, y = make_problem(n, d, args.density, args.seed)
    megabytes = (X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) / 1e6
    print(
        f"  n={n:,} d={d:,} density={args.density:g} (nnz={X.nnz:,}, {megabytes:,.0f} MB CSR), "
        f"lambda={args.lam:g} (C={C:g}), mean(y)={y.mean():.3f}, target gap {args.gap:g}"
    )
    print(f"  load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    objective = Objective(X, y, args.lam)
    f_star = reference_minimum(objective, d)
    threshold = f_star * (1 + args.gap) if f_star > 0 else f_star + args.gap * abs(f_star)
    print(f"  f* = {f_star:.12g} (scipy L-BFGS-B, gtol 1e-12)")
    sk = sklearn_time_to_gap(X, y, C, objective, threshold)
    with make_local_cluster(args.workers) as cluster, distributed.Client(cluster) as client:
        client.wait_for_workers(args.workers)
        ours = daskgd_time_to_gap(client, X, y, C, threshold, args.time_budget)
    print(
        f"  scikit-learn lbfgs (1 process)        : {sk['seconds']:8.2f} s to the gap "
        f"({sk['iterations']} iterations, gap {(sk['loss'] - f_star) / abs(f_star):.1e})"
    )
    print(
        f"  daskgd lbfgs ({args.workers} workers x 1 thread)   : {ours['seconds']:8.2f} s to the "
        f"gap ({ours['iterations']} iterations, gap {(ours['loss'] - f_star) / abs(f_star):.1e}); "
        f"setup (placement) {ours['setup']:.2f} s, whole fit {ours['whole']:.2f} s"
    )
    ratio = ours["seconds"] / sk["seconds"]
    whole_ratio = ours["whole"] / sk["seconds"]
    print(
        f"  ratio daskgd / scikit-learn, time to gap: {ratio:.2f} (with setup: {whole_ratio:.2f})"
    )
    print(f"  load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
