"""Connecting to a Dask cluster, or starting a local one."""

from __future__ import annotations

import logging
from typing import Any

import dask


def connect(address: str, *, timeout_seconds: float = 10.0) -> Any:
    """Connect a :class:`distributed.Client` to a running scheduler.

    Parameters
    ----------
    address : str
        Scheduler address such as ``"tcp://127.0.0.1:8786"`` or ``"127.0.0.1:8786"``.
    timeout_seconds : float, default=10.0
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
    dashboard_address: str | None = ":0",
    silence_logs: int = logging.WARNING,
) -> Any:
    """Start a :class:`distributed.LocalCluster` set up for gradient descent.

    Worker processes (one BLAS thread each, as ``distributed``'s nanny sets by default)
    and work stealing off, so chunk-gradient tasks stay where their chunk lives.
    ``dashboard_address=None``: no dashboard. ``silence_logs``: the level below which
    distributed's loggers stay quiet, here and in the worker processes (e.g.
    ``logging.ERROR`` where a worker is killed on purpose, as in a failure demo).
    """
    from distributed import LocalCluster

    if not isinstance(n_workers, int) or n_workers < 1:
        raise ValueError(f"n_workers must be a positive integer, got {n_workers!r}")
    if not isinstance(threads_per_worker, int) or threads_per_worker < 1:
        raise ValueError(
            f"threads_per_worker must be a positive integer, got {threads_per_worker!r}"
        )
    # Without a dashboard the scheduler still serves its HTTP routes (health, metrics),
    # by default on port 8787, with a warning when that is taken: a free loopback port.
    http = {} if dashboard_address is not None else {"dashboard_address": "127.0.0.1:0"}
    with dask.config.set({"distributed.scheduler.work-stealing": False}):
        return LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=dashboard_address,
            scheduler_kwargs=http,
            silence_logs=silence_logs,
        )
