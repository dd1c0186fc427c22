"""Bad input gets a clear error naming the input, and the cluster stays usable."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

import daskgd
from daskgd.cluster.local import connect

RNG = np.random.default_rng(0)
X_GOOD = RNG.standard_normal((200, 3))
Y_GOOD = (X_GOOD[:, 0] > 0).astype(int)


def with_nan(array, value=np.nan):
    array = array.astype(float).copy()
    array[117] = value
    return array


CASES = {
    # In-memory input gets scikit-learn's checks and messages (validate_data), dask
    # input daskgd's (found when the chunks are placed).
    "nan in X": (with_nan(X_GOOD), Y_GOOD, ValueError, r"X contains NaN"),
    "inf in X (dask)": (
        da.from_array(with_nan(X_GOOD, np.inf), chunks=(50, 3)),
        Y_GOOD,
        ValueError,
        r"X contains NaN or inf",
    ),
    "nan in y": (X_GOOD, with_nan(Y_GOOD), ValueError, r"y contains NaN"),
    "nan in y (dask)": (
        da.from_array(X_GOOD, chunks=(50, 3)),
        da.from_array(with_nan(Y_GOOD), chunks=50),
        ValueError,
        r"y contains NaN",
    ),
    "X 1-D": (X_GOOD[:, 0], Y_GOOD, ValueError, r"Expected 2D array, got 1D array"),
    "X 3-D": (X_GOOD[:, :, None], Y_GOOD, ValueError, r"Found array with dim 3"),
    "X 3-D (dask)": (da.zeros((200, 3, 1), chunks=50), Y_GOOD, ValueError, r"X must be 2-D"),
    "y 2-D": (X_GOOD, np.c_[Y_GOOD, Y_GOOD], ValueError, r"y should be a 1d array"),
    "rows differ": (X_GOOD, Y_GOOD[:-1], ValueError, r"200.*199|199.*200"),
    # An object array of numbers is converted, as scikit-learn's check_dtype_object asks.
    "object X": (np.full((200, 3), "a", dtype=object), Y_GOOD, ValueError, r"convert string"),
    "string X": (np.full((200, 3), "a"), Y_GOOD, ValueError, r"convert string to float"),
    "string X (dask)": (da.full((200, 3), "a", chunks=50), Y_GOOD, TypeError, r"X has non-num"),
    "complex X": (X_GOOD.astype(complex), Y_GOOD, ValueError, r"Complex data not supported"),
    "zero rows": (X_GOOD[:0], Y_GOOD[:0], ValueError, r"0 sample\(s\)"),
    "single class": (X_GOOD, np.ones(200, int), ValueError, r"one class"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data_is_rejected_and_the_cluster_survives(cluster_client, case):
    X, y, error, message = CASES[case]
    with pytest.raises(error, match=message):
        daskgd.LogisticRegression(max_iter=5).fit(X, y)
    assert cluster_client.submit(sum, [1, 2], pure=False).result(timeout=30) == 3
    assert len(cluster_client.ncores()) == 2


@pytest.mark.parametrize(
    ("estimator", "message"),
    [
        # scikit-learn's parameter validation and messages (_parameter_constraints)
        (lambda: daskgd.LogisticRegression(C=-1.0), r"'C' parameter .* range \(0.0, inf\)"),
        (lambda: daskgd.LogisticRegression(C=float("nan")), r"'C' parameter.*Got nan"),
        (lambda: daskgd.LogisticRegression(tol=-1e-3), r"'tol' parameter .* range \[0.0, inf"),
        (lambda: daskgd.LogisticRegression(max_iter=-5), r"'max_iter' .* int in the range \[1"),
        (lambda: daskgd.LogisticRegression(max_iter=2.5), r"'max_iter' parameter.*Got 2.5"),
        (lambda: daskgd.LogisticRegression(solver="newton"), r"unknown solver 'newton'"),
        (lambda: daskgd.LogisticRegression(penalty="l3"), r"'penalty' .*Got 'l3'"),
        (lambda: daskgd.LogisticRegression("l1"), r"lbfgs.*only 'l2' or None"),
        (lambda: daskgd.LogisticRegression("elasticnet", l1_ratio=1.5, solver="gd"), r"l1_ratio"),
        (lambda: daskgd.LogisticRegression(solver="gd", learning_rate=-0.1), r"learning_rate"),
        (lambda: daskgd.LogisticRegression(fit_intercept="yes"), r"fit_intercept"),
        (lambda: daskgd.Ridge(alpha=-1.0), r"'alpha' parameter of Ridge .* \[0.0, inf"),
        (lambda: daskgd.LinearRegression(solver="sag"), r"unknown solver 'sag'"),
        (lambda: daskgd.Lasso(solver="lbfgs"), r"proximal solver"),
        (lambda: daskgd.LogisticRegression(class_weight="even"), r"'class_weight' parameter"),
    ],
)
def test_bad_parameters_are_rejected_at_fit(local_scheduler, estimator, message):
    model = estimator()  # __init__ only stores: scikit-learn's convention
    with pytest.raises((ValueError, TypeError), match=message):
        model.fit(X_GOOD, Y_GOOD)


def test_predict_with_other_features_is_rejected(local_scheduler):
    model = daskgd.LogisticRegression(max_iter=20).fit(X_GOOD, Y_GOOD)
    with pytest.raises(ValueError, match="X has 4 features, but LogisticRegression is expecting 3"):
        model.predict(np.zeros((5, 4)))
    with pytest.raises(ValueError, match="X has 2 features"):
        model.predict_proba(da.zeros((5, 2), chunks=5))


def test_predict_before_fit_is_rejected():
    with pytest.raises(ValueError, match="not fitted yet"):
        daskgd.Ridge().predict(X_GOOD)


def test_unreachable_scheduler_fails_fast():
    # Port 9 (discard) on loopback: nothing listens there on this machine.
    with pytest.raises(ConnectionError, match=r"cannot reach the Dask scheduler at '127.0.0.1:9'"):
        connect("127.0.0.1:9", timeout_seconds=2)
