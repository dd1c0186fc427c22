"""Estimators against scikit-learn on its bundled data sets, on a real LocalCluster."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest

import daskgd

sklearn_datasets = pytest.importorskip("sklearn.datasets")
sklearn_linear = pytest.importorskip("sklearn.linear_model")
StandardScaler = pytest.importorskip("sklearn.preprocessing").StandardScaler

RTOL = 1e-4  # relative to the largest coefficient, as the issue asks


def assert_coefficients_close(actual, expected, rtol=RTOL):
    actual, expected = np.asarray(actual), np.asarray(expected)
    scale = np.max(np.abs(expected))
    assert np.max(np.abs(actual - expected)) <= rtol * scale, (actual, expected)


def as_dask(X, y, n_chunks=4):
    rows = -(-len(X) // n_chunks)
    return da.from_array(X, chunks=(rows, X.shape[1])), da.from_array(y, chunks=rows)


@pytest.fixture(scope="module")
def breast_cancer():
    X, y = sklearn_datasets.load_breast_cancer(return_X_y=True)
    return StandardScaler().fit_transform(X), y


@pytest.fixture(scope="module")
def digits():
    X, y = sklearn_datasets.load_digits(return_X_y=True)
    return StandardScaler().fit_transform(X), y


@pytest.fixture(scope="module")
def diabetes():
    return sklearn_datasets.load_diabetes(return_X_y=True)


@pytest.mark.parametrize("C", [1.0, 0.05])
def test_binary_logistic_matches_scikit_learn(cluster_client, breast_cancer, C):
    X, y = breast_cancer
    reference = sklearn_linear.LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(X, y)
    model = daskgd.LogisticRegression(C=C, tol=1e-9, max_iter=2000).fit(*as_dask(X, y))
    assert model.converged_
    assert model.coef_.shape == reference.coef_.shape == (1, X.shape[1])
    assert_coefficients_close(model.coef_, reference.coef_)
    assert_coefficients_close(model.intercept_, reference.intercept_, rtol=RTOL * 10)
    np.testing.assert_array_equal(model.classes_, reference.classes_)
    assert model.n_iter_.shape == (1,) and model.n_iter_[0] > 0


def test_multinomial_logistic_matches_scikit_learn(cluster_client, digits):
    X, y = digits
    reference = sklearn_linear.LogisticRegression(C=0.5, tol=1e-10, max_iter=10_000).fit(X, y)
    model = daskgd.LogisticRegression(C=0.5, tol=1e-9, max_iter=3000).fit(*as_dask(X, y))
    assert model.coef_.shape == reference.coef_.shape == (10, 64)
    assert_coefficients_close(model.coef_, reference.coef_)
    probabilities = model.predict_proba(X)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    np.testing.assert_allclose(probabilities, reference.predict_proba(X), atol=1e-4)
    assert model.score(X, y) == pytest.approx(reference.score(X, y), abs=2e-3)


def test_ridge_matches_scikit_learn(cluster_client, diabetes):
    X, y = diabetes
    reference = sklearn_linear.Ridge(alpha=0.1).fit(X, y)
    model = daskgd.Ridge(alpha=0.1, tol=1e-8, max_iter=100_000).fit(*as_dask(X, y))
    assert_coefficients_close(model.coef_, reference.coef_)
    assert model.intercept_ == pytest.approx(reference.intercept_, rel=RTOL)
    assert model.score(X, y) == pytest.approx(reference.score(X, y), abs=1e-6)


def test_ridge_with_nesterov_matches_scikit_learn(local_scheduler, diabetes):
    # Accelerated gd needs hundreds of iterations here: the threaded scheduler keeps the
    # test short; the cluster path of the same code is exercised by the tests above.
    X, y = diabetes
    X = StandardScaler().fit_transform(X)
    reference = sklearn_linear.Ridge(alpha=1.0).fit(X, y)
    model = daskgd.Ridge(alpha=1.0, solver="nesterov", tol=1e-7, max_iter=20_000)
    model.fit(*as_dask(X, y))
    assert_coefficients_close(model.coef_, reference.coef_)


def test_linear_regression_matches_scikit_learn(cluster_client, diabetes):
    X, y = diabetes
    reference = sklearn_linear.LinearRegression().fit(X, y)
    model = daskgd.LinearRegression(tol=1e-8, max_iter=100_000).fit(*as_dask(X, y))
    assert_coefficients_close(model.coef_, reference.coef_)


def test_elasticnet_logistic_matches_scikit_learn(local_scheduler, breast_cancer):
    X, y = breast_cancer
    reference = sklearn_linear.LogisticRegression(
        C=0.1, l1_ratio=0.5, solver="saga", tol=1e-12, max_iter=100_000
    ).fit(X, y)
    model = daskgd.LogisticRegression(
        "elasticnet", C=0.1, l1_ratio=0.5, solver="nesterov", tol=1e-8, max_iter=50_000
    ).fit(*as_dask(X, y))
    assert_coefficients_close(model.coef_, reference.coef_, rtol=1e-3)


def test_fit_on_numpy_and_without_a_cluster_gives_the_same(breast_cancer, local_scheduler):
    X, y = breast_cancer
    threaded = daskgd.LogisticRegression(tol=1e-9, max_iter=2000).fit(X, y)
    reference = sklearn_linear.LogisticRegression(tol=1e-10, max_iter=10_000).fit(X, y)
    assert_coefficients_close(threaded.coef_, reference.coef_)
    assert threaded.trace_.attrs["scheduler"] == "threads"


def test_predict_on_dask_input_stays_lazy(cluster_client, breast_cancer):
    X, y = breast_cancer
    model = daskgd.LogisticRegression(max_iter=50).fit(X, y)
    X_dask, _ = as_dask(X, y)
    for method in (model.predict, model.predict_proba, model.decision_function):
        assert isinstance(method(X_dask), da.Array)
    np.testing.assert_array_equal(model.predict(X_dask).compute(), model.predict(X))


def test_string_labels_come_back(cluster_client, breast_cancer):
    X, y = breast_cancer
    labels = np.where(y == 1, "benign", "malignant")
    model = daskgd.LogisticRegression(max_iter=100).fit(X, labels)
    assert set(model.classes_) == {"benign", "malignant"}
    assert set(np.unique(model.predict(X))) <= {"benign", "malignant"}
    assert model.score(X, labels) > 0.95


def test_trace_records_the_run(cluster_client, breast_cancer):
    X, y = breast_cancer
    model = daskgd.LogisticRegression(solver="gd", max_iter=20, tol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", daskgd.ConvergenceWarning)  # tol=0: 20 on purpose
        model.fit(*as_dask(X, y))
    trace = model.trace_
    assert trace.sizes["iteration"] == 21
    for name in ("loss", "grad_norm", "step_size", "wall_seconds"):
        assert np.isfinite(trace[name]).all(), name
    assert (trace.loss.diff("iteration") <= 1e-12).all()  # backtracking gd never goes up
    assert trace.attrs["solver"] == "gd" and trace.attrs["n_samples"] == len(X)


def test_max_iter_warns_unless_tol_is_zero(cluster_client, breast_cancer):
    X, y = as_dask(*breast_cancer)
    with pytest.warns(daskgd.ConvergenceWarning, match="max_iter=3 before reaching tol=1e-12"):
        daskgd.LogisticRegression(solver="gd", max_iter=3, tol=1e-12).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", daskgd.ConvergenceWarning)
        model = daskgd.LogisticRegression(solver="gd", max_iter=3, tol=0).fit(X, y)
    assert model.n_iter_ == 3 and not model.converged_


def test_get_and_set_params_follow_scikit_learn():
    model = daskgd.LogisticRegression(C=3.0)
    assert model.get_params()["C"] == 3.0
    assert model.set_params(max_iter=7).max_iter == 7
    assert "C=3.0" in repr(model)
    with pytest.raises(ValueError, match="Invalid parameter 'gamma'"):
        model.set_params(gamma=1)


def test_fit_on_one_worker_of_two_matches_the_fit_on_both(cluster_client, breast_cancer):
    from daskgd.observe.summary import attr_list

    X, y = breast_cancer
    first, _ = sorted(cluster_client.nthreads())
    options = {"client": cluster_client, "solver": "gd", "max_iter": 10, "tol": 0.0}
    both = daskgd.LogisticRegression(**options).fit(*as_dask(X, y))
    one = daskgd.LogisticRegression(workers=[first], **options).fit(*as_dask(X, y))
    assert one.get_params()["workers"] == [first]
    np.testing.assert_allclose(one.coef_, both.coef_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(one.intercept_, both.intercept_, rtol=1e-10, atol=1e-12)
    assert set(attr_list(one.trace_, "chunk_workers")) == {first}
    assert len(set(attr_list(both.trace_, "chunk_workers"))) == 2


@pytest.mark.parametrize("workers", [[], "tcp://127.0.0.1:1", [1]])
def test_bad_workers_are_rejected(cluster_client, diabetes, workers):
    X, y = diabetes
    with pytest.raises(ValueError, match="workers"):
        daskgd.LinearRegression(client=cluster_client, workers=workers).fit(X, y)


def test_unknown_worker_is_rejected(cluster_client, diabetes):
    X, y = diabetes
    model = daskgd.Ridge(client=cluster_client, workers=["tcp://10.255.0.1:1"])
    with pytest.raises(ValueError, match="not known to the scheduler"):
        model.fit(X, y)
