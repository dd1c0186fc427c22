"""Solvers against an independent oracle, on dask's threaded scheduler.

The oracle is scipy's L-BFGS-B on the objective written here with numpy on the whole
array (not daskgd's chunk functions), or scikit-learn on the same objective.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import pytest
import scipy.optimize

from daskgd.engine.driver import Callback, minimize
from daskgd.models.losses import LeastSquares, Logistic
from daskgd.models.objective import Objective
from daskgd.models.penalties import make_penalty
from daskgd.optim.optimizers import LBFGS, SGD, GradientDescent, Nesterov, get_optimizer
from daskgd.strategies.mapreduce import MapReduce

N_SAMPLES, N_FEATURES, STRENGTH = 4000, 6, 1e-3


@dataclass
class ThreadedData:
    """The part of DistributedData the strategy reads, without a cluster."""

    X: Any
    y: Any
    n_samples: int
    n_features: int
    client: Any = None
    placement: Any = None


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(42)
    X = rng.standard_normal((N_SAMPLES, N_FEATURES))
    true_w = rng.standard_normal(N_FEATURES)
    y = (rng.random(N_SAMPLES) < 1 / (1 + np.exp(-(X @ true_w + 0.3)))).astype(float)
    data = ThreadedData(
        da.from_array(X, chunks=(700, N_FEATURES)),
        da.from_array(y[:, None], chunks=(700, 1)),
        N_SAMPLES,
        N_FEATURES,
    )
    return X, y, data


def numpy_objective(w, X, y, strength):
    """Mean logistic loss + strength/2 ||coef||^2, intercept last and unpenalised."""
    z = X @ w[:-1] + w[-1]
    loss = np.mean(np.logaddexp(0, z) - y * z) + 0.5 * strength * w[:-1] @ w[:-1]
    residual = 1 / (1 + np.exp(-z)) - y
    grad = np.r_[X.T @ residual / len(y) + strength * w[:-1], residual.mean()]
    return loss, grad


def fit(data, optimizer, penalty, *, max_iter=3000, tol=1e-9, callbacks=()):
    model = Logistic()
    with MapReduce().session(data, model, True) as session:
        objective = Objective(session, penalty, model.penalty_mask(data.n_features, True))
        w0 = np.zeros(data.n_features + 1)
        result = minimize(objective, optimizer, w0, max_iter=max_iter, tol=tol, callbacks=callbacks)
    return result, objective


@pytest.mark.parametrize("solver", ["gd", "nesterov", "lbfgs"])
def test_solvers_reach_the_scipy_minimum(problem, solver):
    X, y, data = problem
    reference = scipy.optimize.minimize(
        numpy_objective,
        np.zeros(N_FEATURES + 1),
        args=(X, y, STRENGTH),
        jac=True,
        method="L-BFGS-B",
        options={"gtol": 1e-12, "ftol": 0, "maxiter": 10_000},
    )
    result, _ = fit(data, get_optimizer(solver), make_penalty("l2", STRENGTH))
    assert result.converged
    np.testing.assert_allclose(result.w, reference.x, rtol=1e-5, atol=1e-6)
    assert result.records[-1].loss == pytest.approx(reference.fun, rel=1e-10)


def test_lbfgs_needs_few_round_trips(problem):
    _, _, data = problem
    result, objective = fit(data, LBFGS(), make_penalty("l2", STRENGTH))
    # Unit steps are accepted almost always: about one evaluation per iteration.
    assert len(objective.evaluations) <= 1.5 * (result.n_iter + 1)
    assert result.n_iter < 60


def test_accepted_gd_steps_cost_one_round_trip(problem):
    _, _, data = problem
    result, objective = fit(data, GradientDescent(), make_penalty("l2", STRENGTH), max_iter=50)
    per_iteration = [record.n_evaluations for record in result.records[1:]]
    assert per_iteration.count(1) >= 0.9 * len(per_iteration)
    assert len(objective.evaluations) == sum(r.n_evaluations for r in result.records)


@pytest.mark.parametrize("optimizer", [GradientDescent(), Nesterov()])
def test_l1_matches_scikit_learn(problem, optimizer):
    sklearn = pytest.importorskip("sklearn.linear_model")
    X, y, data = problem
    C = 0.02  # strong enough that some coefficients are exactly zero
    reference = sklearn.LogisticRegression(
        l1_ratio=1.0, C=C, solver="saga", tol=1e-12, max_iter=100_000
    ).fit(X, y)
    penalty = make_penalty("l1", 1.0 / (C * N_SAMPLES))
    result, _ = fit(data, optimizer, penalty, max_iter=20_000, tol=1e-10)
    expected = np.r_[reference.coef_[0], reference.intercept_]
    np.testing.assert_allclose(result.w, expected, atol=2e-4)
    assert np.array_equal(result.w[:-1] == 0, reference.coef_[0] == 0)


def test_lbfgs_refuses_l1(problem):
    _, _, data = problem
    with pytest.raises(ValueError, match="lbfgs.*smooth"):
        fit(data, LBFGS(), make_penalty("l1", 0.01))


def test_sgd_decreases_the_loss(problem):
    X, y, data = problem
    result, _ = fit(
        data, SGD(random_state=0, batch_blocks=2), make_penalty("l2", STRENGTH), max_iter=200, tol=0
    )
    start = numpy_objective(np.zeros(N_FEATURES + 1), X, y, STRENGTH)[0]
    end = numpy_objective(result.w, X, y, STRENGTH)[0]
    best = scipy.optimize.minimize(
        numpy_objective,
        np.zeros(N_FEATURES + 1),
        args=(X, y, STRENGTH),
        jac=True,
        method="L-BFGS-B",
    ).fun
    assert end - best < 0.05 * (start - best)


def test_divergence_names_the_step_size(problem):
    X, y, _ = problem
    # Least squares with a step far above 1/L grows geometrically to infinity.
    data = ThreadedData(
        da.from_array(X, chunks=(700, N_FEATURES)),
        da.from_array((X @ np.ones(N_FEATURES))[:, None], chunks=(700, 1)),
        N_SAMPLES,
        N_FEATURES,
    )
    model = LeastSquares()
    with MapReduce().session(data, model, True) as session:
        objective = Objective(
            session, make_penalty(None, 0.0), model.penalty_mask(N_FEATURES, True)
        )
        with pytest.raises(FloatingPointError, match=r"step size 1000"):
            minimize(
                objective,
                GradientDescent(learning_rate=1e3),
                np.zeros(N_FEATURES + 1),
                max_iter=500,
                tol=0,
            )


def test_callbacks_see_every_iteration(problem):
    _, _, data = problem

    class Recorder(Callback):
        def __init__(self):
            self.events = []

        def on_fit_start(self, info):
            self.events.append("start")

        def on_iteration_end(self, record):
            self.events.append(record.iteration)

        def on_fit_end(self, result):
            self.events.append("end")

    recorder = Recorder()
    result, _ = fit(
        data,
        GradientDescent(),
        make_penalty("l2", STRENGTH),
        max_iter=5,
        tol=0,
        callbacks=[recorder],
    )
    assert recorder.events == ["start", 0, 1, 2, 3, 4, 5, "end"]
    assert result.n_iter == 5 and not result.converged


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: GradientDescent(learning_rate=-1.0), "learning_rate"),
        (lambda: GradientDescent(learning_rate="fast"), "learning_rate"),
        (lambda: Nesterov(learning_rate=float("nan")), "learning_rate"),
        (lambda: LBFGS(memory_size=0), "memory_size"),
        (lambda: SGD(batch_blocks=0), "batch_blocks"),
        (lambda: SGD(decay=-1), "decay"),
        (lambda: get_optimizer("adam"), "unknown solver 'adam'"),
        (lambda: MapReduce(split_every=1), "split_every"),
    ],
)
def test_bad_options_are_rejected(factory, message):
    with pytest.raises((ValueError, TypeError), match=message):
        factory()
