"""Sparse X: scipy.sparse CSR chunks fitted without densifying a chunk.

Oracles: the dense path on ``X.toarray()`` (the chunk functions, and whole fits on the
same cluster with the same strategy), scikit-learn on the same CSR matrix, and the LIBSVM
file's own numbers read back by scikit-learn.
"""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.datasets import dump_svmlight_file

import daskgd
from daskgd.cli import main
from daskgd.data import as_dask_arrays, distribute
from daskgd.data.sparse import random_csr
from daskgd.data.statistics import chunk_statistics, sketch_matrix
from daskgd.models.losses import get_model

RNG = np.random.default_rng(0)
N, D = 600, 40
X = sp.random(N, D, density=0.15, format="csr", random_state=1, dtype=np.float64)
COEF = RNG.normal(size=D)
Y_REGRESSION = X @ COEF + 0.1 * RNG.normal(size=N)
Y_BINARY = (X @ COEF > 0).astype(int)
Y_CLASSES = np.digitize(X @ COEF, [-0.4, 0.4])
TOL = 1e-10

MODELS = [
    ("least_squares", {}, Y_REGRESSION),
    ("logistic", {}, Y_BINARY.astype(float)),
    ("multinomial", {"n_classes": 3}, Y_CLASSES.astype(float)),
]


# ------------------------------------------------------------------ chunk functions


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize(("name", "options", "y"), MODELS)
def test_sparse_chunk_sums_equal_the_dense_ones(name, options, y, fit_intercept):
    model = get_model(name, **options)
    w = RNG.normal(size=model.n_params(D, fit_intercept))
    weighted = np.column_stack([y, RNG.random(N)])  # the (n, 2) chunk of targets and weights
    for targets in (y, weighted):
        for chunk in (X, X.astype(np.float32), X.tocsc()):
            loss, grad, rows = model.loss_grad(w, chunk, targets, fit_intercept)
            dense_loss, dense_grad, _ = model.loss_grad(w, chunk.toarray(), targets, fit_intercept)
            assert rows == N
            np.testing.assert_allclose(loss, dense_loss, rtol=1e-12)
            np.testing.assert_allclose(grad, dense_grad, rtol=1e-10, atol=1e-10)
        scores = model.decision_function(w, X, fit_intercept)
        assert isinstance(scores, np.ndarray)
        np.testing.assert_allclose(scores, model.decision_function(w, X.toarray(), fit_intercept))


def test_sparse_chunk_is_never_densified(monkeypatch):
    """The chunk function and the statistics never call toarray/todense on the chunk."""

    def refuse(self, *args, **kwargs):
        raise AssertionError("a sparse chunk was densified")

    monkeypatch.setattr(sp.csr_matrix, "toarray", refuse)
    monkeypatch.setattr(sp.csr_matrix, "todense", refuse)
    model = get_model("multinomial", n_classes=3)
    model.loss_grad(np.zeros(model.n_params(D, True)), X, Y_CLASSES.astype(float), True)
    wide = sp.random(50, 1000, density=0.01, format="csr", random_state=2)
    stats = chunk_statistics(wide, np.ones((50, 1)), sketch_matrix(1000, sparse=True))
    assert stats["nnz"].tolist() == [wide.nnz]


def test_sparse_statistics_equal_the_dense_ones():
    y = np.ones((N, 1))
    for width, omega in ((D, None), (300, sketch_matrix(300, sparse=True))):
        matrix = sp.random(N, width, density=0.05, format="csr", random_state=3)
        sparse, dense = (
            chunk_statistics(matrix, y, omega),
            chunk_statistics(matrix.toarray(), y, omega),
        )
        for key in ("statistics", "product", "sums"):
            np.testing.assert_allclose(sparse[key], dense[key], rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------ placement


def test_placement_balances_sparse_chunks_by_rows_and_reports_nnz(cluster_client):
    with cluster_client.as_current():
        placed = distribute(X, Y_REGRESSION, chunks_per_worker=3)
        n_workers = len(set(placed.placement))
        assert n_workers == 2 and placed.sparse
        assert max(placed.chunk_rows) - min(placed.chunk_rows) <= 1
        counts = [placed.placement.count(address) for address in set(placed.placement)]
        assert counts == [3, 3]
        offsets = np.cumsum((0,) + placed.chunk_rows)
        expected = [X[a:b].nnz for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
        assert list(placed.chunk_nnz) == expected
        kinds = cluster_client.gather(
            cluster_client.map(lambda block: (block.format, block.has_sorted_indices),
                               placed.futures[: placed.n_chunks])
        )  # fmt: skip
        assert kinds == [("csr", True)] * placed.n_chunks
        for future in placed.futures:
            future.release()


def test_wide_sparse_matrix_is_chunked_by_its_stored_entries(local_scheduler):
    wide = random_csr(20_000, 100_000, density=1e-4, random_state=4)
    X_dask, _ = as_dask_arrays(wide, np.zeros(20_000))
    # dense "auto" chunks of 100,000 float64 columns would hold 167 rows each
    assert X_dask.numblocks[0] == 1
    assert isinstance(X_dask.blocks[0].compute(), sp.csr_matrix)


# --------------------------------------------------------------------------- fits


def _pair(estimator, y, strategy, X_sparse=X, solver="lbfgs"):
    fits = []
    for data in (X_sparse, X.toarray()):
        model = estimator(tol=TOL, max_iter=1000, strategy=strategy, solver=solver)
        fits.append(model.fit(data, y))
    return fits


@pytest.mark.parametrize("strategy", ["mapreduce", "direct", "allreduce"])
def test_fits_on_sparse_equal_the_dense_copy(cluster_client, strategy):
    cases = [
        (daskgd.LinearRegression, Y_REGRESSION),
        (daskgd.LogisticRegression, Y_BINARY),
        (daskgd.LogisticRegression, Y_CLASSES),
    ]
    with cluster_client.as_current():
        for estimator, y in cases:
            sparse_fit, dense_fit = _pair(estimator, y, strategy)
            np.testing.assert_allclose(sparse_fit.coef_, dense_fit.coef_, rtol=0, atol=1e-8)
            np.testing.assert_allclose(sparse_fit.intercept_, dense_fit.intercept_, atol=1e-8)
            assert sparse_fit.score(X, y) == pytest.approx(dense_fit.score(X.toarray(), y))
            np.testing.assert_allclose(sparse_fit.predict(X), dense_fit.predict(X.toarray()))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_proximal_and_gradient_solvers_on_sparse(cluster_client):
    """nesterov and gd take their step size from the Gram sketch of the sparse chunks,
    which equals the dense one: the same iterates, converged or not (80 iterations)."""
    with cluster_client.as_current():
        for estimator, solver, strategy in (
            (daskgd.Ridge, "gd", "mapreduce"),
            (daskgd.Lasso, "nesterov", "direct"),
        ):
            fits = [
                estimator(alpha=0.01, solver=solver, strategy=strategy, max_iter=80).fit(
                    data, Y_REGRESSION
                )
                for data in (X, X.toarray())
            ]
            np.testing.assert_allclose(fits[0].coef_, fits[1].coef_, atol=1e-8)
            assert fits[0].n_iter_ == fits[1].n_iter_


def test_dask_array_of_sparse_blocks(cluster_client):
    blocks = [
        da.from_array(X[i : i + 150], chunks=(150, D), asarray=False) for i in range(0, N, 150)
    ]
    X_dask = da.concatenate(blocks)
    with cluster_client.as_current():
        sparse_fit = daskgd.LogisticRegression(tol=TOL, max_iter=1000).fit(X_dask, Y_BINARY)
        dense_fit = daskgd.LogisticRegression(tol=TOL, max_iter=1000).fit(X.toarray(), Y_BINARY)
        np.testing.assert_allclose(sparse_fit.coef_, dense_fit.coef_, atol=1e-8)
        scores = sparse_fit.decision_function(X_dask)
        assert isinstance(scores, da.Array)
        np.testing.assert_allclose(scores.compute(), dense_fit.decision_function(X.toarray()))
        labels = sparse_fit.predict(X_dask).compute()
        np.testing.assert_array_equal(labels, dense_fit.predict(X.toarray()))


def test_matches_scikit_learn_on_the_same_csr_matrix(local_scheduler):
    from sklearn.linear_model import LogisticRegression

    ours = daskgd.LogisticRegression(C=10.0, tol=1e-9, max_iter=1000).fit(X, Y_BINARY)
    theirs = LogisticRegression(C=10.0, tol=1e-12, max_iter=10_000).fit(X, Y_BINARY)
    np.testing.assert_allclose(ours.coef_, theirs.coef_, atol=1e-5)


# ------------------------------------------------------------------------ bad input


def test_nan_in_sparse_data_is_refused(local_scheduler):
    bad = X.copy()
    bad.data[5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        daskgd.LinearRegression().fit(bad, Y_REGRESSION)
    row = int(np.searchsorted(bad.indptr, 5, side="right") - 1)
    with pytest.raises(ValueError, match=rf"X contains NaN or infinity .*first at row {row}\)"):
        distribute(da.from_array(bad, chunks=(N, D), asarray=False), Y_REGRESSION)


def test_wrong_width_at_predict_is_named(local_scheduler):
    model = daskgd.LinearRegression(max_iter=50).fit(X, Y_REGRESSION)
    with pytest.raises(ValueError, match=f"expecting {D} features"):
        model.predict(sp.random(5, D + 1, density=0.5, format="csr"))
    narrow = da.from_array(X[:, :-1], chunks=(N, D - 1), asarray=False)
    with pytest.raises(ValueError, match=f"expecting {D} features"):
        model.predict(narrow)


# ----------------------------------------------------------------------------- LIBSVM


@pytest.fixture
def libsvm_file(tmp_path):
    path = tmp_path / "train.svm"
    dump_svmlight_file(X, Y_BINARY, str(path))
    return path


def test_libsvm_path_is_read_with_its_labels(local_scheduler, libsvm_file):
    X_dask, y_dask = as_dask_arrays(str(libsvm_file))
    assert X_dask.shape == (N, D)
    np.testing.assert_array_equal(y_dask.compute(), Y_BINARY)
    first = X_dask.blocks[0].compute()
    assert isinstance(first, sp.csr_matrix)
    np.testing.assert_allclose(first.toarray(), X[: first.shape[0]].toarray())


def _cli_fit(path, model_out, *options):
    args = ["run", str(path), *options, "--workers", "1", "--no-progress"]
    assert main([*args, "--model-out", str(model_out)]) == 0
    return daskgd.load_model(model_out)


def test_cli_runs_on_a_libsvm_file(libsvm_file, capsys, tmp_path):
    saved = _cli_fit(libsvm_file, tmp_path / "m.json", "--tol", "1e-10", "--max-iter", "500")
    assert "training accuracy" in capsys.readouterr().out
    reference = daskgd.LogisticRegression(tol=1e-10, max_iter=500)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference.fit(X.toarray(), Y_BINARY)
    np.testing.assert_allclose(saved.coef, reference.coef_, atol=1e-8)
    # --format libsvm reads a file whatever its name
    renamed = tmp_path / "train.txt"
    renamed.write_bytes(libsvm_file.read_bytes())
    again = _cli_fit(renamed, tmp_path / "n.json", "--format", "libsvm", "--max-iter", "5")
    assert again.coef.shape == saved.coef.shape
    bad = tmp_path / "broken.svm"
    bad.write_text("1 3:x\n")
    with pytest.raises(ValueError, match="cannot read .*broken.svm.* as a LIBSVM file"):
        as_dask_arrays(str(bad))
    assert main(["run", str(bad), "--target", "y"]) != 0


@pytest.mark.parametrize(
    ("options", "estimator", "parameters"),
    [
        (["--model", "lasso", "--alpha", "0.01"], "Lasso", {"alpha": 0.01}),
        (["--model", "elasticnet", "--alpha", "0.02", "--l1-ratio", "0.3"],
         "ElasticNet", {"alpha": 0.02, "l1_ratio": 0.3}),
        (["--model", "elasticnet", "--alpha", "0.02"], "ElasticNet", {"alpha": 0.02}),
    ],
)  # fmt: skip
def test_cli_lasso_and_elasticnet_match_scikit_learn(tmp_path, options, estimator, parameters):
    """``--alpha``/``--l1-ratio`` mean scikit-learn's (l1_ratio 0.5 by default)."""
    import sklearn.linear_model

    path = tmp_path / "regression.svm"
    dump_svmlight_file(X, Y_REGRESSION, str(path))
    saved = _cli_fit(path, tmp_path / "m.json", *options, "--tol", "1e-9", "--max-iter", "20000")
    theirs = getattr(sklearn.linear_model, estimator)(**parameters, tol=1e-12, max_iter=100_000)
    theirs.fit(X, Y_REGRESSION)
    np.testing.assert_allclose(saved.coef, theirs.coef_, atol=1e-5)
    np.testing.assert_allclose(saved.intercept, theirs.intercept_, atol=1e-5)


def test_cli_help_shows_the_model_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "lasso (Lasso), elasticnet (ElasticNet)" in text
    assert "scikit-learn's alpha (default: 1)" in text
    assert "default: 0.5, as scikit-learn's ElasticNet" in text
    assert "nesterov for --model lasso and elasticnet" in text


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_wide_sparse_data_gets_its_sketch_when_a_fit_needs_it(cluster_client):
    """Placement skips the sketch of a sparse X wider than 256 columns (lbfgs never
    reads it); gd asks for it and gets the dense copy's curvature: the same iterates."""
    wide = random_csr(400, 300, density=0.05, random_state=5)
    y = wide @ RNG.normal(size=300)
    with cluster_client.as_current():
        assert distribute(wide, y).gram_sketch is None
        fits = [
            daskgd.Ridge(alpha=0.1, solver="gd", max_iter=40).fit(data, y)
            for data in (wide, wide.toarray())
        ]
    np.testing.assert_allclose(fits[0].coef_, fits[1].coef_, atol=1e-8)
