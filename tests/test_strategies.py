"""The strategy contract: every registered strategy runs this suite.

A synchronous strategy gathers the same sums as ``mapreduce`` (the lecture's graph
path, itself checked against scikit-learn and numpy elsewhere), so it must give the
same iterates for every model and solver it declares it can run (1e-10), survive a
killed worker with the same answer, record its resolved configuration in the trace,
and reject what it cannot do before anything starts.
"""

from __future__ import annotations

import os
import signal
import warnings

import numpy as np
import pytest
from sklearn.base import clone

import daskgd
from daskgd.data.synthetic import make_classification, make_regression
from daskgd.engine.callbacks import Callback
from daskgd.optim import OPTIMIZERS, get_optimizer
from daskgd.strategies import STRATEGIES, Capabilities, Strategy, get_strategy

#: Options each strategy runs the contract with (the defaults unless a strategy needs some).
CONTRACT_OPTIONS: dict[str, dict] = {}
#: daskgd's strategies: not the test doubles other test modules register (test_compare's
#: "test-late-direct" is Direct under another name: its contract runs were Direct's again).
PRODUCT = [name for name in STRATEGIES if not name.startswith("test-")]
SYNCHRONOUS = [name for name in PRODUCT if get_strategy(name).capabilities.synchronous]
#: The reference of the iterates is mapreduce; the others are compared with it.
ALTERNATIVES = [name for name in SYNCHRONOUS if name != "mapreduce"]
TOLERANCE = 1e-10
#: Strategies whose callbacks are not in their loop (the parameter server's reach the
#: client a poll later, while the server goes on), so a callback cannot kill a worker at a
#: given iteration: their own tests kill through the emulation (tests/test_paramserver.py).
CALLBACKS_AFTER_THE_LOOP = {"parameter-server"}


def _fit(estimator, X, y, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", daskgd.ConvergenceWarning)
        return estimator.set_params(**options).fit(X, y)


def _estimators():
    common = {"max_iter": 12, "tol": 0.0, "random_state": 0}
    return {
        "logistic": (daskgd.LogisticRegression(**common), "binary"),
        "multinomial": (daskgd.LogisticRegression(**common), "multiclass"),
        "ridge": (daskgd.Ridge(alpha=1.0, **common), "regression"),
        "l1": (daskgd.LogisticRegression(penalty="l1", C=0.5, **common), "binary"),
    }


@pytest.fixture(scope="module")
def datasets(session_client):
    binary = make_classification(6_000, 8, chunks=1_000, random_state=1)
    multiclass = make_classification(6_000, 8, n_classes=3, chunks=1_000, random_state=2)
    regression = make_regression(6_000, 8, chunks=1_000, random_state=3)
    return {"binary": binary, "multiclass": multiclass, "regression": regression}


def _runs(strategy_name):
    for model, (estimator, kind) in _estimators().items():
        for solver in sorted(OPTIMIZERS):
            if model == "l1" and solver == "lbfgs":
                continue
            strategy = get_strategy(strategy_name, **CONTRACT_OPTIONS.get(strategy_name, {}))
            try:
                strategy.check(get_optimizer(solver))
            except ValueError:
                continue  # the strategy declares it cannot run this solver: tested below
            yield model, solver, estimator, kind


@pytest.fixture(scope="module")
def references(datasets):
    """mapreduce's fit of each (model, solver), made once for every strategy compared:
    ``{(model, solver): (coef_, loss, n_iter_)}``, filled as the tests ask."""
    return {}


def _reference(references, datasets, model, solver, estimator, kind):
    if (model, solver) not in references:
        X, y = datasets[kind]
        fitted = _fit(clone(estimator), X, y, solver=solver, strategy="mapreduce")
        references[model, solver] = (
            fitted.coef_.copy(),
            fitted.trace_.loss.values.copy(),
            fitted.n_iter_,
        )
    return references[model, solver]


@pytest.mark.parametrize("name", ALTERNATIVES)
def test_same_iterates_as_mapreduce(cluster_client, datasets, references, name):
    strategy_options = CONTRACT_OPTIONS.get(name, {})
    compared = 0
    for model, solver, estimator, kind in _runs(name):
        X, y = datasets[kind]
        coef, loss, n_iter = _reference(references, datasets, model, solver, estimator, kind)
        strategy = get_strategy(name, **strategy_options)
        # A clone: the reference was once the same object refitted, so compared with itself.
        other = _fit(clone(estimator), X, y, solver=solver, strategy=strategy)
        assert other.trace_.attrs["strategy"] == name
        label = f"{name} {model} {solver}"
        np.testing.assert_allclose(other.coef_, coef, rtol=0, atol=TOLERANCE, err_msg=label)
        np.testing.assert_allclose(other.trace_.loss, loss, rtol=TOLERANCE, err_msg=label)
        assert other.n_iter_ == n_iter, label
        compared += 1
    assert compared >= 4  # at least every model once


@pytest.mark.parametrize("name", SYNCHRONOUS)
def test_trace_records_the_resolved_configuration(cluster_client, datasets, name):
    X, y = datasets["binary"]
    model = _fit(daskgd.LogisticRegression(max_iter=3, strategy=name), X, y)
    attrs = model.trace_.attrs
    assert attrs["strategy"] == name
    assert attrs["topology"]
    assert attrs["loss_rows"] == "all"


class _KillFirstWorker(Callback):
    def __init__(self, client, iteration):
        self.client, self.iteration, self.killed = client, iteration, None

    def on_iteration_end(self, record):
        if record.iteration == self.iteration:
            self.killed = sorted(self.client.ncores())[0]
            pid = self.client.run(os.getpid, workers=[self.killed])[self.killed]
            os.kill(pid, signal.SIGKILL)  # the nanny restarts it; its chunks are lost


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in SYNCHRONOUS if n not in CALLBACKS_AFTER_THE_LOOP])
def test_a_killed_worker_gives_the_same_answer(client, name):
    X, y = make_classification(20_000, 6, chunks=2_500, random_state=4)
    options = {"solver": "gd", "learning_rate": 2.0, "max_iter": 10, "tol": 0.0}
    undisturbed = _fit(daskgd.LogisticRegression(strategy=name, **options), X, y)
    killer = _KillFirstWorker(client, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", daskgd.ConvergenceWarning)
        disturbed = daskgd.LogisticRegression(strategy=name, **options).fit(
            X, y, callbacks=[killer]
        )
    assert killer.killed is not None and killer.killed not in client.ncores()
    np.testing.assert_allclose(disturbed.coef_, undisturbed.coef_, rtol=1e-8)


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_capabilities_are_declared(name):
    strategy = get_strategy(name)
    assert isinstance(strategy, Strategy) and strategy.name == name
    assert isinstance(strategy.capabilities, Capabilities)
    assert strategy.describe()["strategy"] == name


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_unsupported_solvers_are_rejected_before_anything_starts(local_scheduler, name):
    strategy = get_strategy(name)
    X, y = np.zeros((10, 2)), np.arange(10) % 2
    for solver in OPTIMIZERS:
        try:
            strategy.check(get_optimizer(solver))
        except ValueError as error:
            assert solver in str(error) and name in str(error)
            with pytest.raises(ValueError, match=solver):
                daskgd.LogisticRegression(solver=solver, strategy=name).fit(X, y)


def test_bad_strategy_options_get_clear_errors(local_scheduler):
    X, y = np.zeros((10, 2)), np.arange(10) % 2
    with pytest.raises(ValueError, match="unknown strategy 'ring'.*mapreduce"):
        daskgd.LogisticRegression(strategy="ring").fit(X, y)
    with pytest.raises(ValueError, match="unknown strategy"):
        get_strategy("ring")
    with pytest.raises(ValueError, match="split_every"):
        get_strategy("mapreduce", split_every=1)
    with pytest.raises(TypeError):
        get_strategy("mapreduce", fan_in=4)
    configured = get_strategy("mapreduce", split_every=4)
    with pytest.raises(ValueError, match="transfer_dtype.*get_strategy"):
        daskgd.LogisticRegression(strategy=configured, transfer_dtype="float16").fit(X, y)
    with pytest.raises(ValueError, match="options .* configured strategy"):
        get_strategy(configured, split_every=2)


#: Strategies whose workers keep models of their own (no global iterate: their iterates
#: differ from mapreduce's by design, so the contract is what applies to them).
PEER_TO_PEER = ["gossip", "local-sgd"]


@pytest.mark.parametrize("name", PEER_TO_PEER)
def test_peer_to_peer_trace_records_the_resolved_configuration(cluster_client, datasets, name):
    X, y = datasets["binary"]
    estimator = daskgd.LogisticRegression(max_iter=3, solver="gd", learning_rate=1.0)
    model = _fit(estimator, X, y, strategy=name)
    trace = model.trace_
    assert trace.attrs["strategy"] == name
    assert trace.attrs["topology"] == "ring"
    assert trace.attrs["local_steps"] == (1 if name == "gossip" else 8)
    assert trace.attrs["loss_rows"] == "all"
    assert {"consensus_distance", "communicated", "communication_rounds"} <= set(trace)
    assert trace.attrs["measured_by"] == "residents"


@pytest.mark.slow
@pytest.mark.parametrize("name", PEER_TO_PEER)
def test_peer_to_peer_fit_finishes_after_a_killed_worker(client, name):
    client.wait_for_workers(2, timeout=60)  # a worker killed by the test before is back
    X, y = make_classification(20_000, 6, chunks=2_500, random_state=4)
    options = {"solver": "gd", "learning_rate": 2.0, "max_iter": 40, "tol": 0.0}
    undisturbed = _fit(daskgd.LogisticRegression(strategy=name, **options), X, y)
    assert undisturbed.trace_.sizes["worker"] == 2  # the kill below hits a worker of the fit
    killer = _KillFirstWorker(client, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", daskgd.ConvergenceWarning)
        disturbed = daskgd.LogisticRegression(strategy=name, **options).fit(
            X, y, callbacks=[killer]
        )
    assert killer.killed is not None
    assert disturbed.n_iter_ == 40 and int(disturbed.trace_.attempts.sum()) > 41
    # restarted at the average of the last batch read back: near, not equal
    gap = abs(float(disturbed.trace_.loss[-1]) - float(undisturbed.trace_.loss[-1]))
    assert gap < 1e-3, gap


@pytest.mark.parametrize("n_chunks", [1, 5, 70])  # 70 > 32 chunks: two levels of sums
def test_without_a_client_evaluations_equal_the_graphs(local_scheduler, n_chunks):
    """Without a client, mapreduce evaluates the persisted chunks in-process; the
    totals are those of the map_blocks / da.sum graph bit for bit (same rounding)."""
    import dask.array as da

    from daskgd.data.placement import distribute
    from daskgd.models.losses import get_model
    from daskgd.strategies.base import FitProblem

    rng = np.random.default_rng(n_chunks)
    X = rng.normal(size=(700, 4))
    y = (rng.random(700) < 0.4).astype(float)
    data = distribute(da.from_array(X, chunks=700 // n_chunks), y)
    problem = FitProblem(data, get_model("logistic"), True, None, None)
    with get_strategy("mapreduce").session(problem) as session:
        for w in (np.zeros(5), rng.normal(size=5)):
            for blocks in (None, [0] if n_chunks == 1 else [1, 0, n_chunks - 1]):
                graph = session._graph(w, blocks, "check").compute(scheduler="threads")
                np.testing.assert_array_equal(session._in_process(w, blocks), graph)
