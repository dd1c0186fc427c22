"""Synthetic classification and regression data, generated chunk by chunk on the workers.

Only the true coefficients are drawn on the client; every chunk of X and y is drawn by
its own task from its own seed, so no data goes through the client and the arrays are
the same for the same seed and chunks whatever the scheduler or the number of workers.

Random streams are ``numpy.random.default_rng([random_state, purpose, block_index])``
with a non-zero ``purpose`` per kind of draw: numpy's seed sequences ignore trailing
zeros (``[s, 0]`` gives the stream of ``s``), so a zero would let two kinds collide.
"""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
from dask.base import tokenize

__all__ = ["make_classification", "make_regression"]

_FEATURES, _TARGETS, _COEFFICIENTS = 1, 2, 3
_DEFAULT_MAX_CHUNK_ROWS = 100_000


def make_classification(
    n_samples=100_000,
    n_features=20,
    *,
    n_classes=2,
    chunks=None,
    noise=1.0,
    feature_scale=None,
    random_state=0,
    return_coef=False,
):
    """Features and labels drawn from a logistic (softmax) model.

    Standard normal features ``Z`` give logits ``Z @ beta / noise`` with ``beta`` drawn
    from N(0, 4 / n_features) (logits of standard deviation about 2, whatever
    n_features); the labels are drawn from the sigmoid (binary) or softmax of the logits.
    X is Z scaled per column by ``feature_scale``, so the true coefficient of X is
    ``beta / feature_scale`` and scaling changes the conditioning, not the difficulty.

    Parameters
    ----------
    n_samples, n_features : int, default 100_000 and 20
    n_classes : int, default 2
    chunks : int, optional
        Rows per chunk. Default ``min(100_000, ceil(n_samples / 8))``: about 8 chunks,
        at most 100_000 rows (16 MB with 20 float64 features).
    noise : float, default 1.0
        Temperature of the logits; 0 gives deterministic (separable) labels.
    feature_scale : float or array-like (n_features,), optional
        Standard deviation of each column of X (default 1).
    random_state : int or None, default 0
        Seed of every draw; None draws a fresh one.
    return_coef : bool, default False
        Also return the true coefficients.

    Returns
    -------
    X : dask.array.Array (n_samples, n_features) of float64
    y : dask.array.Array (n_samples,) of int64
        Class indices 0 .. n_classes-1, with X's row chunks.
    coef : numpy.ndarray (n_features,) if binary, else (n_classes, n_features)
        Only with ``return_coef``; the intercepts are zero.
    """
    n_classes = _check_int(n_classes, "n_classes", minimum=2)
    _check_nonnegative(noise, "noise")
    X, seed = _features(n_samples, n_features, chunks, feature_scale, random_state)
    n_features = X.shape[1]
    shape = (n_features,) if n_classes == 2 else (n_classes, n_features)
    beta = _coefficient_rng(seed).standard_normal(shape) * (2.0 / math.sqrt(n_features))
    coef = beta / _column_scale(feature_scale, n_features)
    name = f"daskgd-classes-{tokenize(X.name, coef, noise, seed)}"
    y = X.map_blocks(
        _draw_classes,
        coef,
        float(noise),
        seed,
        drop_axis=1,
        dtype=np.int64,
        meta=np.empty((0,), np.int64),
        name=name,
    )
    return (X, y, coef) if return_coef else (X, y)


def make_regression(
    n_samples=100_000,
    n_features=20,
    *,
    chunks=None,
    noise=1.0,
    intercept=0.0,
    feature_scale=None,
    random_state=0,
    return_coef=False,
):
    """Features and a linear target ``y = X @ coef + intercept + noise * N(0, 1)``.

    Parameters
    ----------
    n_samples, n_features : int, default 100_000 and 20
    chunks : int, optional
        Rows per chunk; default as in `make_classification`.
    noise : float, default 1.0
        Standard deviation of the Gaussian noise.
    intercept : float, default 0.0
    feature_scale : float or array-like (n_features,), optional
        Standard deviation of each column of X (default 1).
    random_state : int or None, default 0
    return_coef : bool, default False

    Returns
    -------
    X : dask.array.Array (n_samples, n_features) of float64
        Standard normal columns times ``feature_scale``.
    y : dask.array.Array (n_samples,) of float64
        With X's row chunks.
    coef : numpy.ndarray (n_features,)
        Only with ``return_coef``; drawn standard normal.
    """
    _check_nonnegative(noise, "noise")
    intercept = float(intercept)
    X, seed = _features(n_samples, n_features, chunks, feature_scale, random_state)
    coef = _coefficient_rng(seed).standard_normal(X.shape[1])
    name = f"daskgd-linear-target-{tokenize(X.name, coef, intercept, noise, seed)}"
    y = X.map_blocks(
        _linear_target,
        coef,
        intercept,
        float(noise),
        seed,
        drop_axis=1,
        dtype=np.float64,
        meta=np.empty((0,), np.float64),
        name=name,
    )
    return (X, y, coef) if return_coef else (X, y)


def _features(n_samples, n_features, chunks, feature_scale, random_state):
    """Validate the common arguments; return lazy standard normal X and the seed."""
    n_samples = _check_int(n_samples, "n_samples", minimum=1)
    n_features = _check_int(n_features, "n_features", minimum=1)
    if chunks is None:
        chunks = min(_DEFAULT_MAX_CHUNK_ROWS, -(-n_samples // 8))
    chunks = _check_int(chunks, "chunks", minimum=1)
    seed = _seed(random_state)
    scale = _column_scale(feature_scale, n_features)
    row_chunks = da.core.normalize_chunks((chunks, n_features), (n_samples, n_features))
    name = f"daskgd-features-{tokenize(row_chunks, scale, seed)}"
    X = da.map_blocks(
        _draw_features,
        scale,
        seed,
        chunks=row_chunks,
        dtype=np.float64,
        meta=np.empty((0, 0), np.float64),
        name=name,
    )
    return X, seed


def _draw_features(scale, seed, block_info=None):
    info = block_info[None]
    rng = np.random.default_rng([seed, _FEATURES, info["chunk-location"][0]])
    return rng.standard_normal(info["chunk-shape"]) * scale


def _draw_classes(X_block, coef, noise, seed, block_info=None):
    """Labels of one chunk: sigmoid or softmax of the logits, sampled once per row."""
    logits = X_block @ coef.T
    if noise == 0:
        return (logits > 0).astype(np.int64) if logits.ndim == 1 else logits.argmax(axis=1)
    rng = np.random.default_rng([seed, _TARGETS, block_info[0]["chunk-location"][0]])
    uniform = rng.random(X_block.shape[0])
    logits = logits / noise
    if logits.ndim == 1:
        # tanh form of the sigmoid: no overflow for large |logits|.
        return (uniform < 0.5 * (1.0 + np.tanh(0.5 * logits))).astype(np.int64)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    cumulative = np.cumsum(probabilities, axis=1)
    cumulative /= cumulative[:, -1:]
    labels = (uniform[:, None] >= cumulative).sum(axis=1)
    # Guard against rounding putting u above the last cumulative value of 1.
    return np.minimum(labels, coef.shape[0] - 1).astype(np.int64)


def _linear_target(X_block, coef, intercept, noise, seed, block_info=None):
    rng = np.random.default_rng([seed, _TARGETS, block_info[0]["chunk-location"][0]])
    return X_block @ coef + intercept + noise * rng.standard_normal(X_block.shape[0])


def _coefficient_rng(seed):
    return np.random.default_rng([seed, _COEFFICIENTS, 1])


def _seed(random_state):
    if random_state is None:
        return int(np.random.SeedSequence().entropy)
    if (
        isinstance(random_state, bool)
        or not isinstance(random_state, (int, np.integer))
        or random_state < 0
    ):
        raise ValueError(
            f"random_state must be a non-negative integer or None, got {random_state!r}"
        )
    return int(random_state)


def _column_scale(feature_scale, n_features):
    if feature_scale is None:
        return np.ones(n_features)
    scale = np.asarray(feature_scale, dtype=np.float64)
    if (
        scale.shape not in ((), (n_features,))
        or not np.all(np.isfinite(scale))
        or np.any(scale <= 0)
    ):
        raise ValueError(
            f"feature_scale must be a positive number or {n_features} positive "
            f"numbers, got {feature_scale!r}"
        )
    return np.broadcast_to(scale, (n_features,)).copy()


def _check_int(value, name, *, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_nonnegative(value, name):
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.number))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
