"""Tests of daskgd.data.synthetic: reproducible synthetic data generated on the workers."""

from __future__ import annotations

import pickle

import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster

from daskgd.data import distribute
from daskgd.data.synthetic import make_classification, make_regression

# dashboard_address=None still starts the scheduler's HTTP server, by default on 8787.
pytestmark = pytest.mark.filterwarnings("ignore:Port .* is already in use:UserWarning")

GENERATORS = {
    "classification": lambda **kw: make_classification(**kw),
    "multinomial": lambda **kw: make_classification(n_classes=4, **kw),
    "regression": lambda **kw: make_regression(**kw),
}


@pytest.fixture(scope="module")
def client():
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


@pytest.mark.parametrize("kind", GENERATORS)
def test_same_seed_same_data_on_threads_and_on_a_cluster(kind, client):
    X, y = GENERATORS[kind](n_samples=1_000, n_features=5, chunks=300, random_state=7)
    X_again, y_again = GENERATORS[kind](n_samples=1_000, n_features=5, chunks=300, random_state=7)
    X_threads, y_threads = da.compute(X, y, scheduler="threads")
    X_cluster, y_cluster = client.compute([X_again, y_again], sync=True)
    np.testing.assert_array_equal(X_threads, X_cluster)
    np.testing.assert_array_equal(y_threads, y_cluster)
    assert X.chunks == ((300, 300, 300, 100), (5,)) and y.chunks == (X.chunks[0],)


@pytest.mark.parametrize("kind", GENERATORS)
def test_different_seeds_give_different_data(kind):
    X, y = GENERATORS[kind](n_samples=500, n_features=4, chunks=100, random_state=1)
    X_other, y_other = GENERATORS[kind](n_samples=500, n_features=4, chunks=100, random_state=2)
    assert X.name != X_other.name
    assert not np.array_equal(X.compute(), X_other.compute())
    assert not np.array_equal(y.compute(), y_other.compute())


def test_chunks_draw_independent_streams():
    X = make_regression(n_samples=400, n_features=3, chunks=100)[0].compute()
    blocks = X.reshape(4, 100, 3)
    assert not any(np.array_equal(blocks[0], block) for block in blocks[1:])


def test_no_data_goes_through_the_graph():
    X, y = make_classification(n_samples=1_000_000, n_features=20, chunks=100_000)
    size = len(pickle.dumps((dict(X.__dask_graph__()), dict(y.__dask_graph__()))))
    assert size < 50_000  # 160 MB of data, a graph of seeds, scales and coefficients


def test_default_chunks():
    assert make_regression(n_samples=1_000, n_features=2)[0].chunks[0] == (125,) * 8
    assert make_regression(n_samples=3, n_features=2)[0].chunks[0] == (1, 1, 1)
    X, _ = make_classification(n_samples=2_000_000, n_features=2)
    assert X.chunks[0] == (100_000,) * 20


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_labels_have_all_classes_and_follow_the_model(n_classes):
    X, y, coef = make_classification(
        n_samples=4_000, n_features=6, n_classes=n_classes, chunks=1_000, return_coef=True
    )
    X, y = da.compute(X, y, scheduler="threads")
    assert y.dtype == np.int64 and set(np.unique(y)) == set(range(n_classes))
    assert coef.shape == ((6,) if n_classes == 2 else (n_classes, 6))
    logits = X @ coef.T
    predicted = (logits > 0).astype(int) if n_classes == 2 else logits.argmax(axis=1)
    # Bayes-optimal predictions beat guessing the most frequent class by a wide margin.
    assert np.mean(predicted == y) > np.bincount(y).max() / len(y) + 0.15


def test_zero_noise_gives_the_deterministic_labels():
    X, y, coef = make_classification(
        n_samples=1_000, n_features=3, n_classes=3, noise=0, return_coef=True
    )
    np.testing.assert_array_equal(y.compute(), (X @ coef.T).argmax(axis=1).compute())


def test_feature_scale_scales_columns_and_coefficients():
    scale = np.array([1.0, 10.0, 0.1])
    X, y, coef = make_classification(
        n_samples=20_000, n_features=3, feature_scale=scale, return_coef=True, random_state=3
    )
    _, y_unit, coef_unit = make_classification(
        n_samples=20_000, n_features=3, return_coef=True, random_state=3
    )
    np.testing.assert_allclose(X.std(axis=0).compute(), scale, rtol=0.03)
    np.testing.assert_allclose(coef, coef_unit / scale)
    np.testing.assert_array_equal(y.compute(), y_unit.compute())


def test_regression_target_follows_the_linear_model():
    X, y, coef = make_regression(
        n_samples=5_000, n_features=8, chunks=1_000, noise=0.5, intercept=3.0, return_coef=True
    )
    X, y = da.compute(X, y, scheduler="threads")
    assert y.dtype == np.float64 and coef.shape == (8,)
    residual = y - (X @ coef + 3.0)
    assert np.corrcoef(y, X @ coef)[0, 1] > 0.95
    assert abs(residual.std() - 0.5) < 0.03 and abs(residual.mean()) < 0.05


def test_generated_data_distributes_evenly(client):
    X, y = make_regression(n_samples=8_000, n_features=4, chunks=1_000)
    data = distribute(X, y, client)
    assert [data.placement.count(address) for address in sorted(set(data.placement))] == [4, 4]
    np.testing.assert_array_equal(client.compute(data.y).result()[:, 0], y.compute())


@pytest.mark.parametrize(
    ("arguments", "name"),
    [
        ({"n_samples": 0}, "n_samples"),
        ({"n_samples": 2.5}, "n_samples"),
        ({"n_features": 0}, "n_features"),
        ({"chunks": 0}, "chunks"),
        ({"noise": -1.0}, "noise"),
        ({"noise": float("nan")}, "noise"),
        ({"random_state": -1}, "random_state"),
        ({"random_state": "seed"}, "random_state"),
        ({"feature_scale": [1.0, 2.0]}, "feature_scale"),
        ({"feature_scale": 0.0}, "feature_scale"),
    ],
)
@pytest.mark.parametrize("generator", [make_classification, make_regression])
def test_bad_arguments_raise_value_errors_naming_them(generator, arguments, name):
    with pytest.raises(ValueError, match=name):
        generator(**{"n_samples": 10, "n_features": 3, **arguments})


def test_classification_needs_two_classes():
    with pytest.raises(ValueError, match="n_classes must be an integer >= 2"):
        make_classification(n_samples=10, n_features=3, n_classes=1)
