"""Opening data sources for daskgd.data: paths, zarr groups, Datasets, numpy arrays.

Each source opens lazily into a numpy array, a dask array or an `NpyFile` (a ``.npy``
header), so shapes and dtypes are checked before anything is read; `as_dask` then
builds the dask array with the requested row chunks.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr
from dask.array.core import normalize_chunks
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from dask.utils import parse_bytes

from daskgd.data.sparse import LIBSVM_SUFFIXES, as_dask_sparse, is_sparse, load_libsvm

PATH_TYPES = (str, os.PathLike)
NUMERIC_KINDS = "biuf"
LABEL_KINDS = "biufUSO"


@dataclass(frozen=True)
class NpyFile:
    """A ``.npy`` file opened lazily: only its header is read on the client."""

    path: str
    shape: tuple[int, ...]
    ndim: int
    dtype: np.dtype
    token: str


def open_sources(X, y, target, features):
    """Resolve Datasets and paths into arrays (numpy, dask or `NpyFile`)."""
    if isinstance(X, xr.Dataset):
        return _open_dataset(X, y, target, features)
    if isinstance(X, PATH_TYPES) and is_libsvm_path(X):
        if target is not None or features is not None:
            raise ValueError("target= and features= do not apply to a LIBSVM file (labels are y)")
        X, labels = load_libsvm(X, "X")
        return X, labels if y is None else open_array(y, "y")
    if isinstance(X, PATH_TYPES):
        X = _open_path(X, "X")
        if isinstance(X, zarr.Group):
            return _open_zarr_group(X, y, target, features)
    if target is not None or features is not None:
        raise ValueError("target= and features= only apply to an xarray.Dataset or a zarr group")
    return open_array(X, "X"), None if y is None else open_array(y, "y")


def is_libsvm_path(path):
    """Whether ``path`` names a LIBSVM / svmlight file by its suffix."""
    return isinstance(path, PATH_TYPES) and os.fspath(path).lower().endswith(LIBSVM_SUFFIXES)


def open_array(source, name):
    """Return a numpy array, a dask array or a `NpyFile` for one array source."""
    if isinstance(source, xr.Dataset):
        raise TypeError(
            f"{name} must be an array, not an xarray.Dataset; pass the Dataset as X with target="
        )
    if isinstance(source, xr.DataArray):
        source = source.data
    if isinstance(source, PATH_TYPES):
        source = _open_path(source, name)
        if isinstance(source, zarr.Group):
            default = "X" if name == "X" else "y"
            return _zarr_component(source, default, name)
    if isinstance(source, (da.Array, NpyFile)) or is_sparse(source):
        return source
    return np.asarray(source)


def _open_path(path, name):
    """Open a ``.npy`` file lazily, or a zarr store (array -> dask array, group -> group)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{name}: no .npy file or zarr store at {path!r}")
    if os.path.isdir(path):
        reject_object_arrays(path, name)
        node = zarr.open(path, mode="r")
        return node if isinstance(node, zarr.Group) else da.from_zarr(path)
    if os.path.splitext(path)[1].lower() in (".csv", ".parquet", ".pq"):
        raise ValueError(
            f"{name}: {path!r} is a table: open it with daskgd.data.read_table(path, "
            "features=..., target=...) (or `daskgd run PATH --target COLUMN`)"
        )
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as error:
        # numpy's own message suggests allow_pickle=True: never load pickles from data.
        raise ValueError(
            f"{name}: cannot read {path!r} as a .npy file holding numbers (a .npy file of "
            "numbers, a zarr store, a .csv or .parquet table are accepted)"
        ) from error
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{name}: {path!r} is not a .npy file holding one array")
    status = os.stat(path)
    # The token changes when the file does, so cached keys never serve stale data.
    token = tokenize(path, status.st_mtime_ns, status.st_size)
    return NpyFile(path, array.shape, array.ndim, array.dtype, token)


def reject_object_arrays(store, name):
    """Refuse a zarr store holding an object-dtype array, before zarr reads anything.

    Decoding an object array runs its object codec, and the codec is named by the file:
    with zarr 2 (which ``zarr>=2.18`` allows) a ``pickle`` codec unpickles the chunks,
    i.e. runs code from the store. zarr 3 refuses such arrays itself, but zarr 3 needs
    Python >= 3.11, so daskgd checks the stored metadata (the arrays' ``.zarray`` and
    the consolidated ``.zmetadata`` of zarr format 2; format 3 has no object type) and
    reads numbers (and fixed-width strings for labels) only.

    Raises
    ------
    TypeError
        Naming the store, the array and its codec.
    """
    for array, metadata in _v2_array_metadata(store):
        if _has_objects(metadata.get("dtype")):
            codecs = [f.get("id") for f in metadata.get("filters") or () if isinstance(f, dict)]
            raise TypeError(
                f"{name}: the zarr store {store!r} holds the object-dtype array {array!r} "
                f"(codecs {codecs}); daskgd does not read object arrays from files, since "
                "decoding them can run code stored in the file: store numbers (or "
                "fixed-width strings for class labels)"
            )


def _v2_array_metadata(store):
    """(array path, metadata) of every zarr format 2 array below ``store``."""
    consolidated = os.path.join(store, ".zmetadata")
    if os.path.isfile(consolidated):
        entries = _read_json(consolidated).get("metadata", {})
        for key, metadata in entries.items():
            if key.endswith(".zarray") and isinstance(metadata, dict):
                yield os.path.dirname(key) or ".", metadata
    pending = [store]
    while pending:
        folder = pending.pop()
        if os.path.isfile(os.path.join(folder, ".zarray")):
            yield os.path.relpath(folder, store), _read_json(os.path.join(folder, ".zarray"))
            continue  # an array's subfolders hold chunks
        if folder == store or os.path.isfile(os.path.join(folder, ".zgroup")):
            with os.scandir(folder) as entries:
                pending += [entry.path for entry in entries if entry.is_dir()]


def _read_json(path):
    try:
        with open(path, "rb") as file:
            value = json.load(file)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the zarr metadata {path!r}: {error}") from None
    return value if isinstance(value, dict) else {}


def _has_objects(spec):
    """Whether a zarr 2 dtype (a string, or a list of fields) holds Python objects."""
    if isinstance(spec, str):
        try:
            return np.dtype(spec).hasobject
        except TypeError:
            return spec.lstrip("|<>=").startswith("O")
    if isinstance(spec, list):
        return any(isinstance(f, list) and len(f) > 1 and _has_objects(f[1]) for f in spec)
    return False


def _open_zarr_group(group, y, target, features):
    """Read X (and y unless given) from a zarr group."""
    names = [features] if isinstance(features, str) else features or ["X"]
    columns = [(f"array {name!r}", _zarr_component(group, name, "X")) for name in names]
    X = columns[0][1] if len(columns) == 1 else _stack_columns(columns, "X")
    if y is not None:
        if target is not None:
            raise ValueError("pass either y or target=, not both")
        return X, open_array(y, "y")
    if target is None and "y" not in group.array_keys():
        return X, None
    return X, _zarr_component(group, target or "y", "y")


def _zarr_component(group, component, name):
    available = sorted(group.array_keys())
    if component not in available:
        raise ValueError(
            f"{name}: the zarr group has no array {component!r}; its arrays are {available}"
        )
    return da.from_zarr(group[component])


def _open_dataset(dataset, y, target, features):
    """Stack Dataset variables into X and take y from the ``target`` variable."""
    variables = list(dataset.data_vars)
    sample_dim = None
    if target is not None:
        if y is not None:
            raise ValueError("pass either y or target=, not both")
        if target not in dataset.data_vars:
            raise ValueError(
                f"the Dataset has no target variable {target!r}; its variables are {variables}"
            )
        y = dataset[target]
        sample_dim = y.dims[0] if y.ndim else None
    names = _feature_names(dataset, features, target, sample_dim)
    sample_dim = sample_dim or dataset[names[0]].dims[0]
    columns = []
    for name in names:
        variable = dataset[name]
        if sample_dim not in variable.dims or variable.ndim > 2:
            raise ValueError(
                f"X: Dataset variable {name!r} has dims {variable.dims}; "
                f"features need the sample dim {sample_dim!r} and at most 2 dims"
            )
        columns.append((f"variable {name!r}", variable.transpose(sample_dim, ...).data))
    X = _stack_columns(columns, "X")
    return X, None if y is None else open_array(y, "y")


def _feature_names(dataset, features, target, sample_dim):
    variables = list(dataset.data_vars)
    if features is None:
        names = [
            name
            for name in variables
            if name != target and (sample_dim is None or sample_dim in dataset[name].dims)
        ]
    else:
        names = [features] if isinstance(features, str) else list(features)
        missing = [name for name in names if name not in dataset.data_vars]
        if missing:
            raise ValueError(
                f"X: the Dataset has no variables {missing}; its variables are {variables}"
            )
    if not names:
        raise ValueError(f"X: no feature variables found; the Dataset's variables are {variables}")
    return names


def _stack_columns(columns, name):
    """Stack 1-D or 2-D arrays (each with rows first) as the columns of one 2-D array."""
    for label, column in columns:
        check_dtype(column, f"{name} ({label})")
    parts = [column.reshape(column.shape[0], -1) for _, column in columns]
    if all(isinstance(part, np.ndarray) for part in parts):
        return np.concatenate(parts, axis=1)
    rows = next(part.chunks[0] for part in parts if isinstance(part, da.Array))
    parts = [as_dask(part, rows).rechunk({0: rows}) for part in parts]
    return da.concatenate(parts, axis=1)


def check_dtype(array, name, *, kinds=NUMERIC_KINDS):
    """Raise TypeError unless the array's dtype kind is one of ``kinds``."""
    dtype = np.dtype(array.dtype)
    if dtype.kind not in kinds:
        hint = "; encode class labels with encode_labels" if dtype.kind in "USO" else ""
        raise TypeError(
            f"{name} has non-numeric dtype {dtype} (daskgd needs real numbers: "
            f"bool, integer or float){hint}"
        )


def row_chunks_for(source, rows_per_chunk):
    """Rows per chunk: as requested, else a dask source's own, else dask's "auto" size.

    dask's "auto" size counts a dense row's bytes; a scipy matrix's rows are sized by
    their stored entries instead (12 bytes each: a float64 value and an int32 index),
    else a 100,000-column matrix would get chunks of 167 rows.
    """
    if rows_per_chunk is None and isinstance(source, da.Array):
        return source.chunks[0]
    if rows_per_chunk is None and is_sparse(source):
        n_rows = source.shape[0]
        row_bytes = 12.0 * max(source.nnz, 1) / max(n_rows, 1) + 8  # + the row pointer
        limit = parse_bytes(dask.config.get("array.chunk-size"))
        rows_per_chunk = max(1, min(n_rows, int(limit // row_bytes)))
    # dtype float64 only sizes "auto" chunks; object and str labels have no item size.
    requested = (rows_per_chunk or "auto",) + (-1,) * (len(source.shape) - 1)
    return normalize_chunks(requested, source.shape, dtype=np.float64)[0]


def as_dask(source, rows):
    """Return a dask array for a numpy, dask or `NpyFile` source, chunked by ``rows``."""
    if isinstance(source, da.Array):
        return source
    if is_sparse(source):
        return as_dask_sparse(source, rows)
    chunks = (tuple(rows),) + tuple((size,) for size in source.shape[1:])
    meta = np.empty((0,) * source.ndim, dtype=source.dtype)
    if isinstance(source, NpyFile):
        name = f"daskgd-read-npy-{tokenize(source.token, chunks)}"
        return da.map_blocks(
            _read_npy_block, source.path, chunks=chunks, dtype=source.dtype, meta=meta, name=name
        )
    # One literal slice per task: sending a chunk's task ships only its rows, never
    # the whole array (which from_array would embed in every culled graph).
    name = f"daskgd-numpy-{tokenize(source, chunks)}"
    offsets = np.cumsum((0,) + chunks[0]).tolist()
    zeros = (0,) * (source.ndim - 1)
    graph = {
        (name, index, *zeros): source[start:stop]
        for index, (start, stop) in enumerate(zip(offsets[:-1], offsets[1:], strict=True))
    }
    layer_graph = HighLevelGraph.from_collections(name, graph, dependencies=())
    return da.Array(layer_graph, name, chunks, meta=meta)


def _read_npy_block(path, block_info=None):
    start, stop = block_info[None]["array-location"][0]
    return np.array(np.load(path, mmap_mode="r")[start:stop])
