"""A worker killed during a fit: its chunks are recomputed from lineage, w is re-sent,
and the fit returns the same coefficients as an undisturbed one."""

from __future__ import annotations

import os
import signal
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
            self.killed = sorted(self.client.scheduler_info()["workers"])[0]
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
    assert killer.killed not in client.scheduler_info()["workers"]
