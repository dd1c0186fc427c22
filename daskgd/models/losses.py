"""Loss functions of linear models, evaluated on one row chunk at a time.

Everything here is pure numpy maths on in-memory arrays: a chunk function receives one
row chunk of ``X`` and ``y`` plus the full parameter vector ``w`` and returns *sums*
(loss, gradient, row count), so that chunk results from any partition of the rows add up
to the whole-array values. The parameter layout is the one fixed in
``docs/architecture.md``:

- least squares and binary logistic: ``w = [coef_0 .. coef_{d-1}, intercept]`` when
  ``fit_intercept``, else ``w = coef``;
- multinomial with ``K`` classes: ``W`` of shape ``(K, d + fit_intercept)`` flattened
  row-major; row ``k`` holds class ``k``'s coefficients then its intercept.

Model objects only carry their constructor arguments, so they pickle in a few bytes and
can be shipped to every task of a dask graph.
"""

import numpy as np

from daskgd.data.sparse import is_sparse, is_sparse_array
from daskgd.models.sparse import sparse_decision, sparse_loss_grad

__all__ = [
    "BLOCK_ROWS",
    "MODELS",
    "LeastSquares",
    "Logistic",
    "Model",
    "Multinomial",
    "get_model",
    "packed_loss_grad",
    "unpack",
]

# Rows processed together inside a chunk. A 2048 x 100 float64 block is 1.6 MiB, which fits
# a 2 MiB L2 cache: ``block @ coef`` pulls the block in and ``block.T @ residual`` re-reads
# it from cache instead of from main memory, so a chunk is streamed from memory only once.
# Read at call time (not bound as a default argument) so tests can shrink it.
BLOCK_ROWS = 2048


class Model:
    """Base class of the linear models: the blocked loss/gradient loop and the layout.

    Subclasses set ``name`` and ``curvature`` and implement ``_link``; models whose
    parameters are not a single coefficient vector also override ``_n_outputs``.

    Attributes
    ----------
    name : str
        Key of the model in ``MODELS``.
    curvature : float
        Upper bound on the second derivative of the per-row loss with respect to the
        linear predictor ``z``, so that the Lipschitz constant of the mean-loss gradient
        is at most ``curvature * ||[X, 1]||_2^2 / n``.
    """

    name = ""
    curvature = 1.0

    def _n_outputs(self):
        """Number of linear predictors per row (1, or K for multinomial)."""
        return 1

    def n_params(self, n_features, fit_intercept):
        """Length of the parameter vector.

        Parameters
        ----------
        n_features : int
            Number of columns of ``X``.
        fit_intercept : bool
            Whether the model has an (unpenalised) intercept per output.

        Returns
        -------
        int
            ``n_outputs * (n_features + fit_intercept)``.
        """
        return self._n_outputs() * (int(n_features) + int(bool(fit_intercept)))

    def penalty_mask(self, n_features, fit_intercept):
        """Which entries of ``w`` a penalty may act on.

        Parameters
        ----------
        n_features : int
            Number of columns of ``X``.
        fit_intercept : bool
            Whether ``w`` holds intercepts.

        Returns
        -------
        mask : ndarray of shape (n_params,), dtype bool
            True for coefficients, False for intercepts.
        """
        n_columns = int(n_features) + int(bool(fit_intercept))
        mask = np.ones((self._n_outputs(), n_columns), dtype=bool)
        if fit_intercept:
            mask[:, -1] = False
        return mask.reshape(-1)

    def _split(self, w, n_features, fit_intercept):
        """View ``w`` as ``(coef, intercept)`` ready for ``X @ coef + intercept``.

        ``coef`` has shape (d,) and ``intercept`` is a scalar for single-output models;
        for K outputs ``coef`` has shape (d, K) and ``intercept`` shape (K,). The
        intercept is None without ``fit_intercept``.
        """
        w = np.asarray(w, dtype=np.float64)
        expected = self.n_params(n_features, fit_intercept)
        if w.shape != (expected,):
            raise ValueError(
                f"w must have shape ({expected},) for {n_features} features and "
                f"fit_intercept={bool(fit_intercept)}, got shape {w.shape}"
            )
        n_outputs = self._n_outputs()
        table = w.reshape(n_outputs, -1)
        intercept = table[:, n_features] if fit_intercept else None
        if n_outputs == 1:
            return table[0, :n_features], (None if intercept is None else intercept[0])
        return table[:, :n_features].T, intercept

    def _join(self, grad_coef, grad_intercept, fit_intercept):
        """Flatten gradients shaped like ``_split``'s output back to the layout of ``w``."""
        columns = np.reshape(grad_coef, (-1, self._n_outputs())).T
        if fit_intercept:
            columns = np.hstack([columns, np.reshape(grad_intercept, (-1, 1))])
        return columns.reshape(-1)

    def _targets(self, y, n_rows):
        """Flatten ``y`` to (n_rows,) float64; subclasses may convert it further."""
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if y.shape[0] != n_rows:
            raise ValueError(f"y has {y.shape[0]} entries but X has {n_rows} rows")
        return y

    def _link(self, z, y, weights=None):
        """Loss sum and residual ``d loss / d z`` for one block of linear predictors.

        Parameters
        ----------
        z : ndarray of shape (n_block,) or (n_block, K)
            Linear predictors of the block, float64.
        y : ndarray of shape (n_block,)
            Targets of the block as returned by ``_targets``.
        weights : ndarray of shape (n_block,) or None
            Row weights: the loss sum and the residuals are weighted by them.

        Returns
        -------
        loss_sum : float
        residual : ndarray, same shape as ``z``
        """
        raise NotImplementedError

    def loss_grad(self, w, X, y, fit_intercept):
        """Loss and gradient summed over the rows of one chunk, in one pass over ``X``.

        A compiled kernel (:mod:`daskgd.models.kernels`) does the work when numba is
        importable, the model has one and ``X`` suits it (C-contiguous float32 or
        float64); otherwise, or with ``DASKGD_KERNELS=numpy``, the numpy block loop
        does. Both give the same sums up to rounding (tests/test_kernels.py).

        Parameters
        ----------
        w : ndarray of shape (n_params,)
            Parameter vector (see the module docstring for its layout).
        X : ndarray or scipy.sparse matrix of shape (n_rows, n_features)
            float32 or float64, any memory layout. float32 is read as it is and every
            product and sum is formed in float64. A sparse chunk goes to
            :func:`daskgd.models.sparse.sparse_loss_grad` (never densified).
        y : ndarray of shape (n_rows,) or (n_rows, 1)
            Targets as float.
        fit_intercept : bool
            Whether ``w`` holds intercepts.

        Returns
        -------
        loss_sum : float
            Sum of the per-row losses.
        grad_sum : ndarray of shape (n_params,)
            Gradient of ``loss_sum`` with respect to ``w``, float64.
        n_rows : int
            Number of rows of the chunk.
        """
        sparse = is_sparse(X)
        if not sparse:
            X = np.asarray(X)
        n_rows, n_features = X.shape
        if n_rows == 0:
            # Empty chunks (and dask's zero-size meta probes) contribute nothing.
            return 0.0, np.zeros(np.size(w), dtype=np.float64), 0
        coef, intercept = self._split(w, n_features, fit_intercept)
        y, weights = _weight_column(y)
        y = self._targets(y, n_rows)
        if sparse:  # its own chunk function: scipy's products on the stored entries
            sums = sparse_loss_grad(self, X, y, coef, intercept, weights)
        else:
            sums = self._dense_sums(X, y, coef, intercept, weights)
        loss_sum, grad_coef, grad_intercept = sums
        return float(loss_sum), self._join(grad_coef, grad_intercept, fit_intercept), n_rows

    def _dense_sums(self, X, y, coef, intercept, weights):
        """``(loss_sum, grad_coef, grad_intercept)`` of a dense chunk: kernel or numpy."""
        kernels = _kernels_for(X)
        sums = None
        if kernels is not None and weights is None:  # the kernels take no sample weights
            sums = self._kernel(kernels, X, y, coef, intercept)
        if sums is None:
            sums = self._blocked_loss_grad(X, y, coef, intercept, weights)
        return sums

    def _kernel(self, kernels, X, y, coef, intercept):
        """``(loss_sum, grad_coef, grad_intercept)`` by a compiled kernel, or None if the
        model has none (then the numpy block loop runs)."""
        return None

    def _blocked_loss_grad(self, X, y, coef, intercept, weights=None):
        """``(loss_sum, grad_coef, grad_intercept)`` by the numpy block loop."""
        n_rows, n_features = X.shape
        # The multinomial coef is a transposed view of W: with it, block @ coef left BLAS
        # for numpy's own loop (2.8 ms instead of 0.33 ms per 2048 x 100 block, K = 3).
        coef = np.ascontiguousarray(coef)
        loss_sum = 0.0
        grad_coef = np.zeros(coef.shape, dtype=np.float64)
        grad_intercept = np.zeros(self._n_outputs(), dtype=np.float64)
        block_rows = BLOCK_ROWS
        buffer = None
        for start in range(0, n_rows, block_rows):
            stop = min(start + block_rows, n_rows)
            block = X[start:stop]
            if not (block.dtype == np.float64 and block.flags.c_contiguous and block.flags.aligned):
                # One cache-sized float64 copy, so BLAS gets a contiguous, aligned operand
                # (a chunk received over the network can be misaligned: BLAS on it ran ~14x
                # slower here) and sums are accumulated in float64. One buffer per call,
                # not a fresh array per block: distributed's nanny sets
                # MALLOC_TRIM_THRESHOLD_, which turns off glibc's dynamic mmap threshold,
                # so on a worker every 1.6 MiB block was a fresh mmap, 400 page faults to
                # touch: ~24,000 per 125k x 100 float32 chunk, 23 -> 63 ms per chunk here.
                if buffer is None:
                    buffer = np.empty((min(block_rows, n_rows), n_features), np.float64)
                np.copyto(buffer[: stop - start], block)
                block = buffer[: stop - start]
            z = block @ coef
            if intercept is not None:
                z += intercept
            # Weighted sums (a weight per row): any chunking adds up to the same totals.
            block_weights = None if weights is None else weights[start:stop]
            block_loss, residual = self._link(z, y[start:stop], block_weights)
            loss_sum += block_loss
            grad_coef += block.T @ residual
            grad_intercept += residual.sum(axis=0)
        return loss_sum, grad_coef, grad_intercept

    def decision_function(self, w, X, fit_intercept):
        """Linear predictors ``X @ coef + intercept``.

        Parameters
        ----------
        w : ndarray of shape (n_params,)
            Parameter vector.
        X : ndarray or dask.array.Array of shape (n_rows, n_features)
            Only ``@`` and ``+`` are used, so a dask array stays lazy.
        fit_intercept : bool
            Whether ``w`` holds intercepts.

        Returns
        -------
        z : array of shape (n_rows,), or (n_rows, K) for multinomial
            Same array type as ``X``.
        """
        coef, intercept = self._split(w, X.shape[1], fit_intercept)
        if is_sparse_array(X):  # dask's matmul cannot take sparse blocks: one per block
            coef = np.ascontiguousarray(coef)
            if coef.ndim == 1:
                shape = {"chunks": (X.chunks[0],), "drop_axis": 1}
            else:
                shape = {"chunks": (X.chunks[0], (coef.shape[1],))}
            return X.map_blocks(
                sparse_decision,
                coef,
                intercept,
                dtype=np.float64,
                meta=np.empty((0,) * (coef.ndim), np.float64),
                **shape,
            )
        z = X @ coef
        if is_sparse(X):
            z = np.asarray(z)
        return z if intercept is None else z + intercept

    def __repr__(self):
        return f"{type(self).__name__}()"

    def __eq__(self, other):
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(vars(self).items()))))


class LeastSquares(Model):
    """Squared error ``0.5 * (z - y) ** 2`` with ``z = x @ coef + intercept``."""

    name = "least_squares"
    curvature = 1.0

    def _link(self, z, y, weights=None):
        residual = z - y
        if weights is None:
            return 0.5 * float(residual @ residual), residual
        weighted = weights * residual
        return 0.5 * float(weighted @ residual), weighted

    def _kernel(self, kernels, X, y, coef, intercept):
        return _binary_kernel(kernels, X, y, coef, intercept, logistic=False)


class Logistic(Model):
    """Binary cross-entropy ``log(1 + exp(z)) - y * z`` for targets ``y`` in {0., 1.}.

    Evaluated as ``max(z, 0) + log1p(exp(-|z|)) - y * z``: the exponent is never positive,
    so nothing overflows and the loss and sigmoid stay finite for any finite ``z``.
    """

    name = "logistic"
    curvature = 0.25

    def _link(self, z, y, weights=None):
        decay = np.exp(-np.abs(z))
        loss = np.maximum(z, 0.0) + np.log1p(decay) - y * z
        inverse = 1.0 / (1.0 + decay)
        # sigmoid(z) = 1 / (1 + e^-z) for z >= 0 and e^z / (1 + e^z) for z < 0, both from
        # the same decay = exp(-|z|) in (0, 1].
        probability = np.where(z >= 0, inverse, decay * inverse)
        if weights is None:
            return float(loss.sum()), probability - y
        return float(weights @ loss), weights * (probability - y)

    def _kernel(self, kernels, X, y, coef, intercept):
        return _binary_kernel(kernels, X, y, coef, intercept, logistic=True)


class Multinomial(Model):
    """Softmax cross-entropy over ``n_classes`` classes.

    Targets are class indices stored as floats (0., 1., ..., K-1). The loss of a row is
    ``logsumexp(z) - z[y]``, computed after subtracting the row maximum.

    Parameters
    ----------
    n_classes : int
        Number of classes K, at least 2.
    """

    name = "multinomial"
    # Largest eigenvalue of the softmax Hessian diag(p) - p p^T is at most 1/2.
    curvature = 0.5

    def __init__(self, n_classes):
        if not _is_integer(n_classes) or n_classes < 2:
            raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
        self.n_classes = int(n_classes)

    def __repr__(self):
        return f"Multinomial(n_classes={self.n_classes})"

    def _n_outputs(self):
        return self.n_classes

    def _targets(self, y, n_rows):
        y = super()._targets(y, n_rows)
        labels = y.astype(np.intp)
        # Negative or fractional labels would silently index the wrong column.
        if np.any(labels != y) or labels.min() < 0 or labels.max() >= self.n_classes:
            raise ValueError(f"multinomial targets must be class indices 0..{self.n_classes - 1}")
        return labels

    def _kernel(self, kernels, X, y, coef, intercept):
        n_features = X.shape[1]
        # coef arrives as the (d, K) transpose of W's block; the kernel reads W's rows.
        weights = np.ascontiguousarray(coef.T)
        intercepts = np.zeros(self.n_classes) if intercept is None else intercept
        labels = np.ascontiguousarray(y, dtype=np.intp)
        intercepts = np.ascontiguousarray(intercepts)
        loss_sum, grad = kernels.multinomial(X, labels, weights, intercepts)
        return loss_sum, grad[:, :n_features].T, grad[:, n_features]

    def _link(self, z, y, weights=None):
        rows = np.arange(z.shape[0])
        shifted = z - z.max(axis=1, keepdims=True)
        exponentials = np.exp(shifted)
        totals = exponentials.sum(axis=1)
        loss = np.log(totals) - shifted[rows, y]
        residual = exponentials / totals[:, np.newaxis]
        residual[rows, y] -= 1.0
        if weights is None:
            return float(loss.sum()), residual
        return float(weights @ loss), residual * weights[:, np.newaxis]


def _weight_column(y):
    """Targets and per-row weights: a (n, 2) chunk is ``[target, weight]`` per row."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 2:
        return y[:, 0], np.asarray(y[:, 1], dtype=np.float64)
    return y, None


def _kernels_for(X):
    """The kernels module if its kernels should take ``X``, else None.

    Imported on first use rather than with this module: importing numba takes ~0.5 s,
    which ``import daskgd`` (and the command line) need not pay.
    """
    from daskgd.models import kernels

    return kernels if kernels.enabled() and kernels.suits(X) else None


def _binary_kernel(kernels, X, y, coef, intercept, logistic):
    loss_sum, grad = kernels.binary(
        X,
        np.ascontiguousarray(y),
        np.ascontiguousarray(coef),
        0.0 if intercept is None else intercept,
        logistic,
    )
    return loss_sum, grad[:-1], grad[-1:]


def _is_integer(value):
    """True for ints and integral numpy integers, False for bools and everything else."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


MODELS = {
    "least_squares": LeastSquares,
    "logistic": Logistic,
    "multinomial": Multinomial,
}


def get_model(name, **kwargs):
    """Build a model from its name.

    Parameters
    ----------
    name : str
        One of the keys of ``MODELS``.
    **kwargs
        Constructor arguments (``n_classes`` for ``"multinomial"``).

    Returns
    -------
    Model

    Raises
    ------
    ValueError
        If ``name`` is not a known model name.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model name {name!r}; valid names: {', '.join(MODELS)}")
    return MODELS[name](**kwargs)


def packed_loss_grad(X, y, w, model, fit_intercept):
    """``model.loss_grad`` packed into one row, the per-chunk function of ``map_blocks``.

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_features)
        One row chunk of the features.
    y : ndarray of shape (n_rows,) or (n_rows, 1)
        The matching chunk of targets.
    w : ndarray of shape (n_params,)
        Parameter vector.
    model : Model
        The model to evaluate.
    fit_intercept : bool
        Whether ``w`` holds intercepts.

    Returns
    -------
    packed : ndarray of shape (1, n_params + 2), float64
        ``[loss_sum, grad_sum..., n_rows]``; summing such rows over chunks gives the
        totals, which ``unpack`` splits again.
    """
    loss_sum, grad_sum, n_rows = model.loss_grad(w, X, y, fit_intercept)
    packed = np.empty((1, grad_sum.shape[0] + 2), dtype=np.float64)
    packed[0, 0] = loss_sum
    packed[0, 1:-1] = grad_sum
    packed[0, -1] = n_rows
    return packed


def unpack(total):
    """Split a (summed) packed row back into its parts.

    Parameters
    ----------
    total : ndarray of shape (n_params + 2,) or (1, n_params + 2)
        Output of ``packed_loss_grad`` or a sum of such outputs.

    Returns
    -------
    loss_sum : float
    grad_sum : ndarray of shape (n_params,)
    n_rows : int
    """
    total = np.asarray(total, dtype=np.float64).reshape(-1)
    return float(total[0]), total[1:-1].copy(), int(round(total[-1]))
