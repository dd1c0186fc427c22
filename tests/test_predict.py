"""A model given back: ``daskgd.save_model``/``load_model``, ``daskgd run --model-out`` and
``daskgd predict``, checked against scikit-learn predicting with the same coefficients."""

from __future__ import annotations

import json
import subprocess
import sys

import dask.array as da
import numpy as np
import pytest
from cli_helpers import run_main

import daskgd
from daskgd.estimators.persist import load_model, save_model

sklearn_datasets = pytest.importorskip("sklearn.datasets")
sklearn_linear = pytest.importorskip("sklearn.linear_model")

CLI = [sys.executable, "-m", "daskgd.cli"]


def run_cli(*arguments, cwd=None, timeout=240):
    return subprocess.run(
        [*CLI, *map(str, arguments)], capture_output=True, text=True, timeout=timeout, cwd=cwd
    )


def _sklearn_twin(saved):
    """A scikit-learn estimator carrying the saved coefficients: the independent predictor."""
    if saved.classes is None:
        twin = sklearn_linear.LinearRegression()
    else:
        twin = sklearn_linear.LogisticRegression()
        twin.classes_ = saved.classes
    twin.coef_, twin.intercept_ = saved.coef, saved.intercept
    return twin


def _as_dask(X, y, rows=100):
    return da.from_array(X, chunks=(rows, X.shape[1])), da.from_array(y, chunks=rows)


def test_multinomial_with_string_labels_round_trips(local_scheduler, tmp_path):
    X, y = sklearn_datasets.load_iris(return_X_y=True)
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    model = daskgd.LogisticRegression(C=0.5, tol=1e-8, max_iter=500).fit(*_as_dask(X, names))
    path = save_model(model, tmp_path / "iris.json", feature_names=["sl", "sw", "pl", "pw"])
    saved = daskgd.load_model(path)
    assert saved.estimator == "LogisticRegression" and saved.task == "classification"
    assert saved.classes.tolist() == ["setosa", "versicolor", "virginica"]
    assert saved.feature_names == ["sl", "sw", "pl", "pw"]
    assert saved.params["C"] == 0.5 and saved.params["max_iter"] == 500
    assert "client" not in saved.params
    np.testing.assert_array_equal(saved.coef, model.coef_)  # bit for bit through JSON
    twin = _sklearn_twin(saved)
    np.testing.assert_array_equal(saved.predict(X), twin.predict(X))
    np.testing.assert_allclose(saved.predict_proba(X), twin.predict_proba(X), rtol=1e-12)
    np.testing.assert_array_equal(saved.predict(X), model.predict(X))


def test_binary_and_regression_round_trip(local_scheduler, tmp_path):
    X, y = sklearn_datasets.load_breast_cancer(return_X_y=True)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    binary = daskgd.LogisticRegression(tol=1e-8).fit(*_as_dask(X, y))
    saved = load_model(save_model(binary, tmp_path / "b.json"))
    twin = _sklearn_twin(saved)
    np.testing.assert_array_equal(saved.predict(X), twin.predict(X))
    np.testing.assert_allclose(saved.predict_proba(X), twin.predict_proba(X), rtol=1e-12)
    # lazy on dask input, same values
    lazy = saved.predict(da.from_array(X, chunks=(100, X.shape[1])))
    assert isinstance(lazy, da.Array)
    np.testing.assert_array_equal(lazy.compute(), twin.predict(X))

    Xr, yr = sklearn_datasets.load_diabetes(return_X_y=True)
    ridge = daskgd.Ridge(alpha=0.1).fit(*_as_dask(Xr, yr))
    saved = load_model(save_model(ridge, tmp_path / "r.json"))
    assert saved.task == "regression" and saved.classes is None
    np.testing.assert_allclose(saved.predict(Xr), _sklearn_twin(saved).predict(Xr), rtol=1e-12)
    with pytest.raises(ValueError, match="regression model: it has no probabilities"):
        saved.predict_proba(Xr)
    with pytest.raises(ValueError, match=r"X must have shape \(n_samples, 10\)"):
        saved.predict(Xr[:, :3])


def test_bad_model_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="model file .*nope.json' does not exist"):
        load_model(tmp_path / "nope.json")
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not a daskgd model file"):
        load_model(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"format": "daskgd-model", "format_version": 9}))
    with pytest.raises(ValueError, match="model format version 9; this daskgd reads version 1"):
        load_model(tmp_path / "b.json")
    with pytest.raises(ValueError, match="is not fitted"):
        save_model(daskgd.Ridge(), tmp_path / "c.json")


@pytest.fixture(scope="module")
def npy_problem(tmp_path_factory):
    folder = tmp_path_factory.mktemp("npy")
    rng = np.random.default_rng(5)
    X = rng.standard_normal((3000, 4))
    y = (X @ [1.0, -2.0, 0.5, 0.0] + 0.1 * rng.standard_normal(3000) > 0).astype(np.int64)
    np.save(folder / "X.npy", X)
    np.save(folder / "y.npy", y)
    return folder


def test_run_with_relative_paths_against_workers_elsewhere_then_predict(
    scheduler_processes, npy_problem
):
    # The workers of scheduler_processes run in another folder: relative paths must be
    # resolved here, where the user typed them.
    result = run_cli(
        "run", "X.npy", "--target", "y.npy", "--scheduler", scheduler_processes,
        "--model-out", "model.json", "--tol", "1e-8", "--no-progress", cwd=npy_problem,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "training accuracy: " in result.stdout
    for row in ("x0 ", "x3 ", "(intercept) "):
        assert any(line.startswith(row) for line in result.stdout.splitlines()), result.stdout
    saved = load_model(npy_problem / "model.json")
    assert saved.params["solver"] == "lbfgs" and saved.fit["converged"] is True

    X, y = np.load(npy_problem / "X.npy"), np.load(npy_problem / "y.npy")
    reference = sklearn_linear.LogisticRegression(tol=1e-10, max_iter=10_000).fit(X, y)
    np.testing.assert_allclose(saved.coef, reference.coef_, rtol=1e-3, atol=1e-4)
    accuracy = float(result.stdout.split("training accuracy: ")[1].split()[0])
    assert accuracy == pytest.approx(reference.score(X, y), abs=2e-3)

    result = run_cli("predict", "model.json", "X.npy", "-o", "labels.npy", cwd=npy_problem)
    assert result.returncode == 0, result.stderr
    expected = _sklearn_twin(saved).predict(X)
    np.testing.assert_array_equal(np.load(npy_problem / "labels.npy"), expected)

    result = run_cli("predict", "model.json", "X.npy", "-o", "p.csv", "--proba", cwd=npy_problem)
    assert result.returncode == 0, result.stderr
    table = np.loadtxt(npy_problem / "p.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(table, _sklearn_twin(saved).predict_proba(X), rtol=1e-12)
    header = (npy_problem / "p.csv").read_text().splitlines()[0]
    assert header.startswith("p_0") and ",p_1" in header


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["predict", "missing.json", "X.npy", "-o", "o.npy"], "model file 'missing.json'"),
        (["predict", "X.npy", "X.npy", "-o", "o.npy"], "is not a daskgd model file"),
        (["predict", "m.json", "X.npy", "-o", "o.txt"], "write predictions to a .npy or .csv"),
        (["run", "X.npy", "--target", "y.npy", "--model-out", "no/such/m.json"], "folder"),
    ],
)
def test_predict_and_model_out_errors_are_one_line(
    capsys, monkeypatch, no_cluster, npy_problem, arguments, message
):
    monkeypatch.chdir(npy_problem)
    status, _, err = run_main(capsys, *arguments)
    assert status == 2, err
    assert err.count("\n") == 1 and message in err, err
