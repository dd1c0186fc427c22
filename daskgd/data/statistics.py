"""One pass over the placed chunks: finiteness, overflow, norms and the curvature of X.

:func:`chunk_statistics` runs once per chunk during placement and a tree of
:func:`merge_statistics` sums the results on the workers, so the client receives one
small object whatever the number of chunks:

- the first NaN / infinite row of X and of y in each chunk;
- the first row whose squared norm overflows float64 (an entry above ~1e154 gives an
  infinite loss or gradient further on: lbfgs stalled at w = 0 blaming rounding, gd
  raised ``LinAlgError`` in its step size estimate), and the same for y;
- the squared norm of X and the largest squared row norm;
- :class:`GramSketch`: ``X^T X Omega`` and the column sums of X, from which the largest
  eigenvalue of ``[X, 1]^T [X, 1] / n`` (or ``X^T X / n``) follows, the curvature that
  sets gd's automatic step size. Estimated from the first and last chunk only it came
  out ~4x too small on uneven chunks (1 row and 100,000 rows) and gd needed twice the
  iterations; here every row counts. Omega is the identity up to
  :data:`EXACT_FEATURES` (256) features (the exact Gram matrix, d x d per chunk: no more
  work than the sketch), beyond a fixed Gaussian d x 128 matrix: the estimate is then
  the top eigenvalue of the Nystrom approximation ``G Omega (Omega^T G Omega)^+ Omega^T
  G`` of the Gram matrix G, never above the true one (Halko, Martinsson & Tropp 2011,
  sec. 5.4). Measured on isotropic Gaussian features, a sketch's hardest case (a flat
  spectrum): 8 % low at n = 50,000, d = 500, where the first-and-last-chunk estimate
  it replaces was 37 % high (gd backtracks from a step a little too long, and a step
  too short costs iterations).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dask
import numpy as np

from daskgd.data import waits
from daskgd.data.sparse import is_sparse, sparse_chunk_statistics

__all__ = [
    "SKETCH_COLUMNS",
    "GramSketch",
    "chunk_statistics",
    "merge_statistics",
    "sketch_matrix",
    "summarize",
]

#: Width of the sketch beyond EXACT_FEATURES features.
SKETCH_COLUMNS = 128
#: The ``omega`` of a pass that skips the sketch (a string: it pickles by value).
NO_SKETCH = "no-sketch"
#: Most entries of a sparse chunk's sketch product (16 MiB of float64): the Nystrom
#: estimate is a lower bound whichever the width, and gd backtracks from a step too long.
SPARSE_SKETCH_ENTRIES = 2**21
#: Up to this many features the sketch is the exact Gram matrix: n d^2 flops, no more
#: than the sketch's two products (2 n d 128) up to d = 256.
EXACT_FEATURES = 2 * SKETCH_COLUMNS

# Columns of a chunk's row of statistics.
BAD_X, BAD_Y, OVERFLOW_X, OVERFLOW_Y, SQUARED_NORM, MAX_ROW_SQUARED_NORM = range(6)


@dataclass(frozen=True)
class GramSketch:
    """``X^T X Omega`` summed over the chunks, with what the intercept column adds.

    Attributes
    ----------
    omega : ndarray of shape (n_features, k) or None
        The sketching matrix; None for the identity (``product`` is then X^T X).
    product : ndarray of shape (n_features, k)
    column_sums : ndarray of shape (n_features,)
    n_rows : int
    """

    omega: np.ndarray | None
    product: np.ndarray
    column_sums: np.ndarray
    n_rows: int

    def top_eigenvalue(self, fit_intercept: bool) -> float:
        """Largest eigenvalue of ``[X, 1]^T [X, 1] / n`` (``X^T X / n`` without intercept)."""
        Y, omega = self.product, self.omega
        if fit_intercept:
            # [X, 1]^T [X, 1] blockdiag(Omega, 1) from X^T X Omega, X^T 1 and n.
            sums = self.column_sums
            corner = sums if omega is None else sums @ omega
            Y = np.block([[Y, sums[:, None]], [corner[None, :], np.array([[self.n_rows]])]])
            if omega is not None:
                omega = np.block(
                    [[omega, np.zeros((omega.shape[0], 1))], [np.zeros((1, omega.shape[1])), 1.0]]
                )
        if not np.isfinite(Y).all():
            raise FloatingPointError(
                "the Gram matrix of X overflows float64: scale X (e.g. standardise its columns)"
            )
        return _top_eigenvalue(Y, omega) / max(self.n_rows, 1)


def _top_eigenvalue(Y: np.ndarray, omega: np.ndarray | None) -> float:
    scale = float(np.max(np.abs(Y))) if Y.size else 0.0
    if scale == 0.0:
        return 0.0
    Y = Y / scale  # the eigenvalues scale with Y; squares of Y must not overflow
    if omega is None:
        return scale * float(np.linalg.eigvalsh((Y + Y.T) / 2)[-1])
    core = omega.T @ Y
    mu, vectors = np.linalg.eigh((core + core.T) / 2)
    keep = mu > mu[-1] * 1e-12
    factor = vectors[:, keep] / np.sqrt(mu[keep])  # core^+ = factor @ factor.T
    spread = Y @ factor
    return scale * float(np.linalg.eigvalsh(spread.T @ spread)[-1])


#: Fan-in of the tree that merges the chunks' statistics.
MERGE_FAN_IN = 8


def summarize(
    X: Any,
    y: Any,
    client: Any = None,
    timeout: float = waits.DEFAULT_TIMEOUT_SECONDS,
    sketch: bool = True,
) -> tuple[dict, GramSketch | None]:
    """One pass over the chunks of X (n, d) and y (n, 1): the merged statistics (a
    dict, see :func:`merge_statistics`) and the Gram sketch of X (None without
    ``sketch``: only gd, nesterov and sgd need it, and they ask for it later)."""
    sparse = is_sparse(getattr(X, "_meta", None))
    omega = sketch_matrix(X.shape[1], sparse=sparse) if sketch else None
    # One key holding Omega, so it travels once to each worker rather than in every
    # chunk's task (a 100,000 x 20 sketch of a sparse X is 16 MB).
    omega_key = NO_SKETCH if not sketch else omega if omega is None else dask.delayed(omega)
    pairs = zip(X.to_delayed().ravel(), y.to_delayed().ravel(), strict=True)
    parts = [dask.delayed(chunk_statistics, pure=True)(x, y, omega_key) for x, y in pairs]
    while len(parts) > 1:  # a tree: the client receives one small result
        groups = [parts[i : i + MERGE_FAN_IN] for i in range(0, len(parts), MERGE_FAN_IN)]
        parts = [dask.delayed(merge_statistics, pure=True)(*group) for group in groups]
    if client is None:
        (merged,) = dask.compute(parts[0])
    else:
        what = "checking the data for NaN, infinity and overflow"
        merged = waits.result(client, client.compute(parts[0]), what=what, timeout=timeout)
    if not sketch:
        return merged, None
    return merged, GramSketch(omega, merged["product"], merged["sums"], merged["rows"])


def sketch_matrix(n_features: int, sparse: bool = False) -> np.ndarray | None:
    """The sketching matrix for ``n_features`` columns: None (identity) or d x 128 Gaussian.

    A sparse X may have far more columns than a dense one (100,000 in the sparse
    benchmark): its sketch keeps each chunk's ``X^T X Omega`` within
    :data:`SPARSE_SKETCH_ENTRIES` entries (at least 8 columns).
    """
    if n_features <= EXACT_FEATURES:
        return None
    columns = SKETCH_COLUMNS
    if sparse:
        columns = int(min(SKETCH_COLUMNS, max(8, SPARSE_SKETCH_ENTRIES // n_features)))
    return np.random.default_rng(0).standard_normal((n_features, columns))


def chunk_statistics(X_block: np.ndarray, y_block: np.ndarray, omega: np.ndarray | None):
    """One chunk's row of statistics (see the module docstring) and its part of the sketch."""
    if is_sparse(X_block):
        return sparse_chunk_statistics(X_block, y_block, omega)
    statistics = np.full(6, -1.0)
    for column, block in ((BAD_X, X_block), (BAD_Y, y_block)):
        bad_rows = np.flatnonzero(~np.isfinite(block).all(axis=1))
        statistics[column] = bad_rows[0] if len(bad_rows) else -1
    X64 = X_block.astype(np.float64, copy=False)
    with np.errstate(over="ignore", invalid="ignore"):
        row_squared_norms = np.einsum("ij,ij->i", X64, X64)
        y_squares = np.square(np.asarray(y_block, dtype=np.float64)).sum(axis=1)
        for column, values in ((OVERFLOW_X, row_squared_norms), (OVERFLOW_Y, y_squares)):
            overflowing = np.flatnonzero(~np.isfinite(values))
            statistics[column] = overflowing[0] if len(overflowing) else -1
        statistics[SQUARED_NORM] = row_squared_norms.sum()
        statistics[MAX_ROW_SQUARED_NORM] = row_squared_norms.max() if len(X64) else 0.0
        if isinstance(omega, str):  # NO_SKETCH
            product = np.zeros((0, 0))
        elif statistics[[BAD_X, OVERFLOW_X]].max() >= 0:  # reported as such; no sketch of it
            product = np.zeros((X64.shape[1], X64.shape[1] if omega is None else omega.shape[1]))
        else:
            product = X64.T @ X64 if omega is None else X64.T @ (X64 @ omega)
        sums = X64.sum(axis=0)
    return {"statistics": statistics[None, :], "product": product, "sums": sums, "rows": len(X64)}


def merge_statistics(*parts: dict) -> dict:
    """The statistics of consecutive chunks, merged (rows stacked, sketches summed)."""
    with np.errstate(over="ignore", invalid="ignore"):
        merged = {
            "statistics": np.concatenate([part["statistics"] for part in parts]),
            "product": sum(part["product"] for part in parts),
            "sums": sum(part["sums"] for part in parts),
            "rows": sum(part["rows"] for part in parts),
        }
    if all("nnz" in part for part in parts):  # sparse chunks: stored entries per chunk
        merged["nnz"] = np.concatenate([part["nnz"] for part in parts])
    return merged
