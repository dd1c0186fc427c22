"""Tests of daskgd.data: sources, validation, labels, placement on real clusters."""

from __future__ import annotations

import os
import time
import warnings
from collections import Counter
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from distributed import Client, LocalCluster

from daskgd.data import (
    DistributedData,
    as_dask_arrays,
    current_client,
    distribute,
    encode_labels,
)

N_SAMPLES, N_FEATURES = 80, 3

# dashboard_address=None still starts the scheduler's HTTP server, by default on 8787.
pytestmark = pytest.mark.filterwarnings("ignore:Port .* is already in use:UserWarning")


def _cluster(n_workers, processes=False):
    return LocalCluster(
        n_workers=n_workers, threads_per_worker=1, processes=processes, dashboard_address=None
    )


@pytest.fixture(scope="module")
def client():
    # Not the default client: tests without a client must see none.
    with _cluster(2) as cluster, Client(cluster, set_as_default=False) as client:
        yield client


@pytest.fixture(scope="module")
def client3():
    with _cluster(3) as cluster, Client(cluster, set_as_default=False) as client:
        yield client


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(42)
    return rng.standard_normal((N_SAMPLES, N_FEATURES)), rng.standard_normal(N_SAMPLES)


def _runs(placement):
    """Lengths of the runs of equal consecutive workers."""
    runs = [1]
    for previous, current in zip(placement, placement[1:], strict=False):
        if current == previous:
            runs[-1] += 1
        else:
            runs.append(1)
    return runs


def _assert_placed(client, data):
    """Each chunk of X and y is held by its placement worker; values are intact."""
    holders = client.who_has(list(data.futures))
    X_keys = [key for row in data.X.__dask_keys__() for key in row]
    y_keys = [key for row in data.y.__dask_keys__() for key in row]
    for index, address in enumerate(data.placement):
        assert holders[X_keys[index]] == [address]
        assert holders[y_keys[index]] == [address]


# ----------------------------------------------------------------------- placement


def test_eight_chunks_on_two_workers_are_four_and_four_contiguous(client, arrays):
    X, y = arrays
    data = distribute(*as_dask_arrays(X, y, chunks=10), client)
    assert isinstance(data, DistributedData)
    assert data.n_chunks == 8 and data.chunk_rows == (10,) * 8
    assert _runs(data.placement) == [4, 4]
    assert set(data.placement) == set(client.nthreads())
    assert data.chunks_per_worker == 4
    _assert_placed(client, data)
    np.testing.assert_array_equal(client.compute(data.X).result(), X)
    np.testing.assert_array_equal(client.compute(data.y).result(), y[:, None])


def test_seven_chunks_on_three_workers_are_three_two_two(client3, arrays):
    X, y = arrays
    data = distribute(*as_dask_arrays(X, y, chunks=12), client3)
    assert data.n_chunks == 7
    assert sorted(_runs(data.placement)) == [2, 2, 3]
    assert len(set(data.placement)) == 3
    _assert_placed(client3, data)


def test_workers_restricts_placement_to_those_workers(client, arrays):
    X, y = arrays
    first, second = sorted(client.nthreads())
    data = distribute(*as_dask_arrays(X, y, chunks=10), client, workers=[second])
    assert data.placement == (second,) * 8
    _assert_placed(client, data)
    np.testing.assert_array_equal(client.compute(data.X).result(), X)
    # chunks_per_worker counts only the chosen workers
    data = distribute(X, y, client, chunks_per_worker=3, workers=[first])
    assert data.placement == (first,) * 3


def test_workers_must_be_known_and_non_empty(client, arrays):
    X, y = arrays
    (first, _) = sorted(client.nthreads())
    with pytest.raises(ValueError, match="tcp://10.255.0.1:1"):
        distribute(X, y, client, workers=[first, "tcp://10.255.0.1:1"])
    with pytest.raises(ValueError, match="empty"):
        distribute(X, y, client, workers=[])
    with pytest.raises(ValueError, match="sequence of worker addresses"):
        distribute(X, y, client, workers=first)


def test_w_is_broadcast_only_to_the_workers_holding_chunks(client, arrays):
    from daskgd.models.losses import LeastSquares
    from daskgd.models.penalties import make_penalty
    from daskgd.strategies import FitProblem, MapReduce

    X, y = arrays
    _, second = sorted(client.nthreads())
    data = distribute(X, y, client, workers=[second])
    problem = FitProblem(data, LeastSquares(), True, make_penalty(None, 0.0))
    with MapReduce(tune_cluster=False).session(problem) as session:
        weights = session._broadcast(np.zeros(N_FEATURES + 1), "daskgd-test-broadcast")
        assert client.who_has([weights])[weights.key] == [second]
        assert session.evaluate(np.zeros(N_FEATURES + 1)).n_rows == N_SAMPLES


def test_chunks_per_worker_rechunks_into_nearly_equal_blocks(client, arrays):
    X, y = arrays
    data = distribute(X[:79], y[:79], client, chunks_per_worker=3)
    assert data.chunk_rows == (14, 13, 13, 13, 13, 13)
    assert _runs(data.placement) == [3, 3]
    assert data.chunks_per_worker == 3
    _assert_placed(client, data)


def test_fewer_chunks_than_workers_are_split_one_per_worker(client, arrays):
    data = distribute(*arrays, client)  # numpy input this small is one "auto" chunk
    assert data.chunk_rows == (40, 40)
    assert _runs(data.placement) == [1, 1]
    _assert_placed(client, data)


def _slow_second_half(block, block_info=None):
    time.sleep(0.2 if block_info[0]["chunk-location"][0] >= 4 else 0.0)
    return block


def test_uneven_chunk_costs_do_not_let_work_stealing_move_chunks(client, arrays):
    # A worker finishing early goes idle and steals queued tasks, even restricted ones
    # (allow_other_workers): the chunks must still end up where they were sent.
    X, y = arrays
    slow = da.from_array(X, chunks=(10, 3)).map_blocks(_slow_second_half, dtype=X.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        data = distribute(slow, y, client)
    assert _runs(data.placement) == [4, 4]
    _assert_placed(client, data)


def test_data_persisted_on_one_worker_is_moved_to_its_assigned_workers(client, arrays):
    X, y = arrays
    first = sorted(client.nthreads())[0]
    X_dask = client.persist(da.from_array(X, chunks=(10, 3)), workers=[first])
    data = distribute(X_dask, y, client)
    assert _runs(data.placement) == [4, 4]
    _assert_placed(client, data)
    np.testing.assert_array_equal(client.compute(data.X).result(), X)


def test_killed_worker_chunks_are_recomputed_from_lineage(arrays):
    X, y = arrays
    with _cluster(2, processes=True) as cluster, Client(cluster, set_as_default=False) as client:
        data = distribute(*as_dask_arrays(X, y, chunks=10), client)
        victim = data.placement[-1]
        client.run(os._exit, 0, workers=[victim], on_error="ignore")
        deadline = time.monotonic() + 30
        while victim in client.nthreads() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert victim not in client.nthreads()
        np.testing.assert_array_equal(client.compute(data.X).result(), X)
        np.testing.assert_array_equal(client.compute(data.y).result(), y[:, None])


def test_statistics_and_dtypes(client, arrays):
    X, y = arrays
    data = distribute(X.astype(np.float32), y.astype(np.int64), client)
    assert data.X.dtype == np.float32 and data.y.dtype == np.float64
    assert data.y.shape == (N_SAMPLES, 1) and data.y.chunks[0] == data.X.chunks[0]
    X32 = X.astype(np.float32).astype(np.float64)
    assert data.squared_norm == pytest.approx(np.sum(X32**2), rel=1e-12)
    assert data.max_row_squared_norm == pytest.approx(np.max(np.sum(X32**2, axis=1)))
    assert (data.n_samples, data.n_features, data.client) == (N_SAMPLES, N_FEATURES, client)


def test_without_client_uses_the_local_scheduler(arrays, local_scheduler):
    X, y = arrays
    assert current_client() is None
    data = distribute(X, y, chunks_per_worker=4)
    assert data.placement is None and data.client is None and data.futures == ()
    assert data.chunk_rows == (20,) * 4 and data.chunks_per_worker == 4
    np.testing.assert_array_equal(data.X.compute(scheduler="threads"), X)
    assert data.squared_norm == pytest.approx(np.sum(X**2))


def test_current_client(cluster_client, local_scheduler):
    assert current_client(cluster_client) is cluster_client
    assert current_client() is None
    with cluster_client.as_current():
        assert current_client() is cluster_client


def test_cluster_without_workers_raises_runtime_error(arrays):
    with _cluster(0) as cluster, Client(cluster, set_as_default=False) as empty:
        with pytest.raises(RuntimeError, match="no workers"):
            distribute(*arrays, empty)


@pytest.mark.parametrize(
    ("name", "row", "message"),
    [
        ("X", 37, r"X contains NaN or infinity \(chunk 3, rows 30-39, first at row 37\)"),
        ("y", 5, r"y contains NaN or infinity \(chunk 0, rows 0-9, first at row 5\)"),
    ],
)
def test_non_finite_values_are_reported_and_the_cluster_stays_usable(
    client, arrays, name, row, message
):
    X, y = (array.copy() for array in arrays)
    if name == "X":
        X[row, 1] = np.nan
    else:
        y[row] = -np.inf
    with pytest.raises(ValueError, match=message):
        distribute(*as_dask_arrays(X, y, chunks=10), client)
    assert client.submit(sum, [1, 2]).result() == 3
    data = distribute(*as_dask_arrays(*arrays, chunks=10), client)
    np.testing.assert_array_equal(client.compute(data.X).result(), arrays[0])


# ------------------------------------------------------------------------- sources


def _write_sources(directory, X, y):
    np.save(directory / "X.npy", X)
    np.save(directory / "y.npy", y)
    group = zarr.open_group(str(directory / "store.zarr"), mode="w")
    group.create_array("X", data=X, chunks=(7, N_FEATURES))
    group.create_array("y", data=y, chunks=(11,))
    group.create_array("f0", data=X[:, 0], chunks=(20,))
    group.create_array("f12", data=X[:, 1:], chunks=(20, 2))
    return directory


@pytest.fixture(scope="module")
def source_directory(tmp_path_factory, arrays):
    return _write_sources(tmp_path_factory.mktemp("sources"), *arrays)


SOURCES = {
    "numpy": lambda X, y, d: ((X, y), {}),
    "dask": lambda X, y, d: ((da.from_array(X, chunks=(30, 2)), da.from_array(y, 17)), {}),
    "DataArray": lambda X, y, d: (
        (xr.DataArray(X, dims=("s", "f")), xr.DataArray(y, dims="s")),
        {},
    ),
    "Dataset columns": lambda X, y, d: (
        (
            xr.Dataset(
                {
                    "a": ("s", X[:, 0]),
                    "b": ("s", X[:, 1]),
                    "t": ("s", y),
                    "c": ("s", X[:, 2]),
                    "other": ("k", [1.0, 2.0]),
                }
            ),
        ),
        {"target": "t"},
    ),
    "Dataset 2-D variable": lambda X, y, d: (
        (xr.Dataset({"features": (("f", "s"), X.T), "t": ("s", y)}).chunk({"s": 25}),),
        {"target": "t", "features": "features"},
    ),
    "npy paths": lambda X, y, d: ((str(d / "X.npy"), d / "y.npy"), {}),
    "zarr group": lambda X, y, d: ((d / "store.zarr",), {}),
    "zarr arrays": lambda X, y, d: (
        (str(d / "store.zarr"),),
        {"features": ["f0", "f12"], "target": "y"},
    ),
    "zarr X, npy y": lambda X, y, d: ((str(d / "store.zarr"), d / "y.npy"), {}),
}


@pytest.mark.parametrize("kind", SOURCES)
def test_every_source_gives_the_same_aligned_arrays(kind, arrays, source_directory):
    X, y = arrays
    positional, keywords = SOURCES[kind](X, y, source_directory)
    X_dask, y_dask = as_dask_arrays(*positional, **keywords, chunks=16)
    assert isinstance(X_dask, da.Array) and isinstance(y_dask, da.Array)
    assert X_dask.chunks == ((16,) * 5, (N_FEATURES,))
    assert y_dask.chunks == (X_dask.chunks[0],)
    assert X_dask.dtype == y_dask.dtype == np.float64
    np.testing.assert_array_equal(X_dask.compute(scheduler="threads"), X)
    np.testing.assert_array_equal(y_dask.compute(scheduler="threads"), y)


@pytest.mark.parametrize("kind", ["npy paths", "zarr group", "Dataset 2-D variable"])
def test_lazy_sources_distribute_on_the_cluster(client, kind, arrays, source_directory):
    # Their tasks (file reads, zarr arrays) are serialized to the scheduler and workers.
    X, y = arrays
    positional, keywords = SOURCES[kind](X, y, source_directory)
    data = distribute(*as_dask_arrays(*positional, **keywords, chunks=20), client)
    assert _runs(data.placement) == [2, 2]
    np.testing.assert_array_equal(client.compute(data.X).result(), X)
    np.testing.assert_array_equal(client.compute(data.y).result(), y[:, None])


def test_npy_source_is_read_by_the_tasks_not_embedded(source_directory):
    X_dask, _ = as_dask_arrays(source_directory / "X.npy", chunks=10)
    graph = dict(X_dask.__dask_graph__())
    assert len(graph) == 8
    assert not any(isinstance(value, np.ndarray) for value in graph.values())


def test_default_chunks_keep_dask_rows_and_align_y(arrays):
    X, y = arrays
    X_dask, y_dask = as_dask_arrays(da.from_array(X, chunks=(30, 1)), y)
    assert X_dask.chunks == ((30, 30, 20), (N_FEATURES,))
    assert y_dask.chunks == ((30, 30, 20),)
    X_numpy, y_none = as_dask_arrays(X)
    assert X_numpy.chunks == ((N_SAMPLES,), (N_FEATURES,)) and y_none is None


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (np.float32, np.float32),
        (np.float64, np.float64),
        (np.float16, np.float64),
        (np.int32, np.float64),
        (np.uint8, np.float64),
        (bool, np.float64),
    ],
)
def test_dtype_conversion(dtype, expected):
    X_dask, y_dask = as_dask_arrays(np.ones((4, 2), dtype=dtype), np.ones(4, dtype=dtype))
    assert X_dask.dtype == expected and y_dask.dtype == np.float64


def test_labels_keep_their_dtype():
    _, y_dask = as_dask_arrays(np.ones((3, 2)), np.array(["a", "b", "a"]), labels=True)
    assert y_dask.dtype.kind == "U"
    _, y_dask = as_dask_arrays(np.ones((3, 2)), np.array([1, 2, 1]), labels=True)
    assert y_dask.dtype == np.int64


# ------------------------------------------------------------------------ bad input

X_OK, Y_OK = np.ones((100, 3)), np.ones(100)
BAD_INPUTS = {
    "X 1-D": (
        (np.ones(5),),
        ValueError,
        r"X must be 2-D \(n_samples, n_features\), got shape "
        r"\(5,\)",
    ),
    "X 3-D": ((np.ones((2, 2, 2)),), ValueError, r"X must be 2-D .* \(2, 2, 2\)"),
    "y 2-D": ((X_OK, np.ones((100, 1))), ValueError, r"y must be 1-D .* \(100, 1\)"),
    "y rows": ((X_OK, np.ones(99)), ValueError, "y has 99 rows but X has 100"),
    "no rows": ((np.ones((0, 3)),), ValueError, "X has no rows"),
    "no features": ((np.ones((5, 0)),), ValueError, "X has no columns"),
    "object X": ((np.ones((2, 2), dtype=object),), TypeError, "X has non-numeric dtype object"),
    "str X": ((np.array([["a", "b"]]),), TypeError, "X has non-numeric dtype <U1"),
    "complex X": ((np.ones((2, 2), dtype=complex),), TypeError, "X .* complex128"),
    "datetime X": ((np.zeros((2, 2), dtype="datetime64[s]"),), TypeError, "X .*datetime64"),
    "str y": ((X_OK, np.array(["a"] * 100)), TypeError, "y has non-numeric .*encode_labels"),
    "dask complex y": ((X_OK, da.ones(100, dtype=complex)), TypeError, "y .* complex"),
    "unknown rows": ((da.ones((10, 2))[da.ones(10) > 0],), ValueError, "unknown chunk sizes"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_raise_errors_naming_the_input(case):
    positional, error, message = BAD_INPUTS[case]
    with pytest.raises(error, match=message):
        as_dask_arrays(*positional)


def test_missing_paths_raise_file_not_found(tmp_path):
    for name in ("absent.npy", "absent.zarr"):
        with pytest.raises(FileNotFoundError, match=f"X: .*{name}"):
            as_dask_arrays(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="y: .*absent.npy"):
        as_dask_arrays(X_OK, str(tmp_path / "absent.npy"))


def test_unreadable_npy_file_raises_value_error(tmp_path):
    path = tmp_path / "garbage.npy"
    path.write_bytes(b"not an array")
    with pytest.raises(ValueError, match="cannot read .* as a .npy file"):
        as_dask_arrays(path)


def test_dataset_without_target_lists_its_variables():
    dataset = xr.Dataset({"a": ("s", [1.0, 2.0]), "b": ("s", [3.0, 4.0])})
    with pytest.raises(ValueError, match=r"no target variable 'label'.*\['a', 'b'\]"):
        as_dask_arrays(dataset, target="label")
    with pytest.raises(ValueError, match=r"no variables \['c'\].*\['a', 'b'\]"):
        as_dask_arrays(dataset, features=["a", "c"])
    with pytest.raises(TypeError, match=r"X \(variable 'a'\) has non-numeric"):
        as_dask_arrays(dataset.assign(a=("s", ["x", "y"])), target="b")


def test_zarr_group_without_the_array_lists_its_arrays(source_directory):
    with pytest.raises(ValueError, match=r"no array 'label'.*\['X', 'f0', 'f12', 'y'\]"):
        as_dask_arrays(source_directory / "store.zarr", target="label")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"chunks": 0}, "chunks must be a positive integer"),
        ({"chunks": 2.5}, "chunks must be a positive integer"),
        ({"target": "t"}, "only apply to an xarray.Dataset or a zarr group"),
    ],
)
def test_bad_keyword_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        as_dask_arrays(X_OK, **arguments)


def test_distribute_rejects_bad_chunks_per_worker_and_missing_y(arrays):
    with pytest.raises(ValueError, match="chunks_per_worker must be a positive integer"):
        distribute(*arrays, chunks_per_worker=0)
    with pytest.raises(ValueError, match="y is required"):
        distribute(arrays[0], None)


# -------------------------------------------------------------------------- labels


@pytest.mark.parametrize(
    ("labels", "classes", "encoded"),
    [
        (np.array([3, 1, 3, 7]), [1, 3, 7], [1, 0, 1, 2]),
        (np.array([True, False, True]), [False, True], [1, 0, 1]),
        (np.array([0.5, -1.0, 0.5]), [-1.0, 0.5], [1, 0, 1]),
        (np.array(["cat", "ant", "cat", "bee"]), ["ant", "bee", "cat"], [2, 0, 2, 1]),
        (
            da.from_array(np.array(["b", "a", "b", "c"], dtype=object), chunks=2),
            ["a", "b", "c"],
            [1, 0, 1, 2],
        ),
        (xr.DataArray([2, 9, 9]), [2, 9], [0, 1, 1]),
    ],
)
def test_encode_labels(labels, classes, encoded):
    found, y_encoded = encode_labels(labels)
    assert found.tolist() == classes
    assert isinstance(y_encoded, da.Array) and y_encoded.dtype == np.float64
    np.testing.assert_array_equal(y_encoded.compute(scheduler="threads"), encoded)


def test_encode_labels_keeps_the_chunks_of_y():
    labels = da.from_array(np.arange(10) % 3, chunks=4)
    _, y_encoded = encode_labels(labels)
    assert y_encoded.chunks == labels.chunks


@pytest.mark.parametrize(
    ("labels", "error", "message"),
    [
        (np.array([4, 4, 4]), ValueError, r"y has a single class \(4\): classification needs"),
        (np.array([0.0, np.nan, 1.0]), ValueError, "y contains NaN or infinity"),
        (np.array([0.0, np.inf, 1.0]), ValueError, "y contains NaN or infinity"),
        (np.array([1 + 1j, 2j]), TypeError, "y has non-numeric dtype complex128"),
        (np.array(["a", 1], dtype=object), TypeError, "y labels cannot be sorted"),
        (np.ones((2, 2)), ValueError, "y must be 1-D"),
        (np.array([], dtype=int), ValueError, "y has no rows"),
    ],
)
def test_encode_labels_errors(labels, error, message):
    with pytest.raises(error, match=message):
        encode_labels(labels)


def test_path_objects_are_accepted(source_directory, arrays):
    X_dask, _ = as_dask_arrays(Path(source_directory) / "X.npy")
    np.testing.assert_array_equal(X_dask.compute(scheduler="threads"), arrays[0])
    counts = Counter(X_dask.chunks[0])
    assert sum(size * count for size, count in counts.items()) == N_SAMPLES
