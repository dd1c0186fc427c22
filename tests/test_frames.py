"""Tables and labelled data as inputs: pandas / dask DataFrames, CSV, Parquet, xarray.

The oracle is the same fit on the plain numpy array (and scikit-learn on it).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import daskgd
from daskgd.cli import main
from daskgd.data import as_dask_arrays

dd = pytest.importorskip("dask.dataframe")

RNG = np.random.default_rng(0)
X = RNG.normal(size=(300, 3))
Y = (X @ [1.0, -2.0, 0.5] + RNG.normal(size=300) > 0).astype(int)
COLUMNS = ["a", "b", "c"]


@pytest.fixture(scope="module")
def table():
    frame = pd.DataFrame(X, columns=COLUMNS)
    frame["label"] = Y
    return frame


@pytest.fixture(scope="module")
def reference():
    return daskgd.LogisticRegression(tol=1e-10, max_iter=500).fit(X, Y)


def _fit(X, y=None, **options):
    return daskgd.LogisticRegression(tol=1e-10, max_iter=500).fit(X, y, **options)


def test_pandas_frame_names_the_features(local_scheduler, table, reference):
    model = _fit(table[COLUMNS], table["label"])
    np.testing.assert_array_equal(model.feature_names_in_, COLUMNS)
    np.testing.assert_allclose(model.coef_, reference.coef_, rtol=1e-10)
    by_name = _fit(table, target="label")  # every other column is a feature
    np.testing.assert_array_equal(by_name.feature_names_in_, COLUMNS)
    np.testing.assert_allclose(by_name.coef_, reference.coef_, rtol=1e-10)
    coefficients = model.coefficients()
    assert coefficients.dims == ("class", "feature")
    assert list(coefficients["feature"].values) == COLUMNS
    assert float(coefficients.sel(feature="b", **{"class": 1})) == model.coef_[0, 1]


def test_pandas_bad_columns_are_named(local_scheduler, table):
    model = _fit(table[COLUMNS], table["label"])
    with pytest.raises(ValueError, match=r"(?s)unseen at fit time:\n- d.*missing:\n- c"):
        model.predict(table[["a", "b"]].assign(d=1.0))
    text = table[COLUMNS].assign(c=["x"] * len(table))
    with pytest.raises(TypeError, match=r"non-numeric columns 'c'"):
        _fit(text, table["label"])
    with pytest.raises(ValueError, match=r"no column \['z'\]"):
        _fit(table, target="label", features=["a", "z"])
    with pytest.raises(ValueError, match=r"target: no column 'y'"):
        _fit(table, target="y")
    with pytest.raises(ValueError, match="Input X contains NaN"):
        _fit(table[COLUMNS].where(table["a"] > -2), table["label"])


def test_dask_frame_with_unknown_partition_sizes(cluster_client, tmp_path, table, reference):
    path = tmp_path / "table.csv"
    table.to_csv(path, index=False)
    frame = dd.read_csv(path, blocksize=2_000)  # several partitions of unknown length
    assert frame.npartitions > 2 and not frame.known_divisions
    with cluster_client.as_current():
        model = _fit(frame[COLUMNS], frame["label"])
        predicted = model.predict(frame)  # picks the fitted columns by name
        np.testing.assert_array_equal(predicted.compute(), reference.predict(X))
        with pytest.raises(ValueError, match=r"no column \['c'\]"):
            model.predict(frame[["a", "b"]])
        with pytest.raises(TypeError, match=r"non-numeric columns 'a'"):
            _fit(frame[COLUMNS].assign(a="x"), frame["label"])
    np.testing.assert_array_equal(model.feature_names_in_, COLUMNS)
    np.testing.assert_allclose(model.coef_, reference.coef_, rtol=1e-8)


def test_dataset_never_uses_the_target_as_a_feature(local_scheduler, reference):
    dataset = xr.Dataset({name: ("sample", X[:, i]) for i, name in enumerate(COLUMNS)})
    dataset["label"] = ("sample", Y)
    model = _fit(dataset, dataset["label"])
    assert model.coef_.shape == (1, 3)
    np.testing.assert_array_equal(model.feature_names_in_, COLUMNS)
    np.testing.assert_allclose(model.coef_, reference.coef_, rtol=1e-10)
    chosen = _fit(dataset, target="label", features=["a", "c"])
    np.testing.assert_array_equal(chosen.feature_names_in_, ["a", "c"])
    np.testing.assert_allclose(chosen.coef_, _fit(X[:, [0, 2]], Y).coef_, rtol=1e-10)
    np.testing.assert_array_equal(model.predict(dataset), reference.predict(X))


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_daskgd_run_on_a_table(tmp_path, capsys, table, kind):
    path = tmp_path / f"table.{kind}"
    table.to_csv(path, index=False) if kind == "csv" else table.to_parquet(path)
    options = ["--no-progress", "--workers", "1", "--max-iter", "50"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["run", str(path), "--target", "label", "--features", "a", "b", *options]) == 0
    assert "iteration" in capsys.readouterr().out.lower()
    assert main(["run", str(path), "--target", "nope", *options]) == 2
    assert "no column 'nope'" in capsys.readouterr().err
    # A continuous column as the target of --model logistic: refused, not 11 minutes of
    # encoding hundreds of "classes".
    assert main(["run", str(path), "--target", "a", *options]) == 2
    assert "Unknown label type: continuous" in capsys.readouterr().err


def test_a_table_is_never_read_as_a_pickle(tmp_path, capsys):
    path = tmp_path / "X.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="is a table") as error:
        daskgd.LogisticRegression().fit(str(path), [0])
    assert "pickle" not in str(error.value)
    weird = tmp_path / "X.bin"
    weird.write_bytes(b"\x80\x04junk")
    with pytest.raises(ValueError) as error:
        as_dask_arrays(str(weird))
    assert "pickle" not in str(error.value)
