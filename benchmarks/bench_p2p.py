"""Peer to peer against a central node: busiest node's traffic, and rounds of communication.

Logistic regression (``--samples`` x ``--features`` float64, 2 chunks per worker) on a
LocalCluster of ``--workers`` worker processes x 1 thread (4 by default), all in one run:

gossip
    The busiest node's bytes per round (the most of any worker, median over the steps)
    for gossip on a ring, sent and sent + received, against the issue's target (sent <=
    2 x the gradient's n_params x 8 bytes: one model to each of 2 neighbours), and
    against the central node of a client-server round, the parameter server's figure:
    w out to m workers and m partial sums back (m x the gradient each way). That figure
    is computed from ``direct``'s measured bytes (``bytes_broadcast + bytes_reduce``: the
    client is its server), since the parameter server is built on another branch.
localsgd
    Rounds of communication until the loss is within ``--gap`` (1e-3) of the optimum
    (scikit-learn's lbfgs at tol 1e-12): synchronous gd (``direct``, one round per step)
    against local SGD with H = ``--local-steps`` (8), same fixed step. For local SGD the
    round counted is the first average whose (full-data) loss is within the gap: the
    model that then exists on every worker. Target: <= 1/4.

Ratios, not times, are the results (the machine is shared): the load average is printed
before and after. Run ``PYTHONPATH=. python benchmarks/bench_p2p.py [--parts gossip localsgd]``
from the repository root.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np

PARTS = ("gossip", "localsgd")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--samples", type=int, default=40_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20, help="gossip steps measured")
    parser.add_argument("--local-steps", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=2.0)
    parser.add_argument("--gap", type=float, default=1e-3)
    parser.add_argument("--max-iter", type=int, default=400)
    return parser.parse_args(argv)


def _fit(X, y, strategy, **options):
    import daskgd

    settings = {"solver": "gd", "tol": 0.0, **options}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", daskgd.ConvergenceWarning)
        return daskgd.LogisticRegression(strategy=strategy, **settings).fit(X, y)


def gossip_part(X, y, args) -> dict:
    from daskgd.strategies import get_strategy

    ring = _fit(X, y, get_strategy("gossip", topology="ring"), max_iter=args.steps,
                learning_rate=args.learning_rate).trace_  # fmt: skip
    steps = ring.isel(iteration=slice(1, None))
    sent = float(steps.bytes_sent.max("worker").median())
    both = float((steps.bytes_sent + steps.bytes_received).max("worker").median())
    gradient = (args.features + 1) * 8  # n_params float64 values
    central = _fit(X, y, "direct", max_iter=args.steps, learning_rate=args.learning_rate).trace_
    rounds = central.isel(iteration=slice(1, None))
    server_sent = float(rounds.bytes_broadcast.median())  # w to each of the m workers
    server = server_sent + float(rounds.bytes_reduce.median())  # and m partial sums back
    m = ring.sizes["worker"]
    print(f"gossip on a ring, m={m}, gradient = {gradient} bytes (n_params x 8):")
    print(f"  busiest node per round: sent {sent:.0f} bytes = {sent / gradient:.2f} x gradient "
          f"(target <= 2 x gradient: ratio {sent / (2 * gradient):.3f}); sent + received "
          f"{both:.0f}")  # fmt: skip
    print(f"  central node of a client-server round (direct's client, w to m workers and m "
          f"sums back): sent {server_sent:.0f} = {server_sent / gradient:.2f} x gradient, sent "
          f"+ received {server:.0f}")  # fmt: skip
    print(f"  gossip / server, sent: {sent / server_sent:.3f}; sent + received: "
          f"{both / server:.3f} (the server's grows with m, gossip's does not)")  # fmt: skip
    return {"sent": sent, "both": both, "server": server}


def localsgd_part(X, y, args) -> dict:
    from sklearn.linear_model import LogisticRegression

    from daskgd.strategies import get_strategy

    Xn, yn = X.compute(), y.compute()
    reference = LogisticRegression(tol=1e-12, max_iter=10_000).fit(Xn, yn)
    z = Xn @ reference.coef_.ravel() + reference.intercept_[0]
    optimum = np.mean(np.logaddexp(0, z) - yn * z) + 0.5 * np.sum(reference.coef_**2) / len(yn)
    options = {"max_iter": args.max_iter, "learning_rate": args.learning_rate}
    sync = _fit(X, y, "direct", **options).trace_
    within = np.flatnonzero(sync.loss.values - optimum <= args.gap)
    sync_rounds = int(sync.iteration.values[within[0]]) if within.size else None
    local = _fit(X, y, get_strategy("local-sgd", local_steps=args.local_steps), **options).trace_
    averaged = local.communicated.values & (local.loss.values - optimum <= args.gap)
    hits = np.flatnonzero(averaged)
    local_rounds = int(local.communication_rounds.values[hits[0]]) if hits.size else None
    print(f"optimum F* = {optimum:.8f} (scikit-learn lbfgs, tol 1e-12); gap {args.gap:g}")
    print(f"  synchronous gd (direct): {sync_rounds} rounds (= steps)")
    print(f"  local SGD H={args.local_steps}: {local_rounds} rounds "
          f"({local_rounds * args.local_steps if local_rounds else None} local steps)")  # fmt: skip
    if sync_rounds and local_rounds:
        print(f"  ratio local / synchronous = {local_rounds / sync_rounds:.3f} (target <= 0.25)")
    return {"sync_rounds": sync_rounds, "local_rounds": local_rounds}


def main(argv=None) -> None:
    from distributed import Client

    from daskgd.cluster.local import make_local_cluster
    from daskgd.data.synthetic import make_classification

    args = parse_args(argv)
    print(f"load average before: {os.getloadavg()}")
    start = time.perf_counter()
    cluster = make_local_cluster(args.workers, dashboard_address=None)  # 127.0.0.1 only
    with cluster, Client(cluster) as client:
        client.wait_for_workers(args.workers, timeout=120)
        chunk = -(-args.samples // (2 * args.workers))
        X, y = make_classification(args.samples, args.features, chunks=chunk, random_state=0)
        if "gossip" in args.parts:
            gossip_part(X, y, args)
        if "localsgd" in args.parts:
            localsgd_part(X, y, args)
    print(f"load average after: {os.getloadavg()}; {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
