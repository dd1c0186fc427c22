"""The cluster a command runs on: ``--scheduler``'s, or an embedded LocalCluster.

Either way the cluster is checked for workers first (``--wait-for-workers``), and closed
afterwards within a bound, so a command that failed on an unresponsive scheduler exits
at once and leaves nothing running.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import Any

#: Seconds the clean-up after an error may take per client or cluster (a scheduler that
#: does not answer makes Client.close wait twice its connect timeout otherwise).
CLOSE_TIMEOUT_SECONDS = 5.0


@contextlib.contextmanager
def connected(args: argparse.Namespace) -> Iterator[Any]:
    """A client of ``--scheduler`` whose cluster has a worker, closed (bounded) after."""
    from daskgd.cluster.local import close_quietly, connect
    from daskgd.data.waits import running_workers, unanswered

    client = connect(args.scheduler, timeout_seconds=args.timeout)
    try:
        running_workers(
            client,
            what="connecting",
            timeout=args.timeout,
            wait_for_workers=args.wait_for_workers,
        )
        yield client
    finally:
        # A scheduler that left a request unanswered will not answer a goodbye either.
        bound = 0.5 if unanswered(client) else min(args.timeout, CLOSE_TIMEOUT_SECONDS)
        close_quietly(client, timeout_seconds=bound)


@contextlib.contextmanager
def client_for(args: argparse.Namespace) -> Iterator[Any]:
    from daskgd.cluster.local import close_quietly, make_local_cluster

    if getattr(args, "jobqueue", None) is not None:
        from daskgd.cli.cluster_options import jobqueue_client

        with jobqueue_client(args.jobqueue) as client:
            yield client
        return
    if args.scheduler:
        with connected(args) as client:
            yield client
        return
    from distributed import Client

    cluster = make_local_cluster(args.workers, host=args.host)
    client = None
    try:
        client = Client(cluster)
        print(f"LocalCluster: {args.workers} workers x 1 thread, dashboard {client.dashboard_link}")
        yield client
    finally:
        close_quietly(client, cluster, timeout_seconds=CLOSE_TIMEOUT_SECONDS)
