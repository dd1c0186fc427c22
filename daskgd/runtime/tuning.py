"""Preparing a running Dask cluster for short, repeated iterations.

A gradient-descent iteration is a handful of tiny tasks repeated hundreds of times, so
fixed per-round costs of ``distributed`` dominate once the data is in memory. Two of
them are settings, not laws:

- ``distributed`` batches its control messages (client -> scheduler every 10 ms,
  scheduler -> worker every 5 ms, worker -> scheduler every 2 ms). A message sent
  within that interval of the previous one waits for the rest of it: measured here,
  one ``submit(...).result()`` took ~11 ms with the defaults and ~4 ms with 0.5 ms.
- Work stealing may move a chunk-gradient task away from the worker holding its
  100 MB chunk, which then crosses the network (measured: one iteration 160 ms
  instead of 60 ms).

:func:`tune_for_iterations` changes both on a running cluster and returns a function
that restores them, so a fit can tune the cluster for its duration only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from daskgd.data import waits

#: Interval (seconds) of the batched control streams while a fit runs.
LOW_LATENCY_INTERVAL_SECONDS = 0.0005


def _set_scheduler_intervals(dask_scheduler: Any = None, interval: float = 0.0) -> dict:
    """Set every batched stream of the scheduler to ``interval``; return the old ones."""
    old: dict = {}
    for kind in ("stream_comms", "client_comms"):
        for name, stream in getattr(dask_scheduler, kind).items():
            old[f"{kind}/{name}"] = stream.interval
            stream.interval = interval
    return old


def _restore_scheduler_intervals(dask_scheduler: Any = None, old: dict | None = None) -> None:
    """Put back the intervals ``_set_scheduler_intervals`` returned (streams still open)."""
    for key, interval in (old or {}).items():
        kind, _, name = key.partition("/")
        stream = getattr(dask_scheduler, kind).get(name)
        if stream is not None:
            stream.interval = interval


def _set_worker_interval(dask_worker: Any = None, interval: float = 0.0) -> float:
    old = dask_worker.batched_stream.interval
    dask_worker.batched_stream.interval = interval
    return old


def _pause_stealing(dask_scheduler: Any = None, pause: bool = True) -> bool:
    # WorkStealing keeps its periodic callback in the scheduler's ``periodic_callbacks``
    # under "stealing"; stopping that callback (not removing the plugin) stops new
    # steals and is reversible.
    callback = dask_scheduler.periodic_callbacks.get("stealing")
    if callback is None:
        return False
    was_running = callback.is_running()
    if pause and was_running:
        callback.stop()
    elif not pause:
        callback.start()
    return was_running


def tune_for_iterations(
    client: Any,
    *,
    interval: float = LOW_LATENCY_INTERVAL_SECONDS,
    timeout: float = waits.DEFAULT_TIMEOUT_SECONDS,
) -> Callable:
    """Shorten the batching intervals and pause work stealing; return an undo function.

    New workers joining later keep their own; the undo function puts back the values
    the client, each of the scheduler's streams and each worker had before (whatever
    the cluster was configured with, not distributed's defaults). Each request waits at
    most ``timeout`` seconds (:mod:`daskgd.data.waits`); a failed one is skipped, since
    the fit works (more slowly) without it.
    """

    def on_scheduler(function: Callable, **kwargs: Any) -> Any:
        return waits.call(
            client, client.run_on_scheduler, function, asynchronous=True,
            what="tuning the cluster", timeout=timeout, **kwargs,
        )  # fmt: skip

    def on_workers(**kwargs: Any) -> Any:
        return waits.run_on_workers(
            client, _set_worker_interval, what="tuning the workers", timeout=timeout, **kwargs
        )

    client_stream = client.scheduler_comm
    old_client_interval = client_stream.interval
    client_stream.interval = interval
    old_scheduler: dict = {}
    old_workers: dict = {}
    with contextlib.suppress(Exception):
        old_scheduler = on_scheduler(_set_scheduler_intervals, interval=interval)
    with contextlib.suppress(Exception):
        old_workers = on_workers(interval=interval)
    stealing_was_running = False
    with contextlib.suppress(Exception):
        stealing_was_running = on_scheduler(_pause_stealing, pause=True)

    def undo() -> None:
        client_stream.interval = old_client_interval
        with contextlib.suppress(Exception):
            on_scheduler(_restore_scheduler_intervals, old=old_scheduler)
        # Only the workers still there: a broadcast to one that died during the fit
        # would wait for distributed's connect timeout (30 s) before failing.
        live: set = set()
        with contextlib.suppress(Exception):
            live = set(waits.running_workers(client, what="tuning the workers", timeout=timeout))
        for old in set(old_workers.values()):
            workers = [a for a, value in old_workers.items() if value == old and a in live]
            if not workers:
                continue
            with contextlib.suppress(Exception):
                on_workers(interval=old, workers=workers)
        if stealing_was_running:
            with contextlib.suppress(Exception):
                on_scheduler(_pause_stealing, pause=False)

    return undo


@contextlib.contextmanager
def amm_paused(client: Any, *, timeout: float = waits.DEFAULT_TIMEOUT_SECONDS) -> Iterator[None]:
    """Stop the Active Memory Manager for the duration of a fit.

    ``scatter(w, broadcast=True)`` puts a copy of w on every worker; the AMM's
    ReduceReplicas policy may drop those copies before the chunk tasks that read them
    arrive, and each worker would then fetch w again (DESIGN: keep them safe). Each
    request waits at most ``timeout`` seconds.
    """

    def amm(method: str) -> Any:
        return waits.call(
            client, client.scheduler.amm_handler, method=method,
            what="pausing the active memory manager", timeout=timeout,
        )  # fmt: skip

    was_running = False
    with contextlib.suppress(Exception):
        was_running = bool(amm("running"))
        if was_running:
            amm("stop")
    try:
        yield
    finally:
        if was_running:
            with contextlib.suppress(Exception):
                amm("start")
