"""scipy.sparse input: CSR row chunks, their validation, statistics and LIBSVM files.

A sparse X stays sparse from the source to the chunk functions: a scipy matrix becomes
a dask array of CSR row blocks (one task per block, like a numpy source), a dask array
of sparse blocks keeps its blocks, and every placed chunk is a ``scipy.sparse``
``csr_matrix`` with sorted indices (the chunk functions of :mod:`daskgd.models.sparse`
run ``X @ coef`` and ``X.T @ residual`` through scipy on it, never densifying it).

scipy is imported on first use only: a chunk cannot be sparse unless ``scipy.sparse``
was imported by whoever built it, so :func:`is_sparse` is free for dense data.
"""

from __future__ import annotations

import os
import sys

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

__all__ = [
    "LIBSVM_SUFFIXES",
    "as_dask_sparse",
    "is_sparse",
    "is_sparse_array",
    "load_libsvm",
    "own_csr",
    "random_csr",
    "sparse_chunk_statistics",
]

#: File suffixes read as LIBSVM / svmlight text (``label index:value ...`` per line).
LIBSVM_SUFFIXES = (".svm", ".libsvm", ".svmlight")


def is_sparse(value) -> bool:
    """Whether ``value`` is a scipy.sparse matrix or array (without importing scipy)."""
    sparse = sys.modules.get("scipy.sparse")
    return sparse is not None and sparse.issparse(value)


def is_sparse_array(value) -> bool:
    """Whether ``value`` is a dask array whose blocks are scipy.sparse matrices."""
    return isinstance(value, da.Array) and is_sparse(getattr(value, "_meta", None))


def own_csr(block, dtype):
    """The block as a CSR matrix of ``dtype`` owning its buffers, with sorted indices.

    A copy, so a placed chunk never pins its parent (a slice of the user's matrix), and
    canonical (sorted, duplicates summed), so ``X.T @ r`` and the statistics see each
    entry once.
    """
    import scipy.sparse as sp

    matrix = sp.csr_matrix(block, dtype=dtype, copy=True)
    matrix.sum_duplicates()  # also sorts the indices
    return matrix


def as_dask_sparse(matrix, rows):
    """A dask array of CSR row blocks of a scipy matrix, ``rows`` rows per block.

    One literal CSR slice per task (as :func:`daskgd.data.sources.as_dask` does for
    numpy): a chunk's task ships its own rows only.
    """
    import scipy.sparse as sp

    matrix = sp.csr_matrix(matrix)
    chunks = (tuple(rows), (matrix.shape[1],))
    name = f"daskgd-sparse-{tokenize(matrix.indptr, matrix.indices, matrix.data, chunks)}"
    offsets = np.cumsum((0,) + chunks[0]).tolist()
    graph = {
        (name, index, 0): matrix[start:stop]
        for index, (start, stop) in enumerate(zip(offsets[:-1], offsets[1:], strict=True))
    }
    meta = sp.csr_matrix((0, matrix.shape[1]), dtype=matrix.dtype)
    layer_graph = HighLevelGraph.from_collections(name, graph, dependencies=())
    return da.Array(layer_graph, name, chunks, meta=meta)


def sparse_chunk_statistics(X_block, y_block, omega):
    """:func:`daskgd.data.statistics.chunk_statistics` for a CSR chunk, never densified.

    Returns the same columns; ``nnz`` adds the chunk's stored entries (placement
    reports them per chunk). Row norms, column sums and ``X^T X Omega`` come from the
    stored entries only.
    """
    from daskgd.data.statistics import (
        BAD_X,
        BAD_Y,
        MAX_ROW_SQUARED_NORM,
        OVERFLOW_X,
        OVERFLOW_Y,
        SQUARED_NORM,
    )

    X = own_csr(X_block, np.float64) if X_block.dtype != np.float64 else X_block.tocsr()
    n_rows, n_features = X.shape
    rows_of_entries = np.repeat(np.arange(n_rows), np.diff(X.indptr))
    statistics = np.full(6, -1.0)
    bad_entries = np.flatnonzero(~np.isfinite(X.data))
    statistics[BAD_X] = rows_of_entries[bad_entries[0]] if len(bad_entries) else -1
    bad_rows = np.flatnonzero(~np.isfinite(y_block).all(axis=1))
    statistics[BAD_Y] = bad_rows[0] if len(bad_rows) else -1
    with np.errstate(over="ignore", invalid="ignore"):
        row_squared_norms = np.bincount(rows_of_entries, X.data * X.data, minlength=n_rows)
        y_squares = np.square(np.asarray(y_block, dtype=np.float64)).sum(axis=1)
        for column, values in ((OVERFLOW_X, row_squared_norms), (OVERFLOW_Y, y_squares)):
            overflowing = np.flatnonzero(~np.isfinite(values))
            statistics[column] = overflowing[0] if len(overflowing) else -1
        statistics[SQUARED_NORM] = row_squared_norms.sum()
        statistics[MAX_ROW_SQUARED_NORM] = row_squared_norms.max() if n_rows else 0.0
        width = n_features if omega is None or isinstance(omega, str) else omega.shape[1]
        if isinstance(omega, str):  # statistics.NO_SKETCH: the sketch comes later if needed
            product = np.zeros((0, 0))
        elif statistics[[BAD_X, OVERFLOW_X]].max() >= 0:  # reported as such; no sketch of it
            product = np.zeros((n_features, width))
        elif omega is None:
            product = (X.T @ X).toarray()
        else:
            product = np.asarray(X.T @ (X @ omega))
        sums = np.asarray(X.sum(axis=0)).reshape(-1)
    return {
        "statistics": statistics[None, :],
        "product": product,
        "sums": sums,
        "rows": n_rows,
        "nnz": np.array([X.nnz], dtype=np.int64),
    }


def load_libsvm(path, name="X"):
    """X (CSR, float64) and y (float64) of a LIBSVM / svmlight text file.

    Read with scikit-learn's ``load_svmlight_file`` on the client (the format has no
    row index, so it cannot be split without reading it); the matrix is then chunked by
    rows like any scipy matrix.

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    ValueError
        The file is not LIBSVM text (scikit-learn's reason, naming the file).
    """
    from sklearn.datasets import load_svmlight_file

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name}: no LIBSVM file at {path!r}")
    try:
        X, y = load_svmlight_file(path, dtype=np.float64)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{name}: cannot read {path!r} as a LIBSVM file: {error}") from error
    return X.tocsr(), np.asarray(y, dtype=np.float64)


def random_csr(n_rows, n_features, density, random_state=None, dtype=np.float64):
    """A random CSR matrix: each entry stored with probability ``density``, values N(0, 1).

    Drawn row by row in O(nnz) memory: ``scipy.sparse.random`` draws the positions
    among all ``n_rows * n_features`` cells, 1.6 GB of memory for 2,000 x 100,000 here
    (and a killed process at the sparse benchmark's 10^11 cells). Positions within a
    row may repeat at high density; repeats are summed, as in any canonical CSR matrix.
    """
    import scipy.sparse as sp

    rng = np.random.default_rng(random_state)
    counts = rng.binomial(n_features, density, size=n_rows)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    indices = rng.integers(0, n_features, size=int(indptr[-1]), dtype=np.int32)
    data = rng.standard_normal(int(indptr[-1])).astype(dtype)
    matrix = sp.csr_matrix((data, indices, indptr), shape=(n_rows, n_features))
    matrix.sum_duplicates()
    return matrix
