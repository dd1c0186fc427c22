"""The chunk function of a scipy.sparse chunk: loss and gradient sums through scipy.

:meth:`daskgd.models.losses.Model.loss_grad` calls :func:`sparse_loss_grad` when the
chunk is a scipy.sparse matrix (placement makes every sparse chunk CSR, with sorted
indices). The work is two sparse-dense products over the stored entries only, never a
dense copy of the chunk:

    z = X @ coef + intercept          (n_rows,) or (n_rows, K)
    loss, r = model._link(z, y)       the same link as the dense path
    grad_coef = X.T @ r               scipy's CSR transpose product (a CSC view, no copy)

so the sums are those of the dense path on ``X.toarray()`` up to rounding (the same
terms, added in another order). A float32 chunk is multiplied as float32 entries by a
float64 ``coef``: scipy forms the products in float64.
"""

from __future__ import annotations

import numpy as np

__all__ = ["sparse_decision", "sparse_loss_grad"]


def sparse_loss_grad(model, X, y, coef, intercept, weights=None):
    """``(loss_sum, grad_coef, grad_intercept)`` of one sparse chunk.

    Parameters
    ----------
    model : daskgd.models.losses.Model
        Its ``_link`` turns the linear predictors into the loss sum and residuals.
    X : scipy.sparse matrix of shape (n_rows, n_features)
        The chunk (any scipy format; CSR is used as it is, others are converted).
    y : ndarray of shape (n_rows,)
        Targets as returned by ``model._targets``.
    coef : ndarray of shape (n_features,) or (n_features, K)
    intercept : float, ndarray of shape (K,) or None
    weights : ndarray of shape (n_rows,) or None
        Row weights.

    Returns
    -------
    loss_sum : float
    grad_coef : ndarray shaped like ``coef``
    grad_intercept : ndarray of shape (n_outputs,)
    """
    if X.format != "csr":
        X = X.tocsr()
    z = np.asarray(X @ coef, dtype=np.float64)
    if intercept is not None:
        z = z + intercept
    loss_sum, residual = model._link(z, y, weights)
    grad_coef = np.asarray(X.T @ residual, dtype=np.float64)
    grad_intercept = np.atleast_1d(residual.sum(axis=0)).astype(np.float64)
    return loss_sum, grad_coef, grad_intercept


def sparse_decision(block, coef, intercept):
    """``block @ coef + intercept`` for one sparse block, as a dense array."""
    z = np.asarray(block @ coef, dtype=np.float64)
    return z if intercept is None else z + intercept
