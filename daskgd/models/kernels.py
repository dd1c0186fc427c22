"""Compiled one-pass chunk kernels: loss and gradient sums over the rows of a chunk.

The numpy path of :meth:`daskgd.models.losses.Model.loss_grad` calls BLAS twice per
2048-row block (``block @ coef``, then ``block.T @ residual``) and, for float32 ``X``,
first copies the block to float64. These numba kernels instead walk the rows once, in
tiles of a few rows that stay in the L1 cache between the two uses:

1. ``z = X_tile @ coef + intercept``, four rows at a time sharing the loads of ``coef``;
2. the link on the tile's ``z``: loss terms and residuals ``d loss / d z``, with the same
   formulas as the numpy path (the stable logistic loss ``max(z, 0) + log1p(exp(-|z|)) - y z``);
3. ``grad += X_tile.T @ residual``, four rows per pass over ``grad``.

A float32 chunk is read as float32 (half the bytes of float64) and every product and sum is
formed in float64, so the kernel computes the float64 gradient of the float32-rounded data.

Only the sums of steps 1 and 3 (``_predict``, ``_accumulate``, their multinomial twins
and ``_sum``) relax IEEE semantics, and only by ``reassoc`` and ``contract``: another
summation order (partial sums in vector registers) and fused multiply-adds, without which
LLVM does not vectorise a dot product. Everything else, the link in particular, is
compiled with ``fastmath=False``, so infinities and NaNs behave as in numpy.

``exp`` and ``log1p`` come from :mod:`daskgd.models.vectormath` (vectorisable, unlike
libm's). The kernels use no global state and release the GIL (``nogil``), so a worker's
threads run them concurrently. Each is compiled once per dtype, on first use, and cached
on disk (:mod:`daskgd.models.jit`; see :func:`cache_status` and :func:`warm_up`).
"""

import math
import os
import threading
import time
import warnings
from typing import Any

import numpy as np

from daskgd.models.jit import AVAILABLE, disable_caches, numba, strict, summing
from daskgd.models.vectormath import exp_nonpositive_into, log1p_unit

__all__ = [
    "AVAILABLE",
    "ENVIRONMENT_VARIABLE",
    "binary",
    "cache_status",
    "enabled",
    "multinomial",
    "suits",
    "tile_rows",
    "warm_up",
]

#: ``auto`` (default: the kernels when numba is importable), ``numpy`` (always the numpy
#: path: the oracle of the tests and the baseline of the benchmarks) or ``numba``
#: (the kernels, or an error if numba is missing). Read at every call, so it can be
#: changed in a running process and, through ``Client.run``, on running workers.
ENVIRONMENT_VARIABLE = "DASKGD_KERNELS"
_CHOICES = ("auto", "numba", "numpy")

# Bytes of X per tile: the tile is read from memory by step 1 and again from cache by
# step 3, so it must stay in L1 (48 KiB here, Sapphire Rapids) or at least L2 (2 MiB). Each
# tile also costs ~200 ns of fixed work (loop set-up, views), ~5 ns per row at 40 rows.
# 32 KiB: 40 rows of 100 float64 features, 80 of float32. Measured per 125k x 100 chunk,
# tiles of 16 to 256 rows were within the noise of each other, 4 and 8 rows 1.3-1.7x slower.
TILE_BYTES = 32 * 1024
MAX_TILE_ROWS = 128


def enabled():
    """Whether ``loss_grad`` should use the kernels, from :data:`ENVIRONMENT_VARIABLE`.

    Raises
    ------
    ValueError
        If the variable holds something other than ``auto``, ``numba`` or ``numpy``.
    RuntimeError
        If it asks for ``numba`` and numba cannot be imported.
    """
    choice = os.environ.get(ENVIRONMENT_VARIABLE, "auto").strip().lower() or "auto"
    if choice not in _CHOICES:
        raise ValueError(
            f"{ENVIRONMENT_VARIABLE} must be one of {', '.join(_CHOICES)}, "
            f"got {os.environ[ENVIRONMENT_VARIABLE]!r}"
        )
    if choice == "numba" and not AVAILABLE:
        raise RuntimeError(f"{ENVIRONMENT_VARIABLE}=numba but numba cannot be imported")
    return AVAILABLE and choice != "numpy"


def suits(X):
    """Whether the kernels take ``X`` as it is: 2-D, C-contiguous, native float32/float64.

    Misaligned and read-only arrays are fine (numba compiles a variant for them); other
    layouts (F-ordered, strided views) go to the numpy path, which copies block by block.
    """
    return (
        isinstance(X, np.ndarray)
        and X.ndim == 2
        and X.flags.c_contiguous
        and (X.dtype == np.float64 or X.dtype == np.float32)
    )


# ---------------------------------------------------------------- the tile steps


def tile_rows(n_features, itemsize):
    """Rows per tile: about TILE_BYTES of X, a multiple of 4 in [4, MAX_TILE_ROWS]."""
    if n_features == 0:
        return MAX_TILE_ROWS
    rows = TILE_BYTES // (int(n_features) * int(itemsize))
    return max(4, min(MAX_TILE_ROWS, rows - rows % 4))


# The two linear-algebra steps work on a whole tile per call: a call costs a few hundred
# cycles (its array arguments), as much as four rows of the dot product. Rows are
# addressed as X[i, j], not through row views X[i], whose reference counts are atomic.


@summing
def _predict(X, start, m, coef, intercept, z):
    """``z[:m] = X[start:start + m] @ coef + intercept``, four rows sharing each coef load."""
    t = 0
    while t + 4 <= m:
        i = start + t
        s0 = s1 = s2 = s3 = 0.0
        for j in range(coef.shape[0]):
            cj = coef[j]
            s0 += X[i, j] * cj
            s1 += X[i + 1, j] * cj
            s2 += X[i + 2, j] * cj
            s3 += X[i + 3, j] * cj
        z[t], z[t + 1], z[t + 2], z[t + 3] = s0, s1, s2, s3
        t += 4
    while t < m:
        s0 = 0.0
        for j in range(coef.shape[0]):
            s0 += X[start + t, j] * coef[j]
        z[t] = s0
        t += 1
    for t in range(m):
        z[t] += intercept


@summing
def _accumulate(X, start, m, r, grad):
    """``grad[:-1] += X[start:start + m].T @ r[:m]``, ``grad[-1] += sum(r[:m])``.

    Four rows per pass over ``grad``, so grad is loaded and stored once per four rows.
    """
    n_features = grad.shape[0] - 1
    t = 0
    while t + 4 <= m:
        i = start + t
        r0, r1, r2, r3 = r[t], r[t + 1], r[t + 2], r[t + 3]
        for j in range(n_features):
            grad[j] += (r0 * X[i, j] + r1 * X[i + 1, j]) + (r2 * X[i + 2, j] + r3 * X[i + 3, j])
        t += 4
    while t < m:
        r0 = r[t]
        for j in range(n_features):
            grad[j] += r0 * X[start + t, j]
        t += 1
    total = 0.0
    for t in range(m):
        total += r[t]
    grad[n_features] += total


@summing
def _sum(a, m):
    s = 0.0
    for t in range(m):
        s += a[t]
    return s


@strict
def _squares_link(z, y, m, r, terms):
    """Residuals ``z - y`` into ``r``; returns the sum of ``0.5 (z - y)^2``."""
    for t in range(m):
        residual = z[t] - y[t]
        r[t] = residual
        terms[t] = residual * residual
    return 0.5 * _sum(terms, m)


@strict
def _logistic_link(z, y, m, r, scratch, bits_low, bits_high):
    """Residuals ``sigmoid(z) - y`` into ``r``; returns the sum of the logistic losses.

    The formulas of ``Logistic._link``: decay = exp(-|z|) is in (0, 1], so nothing
    overflows for any finite z, and a NaN z gives NaN loss and residual as in numpy.
    """
    # Distinct input and output for exp: with the same array LLVM's runtime alias check
    # sent the loop to its scalar version (13 ns per row instead of 4).
    exponent, decay, terms = scratch[0], scratch[1], scratch[2]
    for t in range(m):
        exponent[t] = -abs(z[t])
    exp_nonpositive_into(exponent, decay, bits_low, bits_high, m)
    for t in range(m):
        zt, et, yt = z[t], decay[t], y[t]
        terms[t] = ((zt if zt > 0.0 else 0.0) + log1p_unit(et)) - yt * zt
        inverse = 1.0 / (1.0 + et)
        r[t] = (inverse if zt >= 0.0 else et * inverse) - yt
    return _sum(terms, m)


@strict
def _binary(X, y, coef, intercept, logistic, tile):
    """Loss and gradient sums of least squares or binary logistic over a chunk.

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_features), float32 or float64, C-contiguous
    y : ndarray of shape (n_rows,), float64
    coef : ndarray of shape (n_features,), float64
    intercept : float
        0.0 without an intercept.
    logistic : bool
        Logistic loss if True, else ``0.5 (z - y)^2``.
    tile : int
        Rows per tile, at least 1 (see :func:`tile_rows`).

    Returns
    -------
    loss_sum : float
    grad : ndarray of shape (n_features + 1,), float64
        Gradient of ``loss_sum`` with respect to ``coef``, then to the intercept.
    """
    n_rows, n_features = X.shape
    grad = np.zeros(n_features + 1)
    z, r = np.empty(tile), np.empty(tile)
    scratch = np.empty((3, tile))
    bits_low, bits_high = np.empty(tile, np.int64), np.empty(tile, np.int64)
    loss = 0.0
    for start in range(0, n_rows, tile):
        m = min(tile, n_rows - start)
        _predict(X, start, m, coef, intercept, z)
        # A view of the tile's targets: indexing y[start + t] made LLVM gather them (it
        # could not prove the index non-negative, so kept numpy's wraparound per element).
        y_tile = y[start : start + m]
        if logistic:
            loss += _logistic_link(z, y_tile, m, r, scratch, bits_low, bits_high)
        else:
            loss += _squares_link(z, y_tile, m, r, scratch[0])
        _accumulate(X, start, m, r, grad)
    return loss, grad


# ------------------------------------------------------------------------ multinomial


@summing
def _predict_classes(X, start, m, coef, intercept, z):
    """``z[:m] = X[start:start + m] @ coef.T + intercept``; ``coef`` is (K, d), ``z`` (tile, K)."""
    n_classes, n_features = coef.shape
    t = 0
    while t + 4 <= m:
        i = start + t
        for k in range(n_classes):
            s0 = s1 = s2 = s3 = 0.0
            for j in range(n_features):
                ckj = coef[k, j]
                s0 += X[i, j] * ckj
                s1 += X[i + 1, j] * ckj
                s2 += X[i + 2, j] * ckj
                s3 += X[i + 3, j] * ckj
            z[t, k], z[t + 1, k], z[t + 2, k], z[t + 3, k] = s0, s1, s2, s3
        t += 4
    while t < m:
        for k in range(n_classes):
            s0 = 0.0
            for j in range(n_features):
                s0 += X[start + t, j] * coef[k, j]
            z[t, k] = s0
        t += 1
    for t in range(m):
        for k in range(n_classes):
            z[t, k] += intercept[k]


@summing
def _accumulate_classes(X, start, m, r, grad):
    """``grad[:, :-1] += r[:m].T @ X[start:start + m]``, ``grad[:, -1] += r[:m].sum(0)``."""
    n_classes, n_columns = grad.shape
    n_features = n_columns - 1
    t = 0
    while t + 4 <= m:
        i = start + t
        for k in range(n_classes):
            r0, r1, r2, r3 = r[t, k], r[t + 1, k], r[t + 2, k], r[t + 3, k]
            for j in range(n_features):
                grad[k, j] += (r0 * X[i, j] + r1 * X[i + 1, j]) + (
                    r2 * X[i + 2, j] + r3 * X[i + 3, j]
                )
        t += 4
    while t < m:
        for k in range(n_classes):
            r0 = r[t, k]
            for j in range(n_features):
                grad[k, j] += r0 * X[start + t, j]
        t += 1
    for k in range(n_classes):
        total = 0.0
        for t in range(m):
            total += r[t, k]
        grad[k, n_features] += total


@strict
def _softmax_link(z, labels, m, r, scratch, bits_low, bits_high):
    """Residuals ``softmax(z) - onehot(y)`` into ``r``; returns the summed cross-entropy.

    The formulas of ``Multinomial._link``: ``logsumexp(z) - z[y]`` after subtracting the
    row maximum, so every exponent is <= 0.
    """
    n_classes = z.shape[1]
    size = m * n_classes
    shifted, exponentials = scratch[0, :size], scratch[1, :size]
    for t in range(m):
        top = z[t, 0]
        for k in range(1, n_classes):
            top = z[t, k] if z[t, k] > top else top
        for k in range(n_classes):
            shifted[t * n_classes + k] = z[t, k] - top
    exp_nonpositive_into(shifted, exponentials, bits_low, bits_high, size)
    loss = 0.0
    for t in range(m):
        total = 0.0
        for k in range(n_classes):
            total += exponentials[t * n_classes + k]
        loss += math.log(total) - shifted[t * n_classes + labels[t]]
        for k in range(n_classes):
            r[t, k] = exponentials[t * n_classes + k] / total
        r[t, labels[t]] -= 1.0
    return loss


@strict
def _multinomial(X, labels, coef, intercept, tile):
    """Loss and gradient sums of the softmax cross-entropy over a chunk.

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_features), float32 or float64, C-contiguous
    labels : ndarray of shape (n_rows,), intp
        Class indices in [0, K).
    coef : ndarray of shape (K, n_features), float64, C-contiguous
    intercept : ndarray of shape (K,), float64
        Zeros without intercepts.
    tile : int
        Rows per tile, at least 1.

    Returns
    -------
    loss_sum : float
    grad : ndarray of shape (K, n_features + 1), float64
        Row k: gradient with respect to class k's coefficients, then its intercept.
    """
    n_rows = X.shape[0]
    n_classes, n_features = coef.shape
    grad = np.zeros((n_classes, n_features + 1))
    z, r = np.empty((tile, n_classes)), np.empty((tile, n_classes))
    scratch = np.empty((2, tile * n_classes))
    bits_low = np.empty(tile * n_classes, np.int64)
    bits_high = np.empty(tile * n_classes, np.int64)
    loss = 0.0
    for start in range(0, n_rows, tile):
        m = min(tile, n_rows - start)
        _predict_classes(X, start, m, coef, intercept, z)
        loss += _softmax_link(z, labels[start : start + m], m, r, scratch, bits_low, bits_high)
        _accumulate_classes(X, start, m, r, grad)
    return loss, grad


# ------------------------------------------------------------------- calling them


def binary(X, y, coef, intercept, logistic, tile=None):
    """Least squares or binary logistic loss and gradient sums of a chunk (see ``_binary``).

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_features), C-contiguous float32 or float64
    y : ndarray of shape (n_rows,), float64, contiguous
    coef : ndarray of shape (n_features,), float64, contiguous
    intercept : float
    logistic : bool
    tile : int or None
        Rows per tile; None: :func:`tile_rows`.

    Returns
    -------
    loss_sum : float
    grad : ndarray of shape (n_features + 1,)
        Gradient with respect to ``coef``, then to the intercept.
    """
    tile = tile_rows(X.shape[1], X.itemsize) if tile is None else tile
    return _run(_binary, X.dtype, X, y, coef, float(intercept), bool(logistic), int(tile))


def multinomial(X, labels, coef, intercept, tile=None):
    """Softmax cross-entropy loss and gradient sums of a chunk (see ``_multinomial``).

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_features), C-contiguous float32 or float64
    labels : ndarray of shape (n_rows,), intp, contiguous
    coef : ndarray of shape (K, n_features), float64, C-contiguous
    intercept : ndarray of shape (K,), float64, contiguous
    tile : int or None

    Returns
    -------
    loss_sum : float
    grad : ndarray of shape (K, n_features + 1)
    """
    tile = tile_rows(X.shape[1], X.itemsize) if tile is None else tile
    return _run(_multinomial, X.dtype, X, labels, coef, intercept, int(tile))


def _signature(kernel, dtype):
    """The one signature compiled per kernel and dtype: arrays typed read-only and
    unaligned, which every C-contiguous array of the dtype converts to. Without it numba
    compiles a variant per combination of flags it sees (read-only w from a message,
    misaligned chunks), ~5 s each mid-fit; the code is as fast (measured, within 1 %)."""
    types = numba.types

    def array(element, ndim):
        element = numba.from_dtype(np.dtype(element))
        return types.Array(element, ndim, "C", readonly=True, aligned=False)

    if kernel is _binary:
        vectors = (array(np.float64, 1), array(np.float64, 1))
        return (array(dtype, 2), *vectors, types.float64, types.boolean, types.intp)
    labels, weights = array(np.intp, 1), array(np.float64, 2)
    return (array(dtype, 2), labels, weights, array(np.float64, 1), types.intp)


_COMPILED: set[Any] = set()
_COMPILE_LOCK = threading.Lock()


def _prepare(kernel, dtype):
    """Compile (or load from the cache) ``kernel`` for ``dtype``, then allow no other
    variant: later calls convert their arguments to the compiled signature."""
    with _COMPILE_LOCK:  # threads of a worker may both reach a first call
        if (kernel, dtype) in _COMPILED:
            return
        kernel.disable_compile(False)
        try:
            kernel.compile(_signature(kernel, dtype))
        finally:
            if kernel.signatures:  # numba refuses to disable a dispatcher with none
                kernel.disable_compile(True)
        _COMPILED.add((kernel, dtype))


def _run(kernel, dtype, *arguments):
    if (kernel, dtype) not in _COMPILED:
        _ensure(kernel, dtype)
    return kernel(*arguments)


def _ensure(kernel, dtype):
    """:func:`_prepare`, without numba's disk cache if reading or writing it fails.

    The cache directory is chosen when this module is imported; if it stops being usable
    later (removed, replaced, made unwritable), numba raises OSError while loading or
    saving a compiled variant. The caches of all the kernels are then turned off (the
    dispatchers' ``_cache``: numba has no public switch) and the kernel is compiled in
    memory instead of failing the task.
    """
    try:
        _prepare(kernel, dtype)
    except OSError as error:
        warnings.warn(
            f"numba's cache of daskgd's kernels failed ({error}); they are compiled in "
            "this process only",
            RuntimeWarning,
            stacklevel=4,
        )
        disable_caches()
        _prepare(kernel, dtype)


def warm_up():
    """Compile (or load from the cache) the kernels for float32 and float64 chunks.

    The first call of a kernel for a dtype in a process compiles it (5-10 s here) or
    loads it from numba's cache (~0.2 s). Call this before timing (benchmarks) or on
    every worker (``client.run(kernels.warm_up)``) so that no iteration pays for it.

    Returns
    -------
    seconds : float
        Time spent.
    """
    start = time.perf_counter()
    if AVAILABLE:
        for kernel in (_binary, _multinomial):
            for dtype in (np.dtype(np.float64), np.dtype(np.float32)):
                _ensure(kernel, dtype)
    return time.perf_counter() - start


def cache_status():
    """Where numba caches the kernels and how this process got them.

    Returns
    -------
    dict
        ``available`` (numba importable), ``cache_path`` (None without a usable cache),
        and per kernel the numbers of variants loaded from the cache (``hits``) and
        compiled (``misses``) in this process.
    """
    status = {"available": AVAILABLE, "cache_path": None}
    if not AVAILABLE:
        return status
    for name, kernel in (("binary", _binary), ("multinomial", _multinomial)):
        stats = kernel.stats
        status["cache_path"] = status["cache_path"] or stats.cache_path
        status[name] = {
            "hits": sum(stats.cache_hits.values()),
            "misses": sum(stats.cache_misses.values()),
        }
    return status
