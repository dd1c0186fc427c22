"""Optimizers as pure functions on numpy: no cluster, no data object.

The gather here is numpy on in-memory row chunks (not daskgd's chunk functions); the
oracles are scipy's L-BFGS-B on the same objective, scikit-learn for L1, and closed
forms on a quadratic.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize

from daskgd.engine.driver import Callback, minimize
from daskgd.engine.steps import Evaluation
from daskgd.models.objective import Objective
from daskgd.models.penalties import make_penalty
from daskgd.optim import LBFGS, SGD, GradientDescent, Nesterov, get_optimizer

N_SAMPLES, N_FEATURES, N_CHUNKS, STRENGTH = 4000, 6, 6, 1e-3


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(42)
    X = rng.standard_normal((N_SAMPLES, N_FEATURES))
    true_w = rng.standard_normal(N_FEATURES)
    y = (rng.random(N_SAMPLES) < 1 / (1 + np.exp(-(X @ true_w + 0.3)))).astype(float)
    return X, y


def logistic_gather(X, y, calls=None):
    """gather(w, blocks) -> Evaluation: numpy sums over row chunks (intercept last)."""
    chunks = np.array_split(np.arange(len(y)), N_CHUNKS)

    def gather(w, blocks=None):
        rows = np.concatenate([chunks[b] for b in (range(N_CHUNKS) if blocks is None else blocks)])
        z = X[rows] @ w[:-1] + w[-1]
        residual = 1 / (1 + np.exp(-z)) - y[rows]
        loss = float(np.sum(np.logaddexp(0, z) - y[rows] * z))
        grad = np.r_[X[rows].T @ residual, residual.sum()]
        if calls is not None:
            calls.append(blocks)
        return Evaluation(loss, grad, len(rows), 0.0, 1, "numpy")

    return gather


def objective(X, penalty):
    mask = np.r_[np.ones(N_FEATURES, bool), False]
    augmented = np.c_[X, np.ones(len(X))]
    top = np.linalg.eigvalsh(augmented.T @ augmented / len(X))[-1]
    return Objective(penalty, mask, lipschitz_fn=lambda: 0.25 * top)


def numpy_objective(w, X, y, strength):
    """Mean logistic loss + strength/2 ||coef||^2, intercept last and unpenalised."""
    z = X @ w[:-1] + w[-1]
    loss = np.mean(np.logaddexp(0, z) - y * z) + 0.5 * strength * w[:-1] @ w[:-1]
    residual = 1 / (1 + np.exp(-z)) - y
    grad = np.r_[X.T @ residual / len(y) + strength * w[:-1], residual.mean()]
    return loss, grad


def fit(problem, optimizer, penalty, *, max_iter=3000, tol=1e-9, callbacks=(), calls=None):
    X, y = problem
    return minimize(
        logistic_gather(X, y, calls),
        optimizer,
        objective(X, penalty),
        np.zeros(N_FEATURES + 1),
        max_iter=max_iter,
        tol=tol,
        n_blocks=N_CHUNKS,
        seed=0,
        callbacks=callbacks,
    )


def scipy_minimum(X, y):
    return scipy.optimize.minimize(
        numpy_objective,
        np.zeros(N_FEATURES + 1),
        args=(X, y, STRENGTH),
        jac=True,
        method="L-BFGS-B",
        options={"gtol": 1e-12, "ftol": 0, "maxiter": 10_000},
    )


@pytest.mark.parametrize("solver", ["gd", "nesterov", "lbfgs"])
def test_solvers_reach_the_scipy_minimum(problem, solver):
    reference = scipy_minimum(*problem)
    result = fit(problem, get_optimizer(solver), make_penalty("l2", STRENGTH))
    assert result.converged
    np.testing.assert_allclose(result.w, reference.x, rtol=1e-5, atol=1e-6)
    assert result.records[-1].loss == pytest.approx(reference.fun, rel=1e-10)


def test_lbfgs_needs_few_round_trips(problem):
    calls = []
    result = fit(problem, LBFGS(), make_penalty("l2", STRENGTH), calls=calls)
    # Unit steps are accepted almost always: about one evaluation per iteration.
    assert len(calls) <= 1.5 * (result.n_iter + 1)
    assert len(calls) == sum(r.n_evaluations for r in result.records)
    assert result.n_iter < 60


def test_accepted_gd_steps_cost_one_round_trip(problem):
    calls = []
    result = fit(problem, GradientDescent(), make_penalty("l2", STRENGTH), max_iter=50, calls=calls)
    per_iteration = [record.n_evaluations for record in result.records[1:]]
    assert per_iteration.count(1) >= 0.9 * len(per_iteration)
    assert len(calls) == sum(r.n_evaluations for r in result.records)


@pytest.mark.parametrize("optimizer", [GradientDescent(), Nesterov()])
def test_l1_matches_scikit_learn(problem, optimizer):
    sklearn = pytest.importorskip("sklearn.linear_model")
    X, y = problem
    C = 0.02  # strong enough that some coefficients are exactly zero
    reference = sklearn.LogisticRegression(
        l1_ratio=1.0, C=C, solver="saga", tol=1e-12, max_iter=100_000
    ).fit(X, y)
    penalty = make_penalty("l1", 1.0 / (C * N_SAMPLES))
    result = fit(problem, optimizer, penalty, max_iter=20_000, tol=1e-10)
    expected = np.r_[reference.coef_[0], reference.intercept_]
    np.testing.assert_allclose(result.w, expected, atol=2e-4)
    assert np.array_equal(result.w[:-1] == 0, reference.coef_[0] == 0)


def test_lbfgs_refuses_l1(problem):
    with pytest.raises(ValueError, match="lbfgs.*smooth"):
        fit(problem, LBFGS(), make_penalty("l1", 0.01))


def test_sgd_decreases_the_loss_on_batches_drawn_from_seed_and_step(problem):
    X, y = problem
    calls = []
    result = fit(
        problem, SGD(batch_blocks=2), make_penalty("l2", STRENGTH), max_iter=200, tol=0, calls=calls
    )
    start = numpy_objective(np.zeros(N_FEATURES + 1), X, y, STRENGTH)[0]
    end = numpy_objective(result.w, X, y, STRENGTH)[0]
    assert end - scipy_minimum(X, y).fun < 0.05 * (start - scipy_minimum(X, y).fun)
    assert calls[0] is None  # iteration 0 is over all the data
    assert all(len(blocks) == 2 and sorted(blocks) == blocks for blocks in calls[1:])
    again = []
    fit(
        problem, SGD(batch_blocks=2), make_penalty("l2", STRENGTH), max_iter=200, tol=0, calls=again
    )
    assert again == calls  # the same seed draws the same batches: nothing hidden in a state
    # The record names what it holds: the relative change of w for sgd, not a gradient.
    record = result.records[-1]
    assert record.optimality != record.grad_norm


def test_divergence_names_the_step_size(problem):
    X, _ = problem
    target = X @ np.ones(N_FEATURES)

    def least_squares(w, blocks=None):
        residual = X @ w[:-1] + w[-1] - target
        grad = np.r_[X.T @ residual, residual.sum()]
        return Evaluation(0.5 * float(residual @ residual), grad, len(target), 0.0, 1, "numpy")

    # Least squares with a step far above 1/L grows geometrically to infinity.
    with (
        np.errstate(over="ignore", invalid="ignore"),
        pytest.raises(FloatingPointError, match=r"step size 1000"),
    ):
        minimize(
            least_squares,
            GradientDescent(learning_rate=1e3),
            objective(X, make_penalty(None, 0.0)),
            np.zeros(N_FEATURES + 1),
            max_iter=500,
            tol=0,
        )


def test_callbacks_see_every_iteration(problem):
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
    result = fit(
        problem,
        GradientDescent(),
        make_penalty("l2", STRENGTH),
        max_iter=5,
        tol=0,
        callbacks=[recorder],
    )
    assert recorder.events == ["start", 0, 1, 2, 3, 4, 5, "end"]
    assert result.n_iter == 5 and not result.converged


# -- the pure functions themselves, on a quadratic f(w) = 0.5 w^T A w - b^T w ---------------


def quadratic(seed=0, d=5):
    rng = np.random.default_rng(seed)
    Q = rng.standard_normal((d, d))
    A = Q @ Q.T + d * np.eye(d)
    b = rng.standard_normal(d)

    def value_fn(w):
        return float(0.5 * w @ A @ w - b @ w), A @ w - b

    top = float(np.linalg.eigvalsh(A)[-1])
    return A, b, value_fn, Objective(make_penalty(None, 0.0), np.ones(d, bool), lambda: top)


def test_gd_update_is_the_textbook_step_and_leaves_its_inputs_alone():
    A, b, value_fn, obj = quadratic()
    w = np.ones(len(b))
    value, grad = value_fn(w)
    optimizer = GradientDescent(learning_rate=0.01)
    state = optimizer.init(w, value=value, grad=grad, objective=obj)
    w_before, grad_before = w.copy(), grad.copy()
    new_w, new_state = optimizer.update(
        grad, state, w, value=value, value_fn=value_fn, objective=obj
    )
    np.testing.assert_array_equal(new_w, w - 0.01 * grad)
    assert new_state == state  # a fixed step: the state does not change
    np.testing.assert_array_equal(w, w_before)
    np.testing.assert_array_equal(grad, grad_before)


def test_lbfgs_update_solves_a_quadratic_in_few_steps():
    A, b, value_fn, obj = quadratic(d=8)
    optimizer = LBFGS()
    w = np.zeros(len(b))
    value, grad = value_fn(w)
    state = optimizer.init(w, value=value, grad=grad, objective=obj)
    for _ in range(30):
        w, state = optimizer.update(grad, state, w, value=value, value_fn=value_fn, objective=obj)
        value, grad = value_fn(w)
        if np.max(np.abs(grad)) < 1e-10:
            break
    np.testing.assert_allclose(w, np.linalg.solve(A, b), rtol=1e-8)
    assert len(state.steps) <= optimizer.memory_size


def test_backtracking_asks_value_fn_and_stops_stalled_at_the_precision_floor():
    A, b, value_fn, obj = quadratic()
    optimum = np.linalg.solve(A, b)
    calls = []

    def counted(w):
        calls.append(w)
        return value_fn(w)

    optimizer = GradientDescent()  # 'auto': 1/L with backtracking
    value, grad = value_fn(optimum)
    state = optimizer.init(optimum, value=value, grad=grad, objective=obj)
    # A gradient pointing the wrong way: no step decreases f, every trial is rejected.
    new_w, new_state = optimizer.update(
        -grad - 1.0, state, optimum, value=value, value_fn=counted, objective=obj
    )
    assert new_state.stalled and np.array_equal(new_w, optimum)
    assert len(calls) == 30


def test_sgd_steps_decay_with_the_step_count():
    _, b, value_fn, obj = quadratic()
    optimizer = SGD(learning_rate=0.1, decay=1.0)
    w = np.zeros(len(b))
    value, grad = value_fn(w)
    state = optimizer.init(w, value=value, grad=grad, objective=obj)
    sizes = []
    for _ in range(3):
        w, state = optimizer.update(grad, state, w, value=value, value_fn=value_fn, objective=obj)
        sizes.append(state.step_size)
    assert sizes == pytest.approx([0.1, 0.05, 0.1 / 3])
    assert state.step_count == 3


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
    ],
)
def test_bad_options_are_rejected(factory, message):
    with pytest.raises((ValueError, TypeError), match=message):
        factory()
