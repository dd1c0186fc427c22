"""Per-worker measurements (daskgd.observe.instrument) on a real LocalCluster of 2 workers."""

from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import pytest
import xarray as xr
from distributed import get_task_stream, get_worker

from daskgd.data import distribute
from daskgd.engine.driver import Callback, Stopping
from daskgd.estimators.linear import LogisticRegression
from daskgd.models.losses import Logistic
from daskgd.models.penalties import make_penalty
from daskgd.observe.instrument import Instrumentation, straggler_flags
from daskgd.observe.stragglers import sync_and_overhead
from daskgd.observe.trace import load_trace, save_trace
from daskgd.optim import get_optimizer
from daskgd.strategies import FitProblem, MapReduce

N_SAMPLES, N_FEATURES = 20_000, 10
N_PARAMS = N_FEATURES + 1
SLEEP_SECONDS = 0.05  # per chunk, on the slow worker
WORKER_VARIABLES = (
    "compute_seconds",
    "communication_seconds",
    "wait_seconds",
    "sync_seconds",
    "overhead_seconds",
    "bytes_sent",
    "bytes_received",
    "n_tasks",
    "straggler",
)


class SlowOnOneWorker(Logistic):
    """Logistic loss whose chunk function sleeps when it runs on one given worker."""

    def __init__(self, slow_address: str):
        self.slow_address = slow_address

    def loss_grad(self, w, X, y, fit_intercept):
        if get_worker().address == self.slow_address:
            time.sleep(SLEEP_SECONDS)
        return super().loss_grad(w, X, y, fit_intercept)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N_SAMPLES, N_FEATURES))
    y = (X @ rng.normal(size=N_FEATURES) + rng.normal(size=N_SAMPLES) > 0).astype(np.float64)
    return X, y


@pytest.fixture(scope="module")
def data(session_client, problem):
    return distribute(*problem, session_client, chunks_per_worker=2)


def fit(data, model, callbacks, max_iter=4):
    """Plain gd with a fixed step through the engine: one evaluation per iteration."""
    problem = FitProblem(data, model, True, make_penalty("l2", 1e-3))
    return MapReduce().run(
        problem,
        get_optimizer("gd", learning_rate=0.5),
        Stopping(max_iter=max_iter, tol=0.0),
        callbacks,
    )


def measured(client, data, model=None, max_iter=4):
    instrumentation = Instrumentation(client)
    result = fit(data, model or Logistic(), [instrumentation], max_iter=max_iter)
    return result, instrumentation.worker_dataset(result.records)


def test_compute_agrees_with_dask_task_stream(cluster_client, data):
    with get_task_stream(client=cluster_client) as stream:
        result, workers = measured(cluster_client, data)
    # The fit's anchor tasks (one per task group, see mapreduce._task_groups) are no
    # evaluation's.
    tasks = [task for task in stream.data if task["key"][-1] != "anchor"]
    assert len(stream.data) - len(tasks) == 3
    expected = {}
    for task in tasks:
        for startstop in task["startstops"]:
            if startstop["action"] == "compute":
                seconds = startstop["stop"] - startstop["start"]
                expected[task["worker"]] = expected.get(task["worker"], 0.0) + seconds
    assert sorted(expected) == sorted(workers["worker"].values)
    totals = workers["compute_seconds"].sum("iteration")
    for address, seconds in expected.items():
        assert float(totals.sel(worker=address)) == pytest.approx(seconds, rel=0.10)
    assert workers.sizes == {"iteration": len(result.records), "worker": 2}
    assert int(workers["n_tasks"].sum()) == len(tasks)
    for name in WORKER_VARIABLES:
        assert not workers[name].isnull().any(), name


def test_every_worker_receives_w_every_iteration(cluster_client, data):
    _, workers = measured(cluster_client, data)
    w_bytes = 8 * N_PARAMS
    assert (workers["bytes_received"] >= w_bytes).all()
    assert (workers["bytes_broadcast"] >= 2 * w_bytes).all()
    # the partial sums of both workers meet somewhere, and the total reaches the client
    assert (workers["bytes_reduce"] >= 2 * 8 * (N_PARAMS + 2)).all()
    parts = workers["bytes_broadcast"] + workers["bytes_reduce"]
    assert (workers["bytes_total"] >= parts).all()
    assert (workers["communication_seconds"] > 0).all()
    assert (workers["wait_seconds"] >= 0).all()


def test_slow_worker_is_the_straggler_and_the_other_waits(cluster_client, data):
    slow, fast = sorted(set(data.placement))
    _, normal = measured(cluster_client, data)
    _, slowed = measured(cluster_client, data, SlowOnOneWorker(slow))

    flagged = slowed["straggler"]
    assert flagged.sel(worker=slow).all()
    assert not flagged.sel(worker=fast).any()
    # the slow worker runs at least one chunk per iteration (its own two, normally)
    compute_growth = median(slowed, "compute_seconds", slow) - median(
        normal, "compute_seconds", slow
    )
    assert compute_growth > 0.8 * SLEEP_SECONDS
    wait_growth = median(slowed, "wait_seconds", fast) - median(normal, "wait_seconds", fast)
    assert wait_growth > 0.5 * SLEEP_SECONDS
    # that wait is synchronisation: the slow worker's compute minus the fast one's
    sync_growth = median(slowed, "sync_seconds", fast) - median(normal, "sync_seconds", fast)
    assert sync_growth > 0.5 * SLEEP_SECONDS
    np.testing.assert_allclose(slowed["sync_seconds"].sel(worker=slow), 0.0, atol=1e-9)
    np.testing.assert_allclose(
        slowed["sync_seconds"] + slowed["overhead_seconds"], slowed["wait_seconds"]
    )


def median(workers: xr.Dataset, name: str, worker: str) -> float:
    return float(workers[name].sel(worker=worker).median())


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_estimator_trace_has_workers_and_round_trips(cluster_client, problem, tmp_path, suffix):
    estimator = LogisticRegression(solver="gd", learning_rate=0.5, max_iter=3, tol=0.0)
    estimator.fit(*problem)
    trace = estimator.trace_
    assert trace.sizes["worker"] == 2
    assert trace["worker"].dtype.kind in "UO" and trace["worker_name"].dtype.kind in "UO"
    for name in (*WORKER_VARIABLES, "bytes_total", "bytes_broadcast", "bytes_reduce"):
        assert name in trace.data_vars, name
        assert trace[name].attrs["units"]
    assert trace["straggler"].dtype == bool
    # the workers' memory is in the trace, so a report shows it instead of "unknown"
    assert (trace["memory_bytes"] > 1e6).all() and (trace["memory_limit_bytes"] > 0).all()
    from daskgd.observe.summary import split
    from daskgd.viz.columns import worker_columns

    memory = worker_columns(trace, split(trace))["memory"]
    assert all("unknown" not in text and " / " in text for text in memory), memory

    loaded = load_trace(save_trace(trace, tmp_path / f"trace{suffix}"))
    xr.testing.assert_identical(loaded, trace)
    assert loaded["straggler"].dtype == bool
    assert [str(w) for w in loaded["worker"].values] == [str(w) for w in trace["worker"].values]


def test_no_worker_dimension_without_instrumentation(cluster_client, problem):
    estimator = LogisticRegression(solver="gd", learning_rate=0.5, max_iter=2, instrument=False)
    with pytest.warns(UserWarning):
        estimator.fit(*problem)
    assert "worker" not in estimator.trace_.dims
    assert not any(name.startswith("bytes") for name in estimator.trace_.data_vars)


def test_no_worker_dimension_on_the_local_scheduler(local_scheduler, problem):
    estimator = LogisticRegression(solver="gd", learning_rate=0.5, max_iter=2)
    with pytest.warns(UserWarning):
        estimator.fit(*problem)
    assert "worker" not in estimator.trace_.dims


class SnapshotEveryIteration(Callback):
    """Calls ``snapshot`` from another thread while the fit runs, as a dashboard would."""

    def __init__(self, instrumentation: Instrumentation):
        self.instrumentation = instrumentation
        self.snapshots: list[xr.Dataset] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.snapshots.append(self.instrumentation.snapshot())
            except BaseException as error:  # noqa: BLE001 - reported by the test
                self.errors.append(error)

    def on_fit_start(self, info: dict) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def on_iteration_end(self, record) -> None:
        # Hold the fit (at most 10 s) until a background poll has landed, so that a fit
        # faster than the poll interval still has snapshots taken while it runs.
        if record.iteration == 3:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any(
                "worker" in snapshot.dims for snapshot in list(self.snapshots)
            ):
                time.sleep(0.05)

    def on_fit_end(self, result) -> None:
        self._stop.set()
        self._thread.join()


def test_snapshot_while_the_fit_runs(cluster_client, data):
    instrumentation = Instrumentation(cluster_client, poll_interval_seconds=0.2)
    watcher = SnapshotEveryIteration(instrumentation)
    result = fit(data, Logistic(), [instrumentation, watcher], max_iter=12)
    assert not watcher.errors
    with_workers = [s for s in watcher.snapshots if "worker" in s.dims]
    assert with_workers, "no snapshot had per-worker data during the fit"
    assert all("loss" in s.data_vars for s in watcher.snapshots)
    final = instrumentation.snapshot()
    assert final.sizes["iteration"] == len(result.records)
    xr.testing.assert_equal(
        final[list(WORKER_VARIABLES)],
        instrumentation.worker_dataset(result.records)[list(WORKER_VARIABLES)],
    )
    plugins = cluster_client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.plugins))
    assert not [name for name in plugins if name.startswith("daskgd-instrument")]


def test_straggler_rule_flags_a_persistently_slow_worker_not_a_burst():
    rng = np.random.default_rng(0)
    n = 60
    compute = 0.020 * (1 + 0.1 * rng.random((n, 3)))
    compute[:, 2] *= 3.0  # worker 2: three times slower throughout
    compute[20, 0] *= 8.0  # worker 0: one preempted iteration
    compute[40:43, 1] *= 4.0  # worker 1: a burst of three
    flags = straggler_flags(compute, np.ones((n, 3), dtype=bool))
    assert flags[:, 2].all()
    assert not flags[:, :2].any()


def test_straggler_rule_compares_compute_per_byte():
    """A worker that read twice the data took twice as long: not a straggler."""
    n = 20
    compute = np.tile([0.02, 0.04], (n, 1))
    active = np.ones((n, 2), dtype=bool)
    assert straggler_flags(compute, active).all(axis=0).tolist() == [False, True]
    pace = compute / np.array([1e6, 2e6])  # seconds per data byte: equal
    assert not straggler_flags(compute, active, pace=pace).any()


def test_straggler_rule_does_not_flag_a_worker_that_finishes_first():
    """Slower per byte but holding a third of the data: its compute ends before its
    peer's, nobody waits for it. The same pace on equal data is a straggler."""
    n = 20
    active = np.ones((n, 2), dtype=bool)
    compute = np.tile([0.030, 0.015], (n, 1))
    pace = compute / np.array([3e6, 1e6])  # worker 1: 1.5x slower per byte
    assert not straggler_flags(compute, active, pace=pace).any()
    compute = np.tile([0.010, 0.015], (n, 1))
    pace = compute / np.array([1e6, 1e6])
    assert straggler_flags(compute, active, pace=pace).all(axis=0).tolist() == [False, True]


def test_straggler_rule_ignores_an_excess_below_the_floor():
    n = 20
    compute = np.tile([0.0005, 0.0015], (n, 1))  # 3x, but 1 ms: preemption-sized
    active = np.ones((n, 2), dtype=bool)
    assert not straggler_flags(compute, active, min_excess_seconds=0.002).any()
    assert straggler_flags(compute, active, min_excess_seconds=0.0)[:, 1].all()


def test_straggler_rule_warns_about_nothing_when_only_one_worker_ran(monkeypatch):
    """An iteration with no other active worker has no median to compare with: nothing
    is flagged, and no all-NaN median is even attempted, so there is no RuntimeWarning
    to silence (a live view computes this in its own thread, where silencing with
    warnings.catch_warnings is not thread-safe and let the warning into a notebook)."""
    nanmedian = np.nanmedian

    def strict_nanmedian(values, axis=None):
        assert np.isfinite(values).any(axis=axis).all(), "median of an all-NaN row"
        return nanmedian(values, axis=axis)

    monkeypatch.setattr(np, "nanmedian", strict_nanmedian)
    active = np.array([[True, False, False], [True, True, True]])
    compute = np.array([[9.0, 0.0, 0.0], [1.0, 1.0, 5.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flags = straggler_flags(compute, active)
    assert flags.tolist() == [[False, False, False], [False, False, True]]


def test_sync_is_the_slowest_compute_minus_this_one_within_the_wait():
    compute = np.array([[1.0, 3.0, 2.0], [1.0, 1.0, np.nan]])
    wait = np.array([[2.5, 0.2, 0.5], [0.3, 0.3, np.nan]])
    active = np.array([[True, True, True], [True, True, False]])
    sync, overhead = sync_and_overhead(compute, wait, active)
    np.testing.assert_allclose(sync[0], [2.0, 0.0, 0.5])
    np.testing.assert_allclose(overhead[0], [0.5, 0.2, 0.0])
    np.testing.assert_allclose(sync[1, :2], 0.0)
    assert np.isnan(sync[1, 2]) and np.isnan(overhead[1, 2])
    np.testing.assert_allclose(np.nan_to_num(sync + overhead), np.nan_to_num(wait))


def test_rejects_bad_parameters(cluster_client):
    with pytest.raises(ValueError, match="straggler_ratio"):
        Instrumentation(cluster_client, straggler_ratio=0.5)
    with pytest.raises(ValueError, match="straggler_window"):
        Instrumentation(cluster_client, straggler_window=0)
    with pytest.raises(ValueError, match="straggler_min_excess_seconds"):
        Instrumentation(cluster_client, straggler_min_excess_seconds=-1.0)
    with pytest.raises(ValueError, match="poll_interval_seconds"):
        Instrumentation(cluster_client, poll_interval_seconds=0)


def test_scheduler_and_workers_as_processes(scheduler_processes, problem):
    """`dask scheduler` / `dask worker` processes: the plugin is unpickled by another
    interpreter, which imports daskgd."""
    from distributed import Client

    with Client(scheduler_processes, set_as_default=False) as client:
        data = distribute(*problem, client, chunks_per_worker=1)
        _, workers = measured(client, data, max_iter=2)
    assert workers.sizes["worker"] == 2
    assert not workers["compute_seconds"].isnull().any()
    assert (workers["bytes_received"] >= 8 * N_PARAMS).all()


def _no_daskgd_here():
    raise ModuleNotFoundError("No module named 'daskgd'")


class _Unloadable:
    """Unpickles as a scheduler without daskgd would: ModuleNotFoundError."""

    def __reduce__(self):
        return (_no_daskgd_here, ())


def test_warns_and_measures_nothing_when_the_plugin_cannot_register(
    cluster_client, data, monkeypatch
):
    import pickle

    from daskgd.observe import instrument

    monkeypatch.setattr(instrument, "dumps", lambda plugin: pickle.dumps(_Unloadable()))
    with pytest.warns(RuntimeWarning, match="instrumentation is off"):
        result, workers = measured(cluster_client, data, max_iter=1)
    assert "worker" not in workers.dims and not workers.data_vars
    assert workers.sizes["iteration"] == len(result.records)
