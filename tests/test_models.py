"""Tests of the chunk maths (daskgd.models.losses) and the penalties (daskgd.models.penalties)."""

import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import expit, softmax
from sklearn.metrics import log_loss

from daskgd.models import losses as models
from daskgd.models.losses import (
    MODELS,
    LeastSquares,
    Logistic,
    Multinomial,
    get_model,
    packed_loss_grad,
    unpack,
)
from daskgd.models.penalties import L1, L2, ElasticNet, NoPenalty, make_penalty

N_CLASSES = 3
MODEL_FACTORIES = {
    "least_squares": LeastSquares,
    "logistic": Logistic,
    "multinomial": lambda: Multinomial(N_CLASSES),
}
PENALTY_CASES = [
    NoPenalty(),
    L2(0.7),
    L1(0.3),
    ElasticNet(0.5, 0.0),
    ElasticNet(0.5, 0.35),
    ElasticNet(0.5, 1.0),
]


def make_targets(model, n_rows, rng):
    """Targets valid for ``model``: real values, 0/1, or class indices as floats."""
    if model.name == "least_squares":
        return rng.normal(size=n_rows)
    n_classes = model.n_classes if model.name == "multinomial" else 2
    return rng.integers(0, n_classes, size=n_rows).astype(np.float64)


def make_problem(model, n_rows, n_features, fit_intercept, seed=0, scale=1.0):
    """Random ``(w, X, y)`` for ``model``."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, n_features))
    y = make_targets(model, n_rows, rng)
    w = scale * rng.normal(size=model.n_params(n_features, fit_intercept))
    return w, X, y


def central_difference(function, w, step=1e-6):
    """Central finite-difference gradient of a scalar ``function`` at ``w``."""
    gradient = np.empty_like(w)
    for index in range(w.size):
        shift = np.zeros_like(w)
        shift[index] = step
        gradient[index] = (function(w + shift) - function(w - shift)) / (2 * step)
    return gradient


@pytest.fixture(autouse=True, params=["numpy", "numba"])
def chunk_path(request, monkeypatch):
    """Every test runs on both paths of loss_grad: the numpy block loop and the kernels."""
    if request.param == "numba":
        pytest.importorskip("numba")
    monkeypatch.setenv("DASKGD_KERNELS", request.param)
    return request.param


@pytest.fixture
def small_blocks(monkeypatch):
    """Shrink BLOCK_ROWS so small arrays span several blocks (of the numpy path)."""
    monkeypatch.setattr(models, "BLOCK_ROWS", 8)


# ---------------------------------------------------------------- gradients and oracles


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("name", sorted(MODEL_FACTORIES))
def test_gradient_matches_finite_differences(name, fit_intercept, small_blocks):
    model = MODEL_FACTORIES[name]()
    w, X, y = make_problem(model, 37, 4, fit_intercept, seed=1, scale=0.5)
    _, grad, n_rows = model.loss_grad(w, X, y, fit_intercept)
    numeric = central_difference(lambda v: model.loss_grad(v, X, y, fit_intercept)[0], w)
    assert n_rows == 37
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-6 * np.abs(numeric).max())


@pytest.mark.parametrize("penalty", PENALTY_CASES, ids=repr)
def test_smooth_penalty_gradient_matches_finite_differences(penalty):
    rng = np.random.default_rng(2)
    w = rng.normal(size=7)
    mask = np.array([True, True, False, True, True, True, False])
    _, grad = penalty.smooth(w, mask)
    numeric = central_difference(lambda v: penalty.smooth(v, mask)[0], w)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)
    assert np.all(grad[~mask] == 0.0)


def test_penalty_values_match_formula():
    w = np.array([1.0, -2.0, 3.0, 10.0])
    mask = np.array([True, True, True, False])
    penalty = ElasticNet(0.5, 0.25)
    smooth_value, _ = penalty.smooth(w, mask)
    total = smooth_value + penalty.nonsmooth_value(w, mask)
    assert total == pytest.approx(0.5 * (0.25 * 6.0 + 0.5 * 0.75 * 14.0))
    assert L2(0.5).nonsmooth_value(w, mask) == 0.0
    assert L1(0.5).smooth(w, mask)[0] == 0.0
    assert [p.is_smooth for p in (NoPenalty(), L2(1.0), L1(1.0), ElasticNet(1.0, 0.0))] == [
        True,
        True,
        False,
        True,
    ]


def split_parameters(w, n_features, n_outputs, fit_intercept):
    """Independent reading of the documented layout: (coef (K, d), intercept (K,))."""
    table = w.reshape(n_outputs, n_features + int(fit_intercept))
    intercept = table[:, -1] if fit_intercept else np.zeros(n_outputs)
    return table[:, :n_features], intercept


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_least_squares_matches_numpy(fit_intercept):
    model = LeastSquares()
    w, X, y = make_problem(model, 5000, 6, fit_intercept, seed=3)
    coef, intercept = split_parameters(w, 6, 1, fit_intercept)
    residual = X @ coef[0] + intercept[0] - y
    loss, grad, n_rows = model.loss_grad(w, X, y, fit_intercept)
    design = np.hstack([X, np.ones((5000, 1))]) if fit_intercept else X
    assert n_rows == 5000
    assert loss == pytest.approx(0.5 * np.sum(residual**2), rel=1e-12)
    np.testing.assert_allclose(grad, design.T @ residual, rtol=1e-10)


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_logistic_matches_sklearn_log_loss(fit_intercept):
    model = Logistic()
    w, X, y = make_problem(model, 5000, 6, fit_intercept, seed=4)
    coef, intercept = split_parameters(w, 6, 1, fit_intercept)
    probability = expit(X @ coef[0] + intercept[0])
    loss, grad, _ = model.loss_grad(w, X, y, fit_intercept)
    design = np.hstack([X, np.ones((5000, 1))]) if fit_intercept else X
    assert loss == pytest.approx(5000 * log_loss(y, probability), rel=1e-10)
    np.testing.assert_allclose(grad, design.T @ (probability - y), rtol=1e-10)


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_multinomial_matches_sklearn_log_loss(fit_intercept):
    model = Multinomial(N_CLASSES)
    w, X, y = make_problem(model, 5000, 6, fit_intercept, seed=5)
    coef, intercept = split_parameters(w, 6, N_CLASSES, fit_intercept)
    probability = softmax(X @ coef.T + intercept, axis=1)
    loss, grad, _ = model.loss_grad(w, X, y, fit_intercept)
    expected = 5000 * log_loss(y, probability, labels=list(range(N_CLASSES)))
    assert loss == pytest.approx(expected, rel=1e-10)
    residual = probability - np.eye(N_CLASSES)[y.astype(int)]
    expected_grad = np.hstack([residual.T @ X, residual.sum(axis=0)[:, None]])
    if not fit_intercept:
        expected_grad = expected_grad[:, :-1]
    np.testing.assert_allclose(grad, expected_grad.reshape(-1), rtol=1e-10)


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("name", sorted(MODEL_FACTORIES))
def test_decision_function_numpy_and_dask(name, fit_intercept):
    model = MODEL_FACTORIES[name]()
    w, X, _ = make_problem(model, 30, 4, fit_intercept, seed=6)
    n_outputs = N_CLASSES if name == "multinomial" else 1
    coef, intercept = split_parameters(w, 4, n_outputs, fit_intercept)
    expected = X @ coef.T + intercept
    expected = expected[:, 0] if n_outputs == 1 else expected
    np.testing.assert_allclose(model.decision_function(w, X, fit_intercept), expected)
    lazy = model.decision_function(w, da.from_array(X, chunks=(7, 4)), fit_intercept)
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(scheduler="sync"), expected)


# ---------------------------------------------------------------- chunking


chunking_cases = st.fixed_dictionaries(
    {
        "name": st.sampled_from(sorted(MODEL_FACTORIES)),
        "fit_intercept": st.booleans(),
        "n_rows": st.integers(1, 40),
        "n_features": st.integers(1, 4),
        "seed": st.integers(0, 2**32 - 1),
        "cut_fractions": st.lists(st.floats(0.0, 1.0), max_size=6),
    }
)


@settings(max_examples=150, deadline=None)
@given(case=chunking_cases)
def test_chunk_sums_equal_whole_array(case):
    model = MODEL_FACTORIES[case["name"]]()
    n_rows, fit_intercept = case["n_rows"], case["fit_intercept"]
    w, X, y = make_problem(model, n_rows, case["n_features"], fit_intercept, seed=case["seed"])
    # Cuts may repeat, giving empty chunks; chunks range from empty to all 40 rows,
    # i.e. both below and well above the 5-row blocks.
    cuts = sorted(int(round(fraction * n_rows)) for fraction in case["cut_fractions"])
    bounds = [0, *cuts, n_rows]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models, "BLOCK_ROWS", 5)
        whole_loss, whole_grad, whole_rows = model.loss_grad(w, X, y, fit_intercept)
        parts = [
            packed_loss_grad(X[start:stop], y[start:stop, None], w, model, fit_intercept)
            for start, stop in zip(bounds[:-1], bounds[1:], strict=True)
        ]
    loss, grad, rows = unpack(np.sum(np.vstack(parts), axis=0))
    assert rows == whole_rows == n_rows
    assert loss == pytest.approx(whole_loss, rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(grad, whole_grad, rtol=1e-10, atol=1e-12)


def test_packed_layout_and_unpack():
    model = Logistic()
    w, X, y = make_problem(model, 12, 3, True, seed=7)
    packed = packed_loss_grad(X, y, w, model, True)
    loss, grad, rows = model.loss_grad(w, X, y, True)
    assert packed.shape == (1, w.size + 2) and packed.dtype == np.float64
    assert packed[0, 0] == loss and packed[0, -1] == rows == 12
    np.testing.assert_array_equal(packed[0, 1:-1], grad)
    unpacked = unpack(packed)
    assert isinstance(unpacked[0], float) and isinstance(unpacked[2], int)
    np.testing.assert_array_equal(unpacked[1], grad)


@pytest.mark.parametrize("name", sorted(MODEL_FACTORIES))
def test_zero_rows(name):
    model = MODEL_FACTORIES[name]()
    p = model.n_params(4, True)
    loss, grad, rows = model.loss_grad(np.ones(p), np.empty((0, 4)), np.empty((0, 1)), True)
    assert (loss, rows) == (0.0, 0) and isinstance(rows, int)
    np.testing.assert_array_equal(grad, np.zeros(p))


@pytest.mark.parametrize("name", sorted(MODEL_FACTORIES))
def test_layouts_and_target_shapes_agree(name, small_blocks):
    model = MODEL_FACTORIES[name]()
    w, X, y = make_problem(model, 29, 5, True, seed=8)
    expected = model.loss_grad(w, X, y, True)
    variants = [
        (np.asfortranarray(X), y),
        (np.repeat(X, 2, axis=0)[::2], y),
        (X, y[:, None]),
    ]
    for features, targets in variants:
        loss, grad, rows = model.loss_grad(w, features, targets, True)
        assert rows == expected[2]
        assert loss == pytest.approx(expected[0], rel=1e-12)
        np.testing.assert_allclose(grad, expected[1], rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- numerical stability


@pytest.mark.parametrize(
    ("name", "w", "expected_loss"),
    [
        ("least_squares", [1e4], None),
        # Rows 0 and 3 are wrong by a margin of 1e4, rows 1 and 2 right.
        ("logistic", [1e4], 2e4),
        # Rows 1 and 2 put 2e4 more on a wrong class than on the right one.
        ("multinomial", [1e4, -1e4, 0.0], 4e4),
    ],
)
def test_huge_linear_predictors_stay_finite(name, w, expected_loss):
    model = MODEL_FACTORIES[name]()
    X = np.array([[1.0], [-1.0], [1.0], [-1.0]])
    y = np.array([0.0, 0.0, 1.0, 1.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss, grad, _ = model.loss_grad(np.array(w), X, y, False)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    if expected_loss is not None:
        assert loss == pytest.approx(expected_loss)
    if name == "logistic":
        np.testing.assert_allclose(grad, [2.0])


@pytest.mark.parametrize("name", sorted(MODEL_FACTORIES))
def test_float32_features(name, small_blocks):
    model = MODEL_FACTORIES[name]()
    w, X, y = make_problem(model, 50, 4, True, seed=9)
    single = X.astype(np.float32)
    loss, grad, _ = model.loss_grad(w, single, y, True)
    # Arithmetic is in float64: only the rounding of X to float32 separates the results.
    exact_loss, exact_grad, _ = model.loss_grad(w, single.astype(np.float64), y, True)
    assert loss == pytest.approx(exact_loss, rel=1e-12)
    np.testing.assert_allclose(grad, exact_grad, rtol=1e-12, atol=1e-12)
    double_loss, double_grad, _ = model.loss_grad(w, X, y, True)
    assert loss == pytest.approx(double_loss, rel=1e-5)
    np.testing.assert_allclose(grad, double_grad, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- prox


@pytest.mark.parametrize("penalty", [L1(0.4), ElasticNet(0.8, 0.5), ElasticNet(2.0, 0.1)])
def test_prox_satisfies_optimality(penalty):
    rng = np.random.default_rng(10)
    w = rng.normal(scale=0.5, size=200)
    mask = rng.random(200) < 0.8
    step = 0.7
    threshold = step * penalty.l1_weight
    result = penalty.prox(w, step, mask)
    # 0 in (u - w) + step * l1_weight * d|u| on masked entries; u = w elsewhere.
    moved = w[mask] - result[mask]
    nonzero = result[mask] != 0.0
    np.testing.assert_allclose(moved[nonzero], threshold * np.sign(result[mask][nonzero]))
    assert np.all(np.abs(moved[~nonzero]) <= threshold + 1e-15)
    np.testing.assert_array_equal(result[~mask], w[~mask])
    assert nonzero.any() and (~nonzero).any()


@pytest.mark.parametrize("penalty", PENALTY_CASES, ids=repr)
def test_prox_identity_cases(penalty):
    w = np.linspace(-1.0, 1.0, 9)
    mask = np.ones(9, dtype=bool)
    np.testing.assert_array_equal(penalty.prox(w, 0.0, mask), w)
    if penalty.is_smooth:
        np.testing.assert_array_equal(penalty.prox(w, 3.0, mask), w)
    result = penalty.prox(w, 0.5, mask)
    assert result is not w


# ---------------------------------------------------------------- layout and factories


def test_parameter_counts_and_masks():
    assert LeastSquares().n_params(5, True) == 6
    assert Logistic().n_params(5, False) == 5
    assert Multinomial(3).n_params(5, True) == 18
    np.testing.assert_array_equal(Logistic().penalty_mask(2, True), [True, True, False])
    np.testing.assert_array_equal(Logistic().penalty_mask(2, False), [True, True])
    np.testing.assert_array_equal(
        Multinomial(2).penalty_mask(2, True), [True, True, False, True, True, False]
    )
    assert [LeastSquares.curvature, Logistic.curvature, Multinomial.curvature] == [
        1.0,
        0.25,
        0.5,
    ]


def test_factories():
    assert set(MODELS) == {"least_squares", "logistic", "multinomial"}
    assert get_model("multinomial", n_classes=4) == Multinomial(4)
    assert all(
        get_model(name, **({"n_classes": 3} if name == "multinomial" else {})).name == name
        for name in MODELS
    )
    assert make_penalty(None, 1.0) == NoPenalty() == make_penalty("none", 1.0)
    assert make_penalty("l2", 0.5) == L2(0.5)
    assert make_penalty("l1", 0.5) == L1(0.5)
    assert make_penalty("elasticnet", 0.5, l1_ratio=0.2) == ElasticNet(0.5, 0.2)


@pytest.mark.parametrize(
    ("build", "word"),
    [
        (lambda: L2(-1.0), "strength"),
        (lambda: L1(float("nan")), "strength"),
        (lambda: L1(float("inf")), "strength"),
        (lambda: ElasticNet(-0.1, 0.5), "strength"),
        (lambda: ElasticNet(1.0, -0.1), "l1_ratio"),
        (lambda: ElasticNet(1.0, 1.5), "l1_ratio"),
        (lambda: make_penalty("elasticnet", 1.0, l1_ratio=2.0), "l1_ratio"),
        (lambda: make_penalty("ridge", 1.0), "ridge"),
        (lambda: get_model("poisson"), "poisson"),
        (lambda: Multinomial(1), "n_classes"),
        (lambda: L1(1.0).prox(np.ones(2), -1.0, np.ones(2, dtype=bool)), "step"),
    ],
)
def test_bad_arguments_raise(build, word):
    with pytest.raises(ValueError, match=word):
        build()


def test_unknown_names_list_valid_ones():
    with pytest.raises(ValueError, match="elasticnet"):
        make_penalty("lasso", 1.0)
    with pytest.raises(ValueError, match="least_squares"):
        get_model("linear")


def test_bad_shapes_and_labels_raise():
    model = Multinomial(3)
    w, X, y = make_problem(model, 10, 2, True)
    with pytest.raises(ValueError, match="w must have shape"):
        model.loss_grad(w[:-1], X, y, True)
    with pytest.raises(ValueError, match="rows"):
        model.loss_grad(w, X, y[:-1], True)
    with pytest.raises(ValueError, match="class indices"):
        model.loss_grad(w, X, np.full(10, 3.0), True)
