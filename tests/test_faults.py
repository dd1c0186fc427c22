"""A worker killed during a fit: its chunks are recomputed from lineage, w is re-sent,
and the fit returns the same coefficients as an undisturbed one."""

from __future__ import annotations

import os
import signal
import time
import warnings

import numpy as np
import pytest

import daskgd
from daskgd.data.synthetic import make_classification
from daskgd.engine.driver import Callback

KILL_AT_ITERATION = 4


class KillWorkerAt(Callback):
    """Kills one worker process after a given iteration (its nanny restarts it)."""

    def __init__(self, client, iteration):
        self.client = client
        self.iteration = iteration
        self.killed = None

    def on_iteration_end(self, record):
        if record.iteration == self.iteration:
            self.killed = sorted(self.client.ncores())[0]
            pid = self.client.run(os.getpid, workers=[self.killed])[self.killed]
            os.kill(pid, signal.SIGKILL)  # the nanny restarts it; its chunks are lost


@pytest.mark.slow
def test_fit_survives_a_killed_worker(client):
    X, y = make_classification(40_000, 10, chunks=5_000, random_state=3)
    options = {"solver": "gd", "learning_rate": 2.0, "max_iter": 15, "tol": 0.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error", daskgd.ConvergenceWarning)  # tol=0: asked for
        undisturbed = daskgd.LogisticRegression(**options).fit(X, y)
    killer = KillWorkerAt(client, KILL_AT_ITERATION)
    with warnings.catch_warnings():
        warnings.simplefilter("error", daskgd.ConvergenceWarning)
        disturbed = daskgd.LogisticRegression(**options).fit(X, y, callbacks=[killer])
    assert killer.killed is not None
    np.testing.assert_allclose(disturbed.coef_, undisturbed.coef_, rtol=1e-9)
    np.testing.assert_allclose(disturbed.intercept_, undisturbed.intercept_, rtol=1e-9)
    np.testing.assert_allclose(disturbed.trace_.loss, undisturbed.trace_.loss, rtol=1e-9)
    # The kill happened during the fit: the worker's address is gone from the cluster
    # (its nanny restarted it under a new one), so the equality above is a recovery.
    assert killer.killed not in client.ncores()


class KillEveryWorkerAt(Callback):
    """Kills every worker process at once after an iteration (their nannies restart
    them under new addresses): no worker holding a chunk is left. With ``wait``, returns
    once the replacements run (bounded): the fit then goes on with running workers
    whatever the machine's load (at load 10 the restarts outlasted a 5 s timeout)."""

    def __init__(self, client, iteration, *, wait=False):
        self.client, self.iteration, self.killed, self.wait = client, iteration, [], wait

    def on_iteration_end(self, record):
        if record.iteration == self.iteration:
            pids = self.client.run(os.getpid)
            self.killed = sorted(pids)
            for pid in pids.values():
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 60
            while self.wait and time.monotonic() < deadline:
                running = set(self.client.ncores())
                if len(running) == len(pids) and not running & set(pids):
                    self.client.wait_for_workers(len(pids), timeout=60)
                    self.client.run(os.getpid)  # they answer (slow to, when just started)
                    break
                time.sleep(0.1)


@pytest.mark.slow
def test_fit_survives_losing_every_worker_at_once(client):
    """The replacements (a nanny's restarted workers, new batch jobs) join under new
    addresses; the chunks' loose restrictions name only the lost ones, and the scheduler
    offers a joining worker only the no-worker tasks whose restrictions name it: without
    daskgd's StaleRestrictions plugin (registered by every fit, not only by
    jobqueue_client) the chunks were never recomputed and the fit waited until its
    timeout."""
    X, y = make_classification(20_000, 5, chunks=2_500, random_state=5)
    options = {"solver": "gd", "learning_rate": 1.0, "max_iter": 10, "tol": 0.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error", daskgd.ConvergenceWarning)
        undisturbed = daskgd.LogisticRegression(**options).fit(X, y)
        killer = KillEveryWorkerAt(client, 3)
        disturbed = daskgd.LogisticRegression(**options, timeout=60).fit(X, y, callbacks=[killer])
    assert len(killer.killed) == 2
    assert not set(killer.killed) & set(client.ncores())
    np.testing.assert_allclose(disturbed.coef_, undisturbed.coef_, rtol=1e-9)
    np.testing.assert_allclose(disturbed.trace_.loss, undisturbed.trace_.loss, rtol=1e-9)


@pytest.mark.slow
def test_tasks_no_worker_may_run_end_the_wait(client, monkeypatch):
    """The bound behind the plugin: without it (as on a scheduler where registering
    failed), chunks restricted to workers that all left wait in the scheduler's
    no-worker state for ever; the fit stops after its timeout with an error naming them
    instead of waiting for ever."""
    from daskgd.data import restrictions, waits

    client.run_on_scheduler(_remove_stale_restrictions)
    restrictions._REGISTERED.pop(client, None)  # the next fit registers it again
    monkeypatch.setattr(restrictions, "ensure_registered", lambda client, timeout: None)
    X, y = make_classification(20_000, 5, chunks=2_500, random_state=6)
    killer = KillEveryWorkerAt(client, 2, wait=True)
    model = daskgd.LogisticRegression(solver="gd", max_iter=10, tol=0.0, timeout=8)
    with pytest.raises(waits.ClusterTimeoutError, match="could run on none of the running"):
        model.fit(X, y, callbacks=[killer])
    assert killer.killed


def _remove_stale_restrictions(dask_scheduler=None):
    from daskgd.data.restrictions import PLUGIN_NAME

    dask_scheduler.plugins.pop(PLUGIN_NAME, None)


def _refuses(dask_scheduler=None, keys=()):
    raise ImportError("no module named 'daskgd' (as on a scheduler without daskgd)")


def test_a_scheduler_that_cannot_run_the_check_does_not_stop_the_wait(client, monkeypatch):
    """The no-worker check runs a daskgd function on the scheduler: where that fails (no
    daskgd there), the wait goes on with its other bounds instead of failing the fit."""
    from daskgd.data import waits

    monkeypatch.setattr(waits, "_unrunnable_dependencies", _refuses)
    monkeypatch.setattr(waits, "_SLICE_SECONDS", 0.05)  # checks between short slices
    future = client.submit(__import__("time").sleep, 0.5, pure=False)
    assert waits.result(client, future, what="sleeping", timeout=5) is None
