"""Connecting to a Dask cluster, or starting a local one."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import dask

from daskgd.data import waits

#: Where a cluster daskgd starts listens by default: this machine only. A Dask cluster
#: runs the code its clients send, so reaching it from the network is reaching a shell.
LOCALHOST = "127.0.0.1"


def connect(address: str, *, timeout_seconds: float = waits.DEFAULT_TIMEOUT_SECONDS) -> Any:
    """Connect a :class:`distributed.Client` to a running scheduler.

    Parameters
    ----------
    address : str
        Scheduler address such as ``"tcp://127.0.0.1:8786"`` or ``"127.0.0.1:8786"``.
    timeout_seconds : float, default=30.0
        How long to try before giving up.

    Raises
    ------
    ConnectionError
        When no scheduler answers at ``address`` within ``timeout_seconds``.
    """
    from distributed import Client

    if not isinstance(address, str) or not address.strip():
        raise ValueError(f"scheduler address must be a non-empty string, got {address!r}")
    try:
        return Client(address, timeout=f"{timeout_seconds}s")
    except (OSError, TimeoutError) as error:
        raise ConnectionError(
            f"cannot reach the Dask scheduler at {address!r} within {timeout_seconds:g} s: "
            f"{type(error).__name__}"
        ) from None


def make_local_cluster(
    n_workers: int = 2,
    *,
    threads_per_worker: int = 1,
    host: str = LOCALHOST,
    dashboard_address: str | None = ":0",
    silence_logs: int = logging.WARNING,
) -> Any:
    """Start a :class:`distributed.LocalCluster` set up for gradient descent.

    Worker processes (one BLAS thread each, as ``distributed``'s nanny sets by default)
    and work stealing off, so chunk-gradient tasks stay where their chunk lives.

    Parameters
    ----------
    n_workers, threads_per_worker : int
    host : str, default '127.0.0.1'
        Interface the scheduler, the workers and the Dask dashboard listen on: by
        default this machine only. '0.0.0.0' opens them to every network the machine is
        on (whoever reaches the scheduler can run code on the workers).
    dashboard_address : str or None, default ':0'
        Where the dashboard listens: ':PORT' on ``host`` (':0' a free port), or
        'HOST:PORT'; None serves no dashboard pages.
    silence_logs : int, default logging.WARNING
        The level below which distributed's loggers stay quiet, here and in the worker
        processes (e.g. ``logging.ERROR`` where a worker is killed on purpose).
    """
    from distributed import LocalCluster

    if not isinstance(n_workers, int) or n_workers < 1:
        raise ValueError(f"n_workers must be a positive integer, got {n_workers!r}")
    if not isinstance(threads_per_worker, int) or threads_per_worker < 1:
        raise ValueError(
            f"threads_per_worker must be a positive integer, got {threads_per_worker!r}"
        )
    if not isinstance(host, str) or not host.strip() or ":" in host:
        raise ValueError(f"host must be an interface address such as '127.0.0.1', got {host!r}")
    if dashboard_address is not None and dashboard_address.startswith(":"):
        # distributed binds a bare ':PORT' dashboard to every interface (seen: 0.0.0.0
        # while the printed link said 127.0.0.1), whatever ``host`` is.
        dashboard_address = f"{host}{dashboard_address}"
    # Without a dashboard the scheduler still serves its HTTP routes (health, metrics),
    # by default on port 8787, with a warning when that is taken: a free port on host.
    http = {} if dashboard_address is not None else {"dashboard_address": f"{host}:0"}
    with dask.config.set({"distributed.scheduler.work-stealing": False}):
        return LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            host=host,
            dashboard_address=dashboard_address,
            scheduler_kwargs=http,
            silence_logs=silence_logs,
        )


def close_quietly(*closeable: Any, timeout_seconds: float = 5.0) -> None:
    """Close clients and clusters, each bounded by ``timeout_seconds``, ignoring errors.

    ``Client.close`` waits up to twice its connect timeout for a scheduler that does not
    answer; after a failure the process must exit now, not then.
    """
    for thing in closeable:
        if thing is None:
            continue
        with contextlib.suppress(Exception):
            thing.close(timeout=timeout_seconds)
