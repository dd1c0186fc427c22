"""Cluster tuning during a fit is undone to the cluster's own settings afterwards."""

from __future__ import annotations

from daskgd.runtime.tuning import LOW_LATENCY_INTERVAL_SECONDS, tune_for_iterations


def _worker_interval(dask_worker=None):
    return dask_worker.batched_stream.interval


def _set_worker_interval(dask_worker=None, interval=0.0):
    dask_worker.batched_stream.interval = interval


def _scheduler_intervals(dask_scheduler=None):
    streams = {**dask_scheduler.stream_comms, **dask_scheduler.client_comms}
    return {str(name): stream.interval for name, stream in streams.items()}


def test_undo_restores_the_intervals_the_cluster_had(client):
    # A cluster configured with its own (non-default) intervals.
    first, second = sorted(client.nthreads())
    client.run(_set_worker_interval, interval=0.003, workers=[first])
    client.run(_set_worker_interval, interval=0.004, workers=[second])
    client.scheduler_comm.interval = 0.007
    scheduler_before = client.run_on_scheduler(_scheduler_intervals)
    try:
        undo = tune_for_iterations(client)
        assert set(client.run(_worker_interval).values()) == {LOW_LATENCY_INTERVAL_SECONDS}
        assert set(client.run_on_scheduler(_scheduler_intervals).values()) == {
            LOW_LATENCY_INTERVAL_SECONDS
        }
        undo()
        assert client.run(_worker_interval) == {first: 0.003, second: 0.004}
        assert client.scheduler_comm.interval == 0.007
        assert client.run_on_scheduler(_scheduler_intervals) == scheduler_before
    finally:
        client.run(_set_worker_interval, interval=0.002)
        client.scheduler_comm.interval = 0.01


def test_undo_after_a_worker_died_does_not_wait_for_it(client):
    """The undo skips a worker that left during the fit: a broadcast to its address
    would wait for distributed's connect timeout (30 s) before failing. (It did: every
    fit that lost a worker ended 30 s late.)"""
    import os
    import signal
    import time

    first, _ = sorted(client.nthreads())
    undo = tune_for_iterations(client)
    pid = client.run(os.getpid, workers=[first])[first]
    os.kill(pid, signal.SIGKILL)  # its nanny restarts it under another address
    deadline = time.monotonic() + 30
    while first in client.ncores() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first not in client.ncores()
    start = time.monotonic()
    undo()
    assert time.monotonic() - start < 10  # the connect timeout is 30 s
