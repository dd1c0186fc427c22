"""Penalties on the coefficients, split into a smooth part and a proximal (L1) part.

Every penalty here is an elastic net

    penalty(w) = strength * (l1_ratio * ||w_m||_1 + 0.5 * (1 - l1_ratio) * ||w_m||_2^2)

where ``w_m`` are the entries of ``w`` selected by a boolean ``mask`` (the coefficients;
intercepts are never penalised). The optimizers add the smooth L2 part to the gradient on
the client and handle the L1 part with a proximal (soft-thresholding) step.
"""

import math

import numpy as np

__all__ = [
    "PENALTIES",
    "ElasticNet",
    "L1",
    "L2",
    "NoPenalty",
    "Penalty",
    "make_penalty",
]


def _check_strength(strength):
    """Return ``strength`` as a float, or raise ValueError naming it."""
    try:
        value = float(strength)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(strength, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"strength must be a finite number >= 0, got {strength!r}")
    return value


def _check_l1_ratio(l1_ratio):
    """Return ``l1_ratio`` as a float, or raise ValueError naming it."""
    try:
        value = float(l1_ratio)
    except (TypeError, ValueError):
        value = math.nan
    # NaN fails both comparisons, so it is rejected too.
    if isinstance(l1_ratio, bool) or not 0.0 <= value <= 1.0:
        raise ValueError(f"l1_ratio must be a number in [0, 1], got {l1_ratio!r}")
    return value


def _check_mask(w, mask):
    """Return ``(w, mask)`` as float64 / bool arrays of the same shape (p,)."""
    w = np.asarray(w, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if w.ndim != 1 or mask.shape != w.shape:
        raise ValueError(
            f"w and mask must be 1-D of the same shape, got {w.shape} and {mask.shape}"
        )
    return w, mask


class Penalty:
    """Base class: an elastic net with given L1 and L2 weights.

    Subclasses only choose the two weights in their constructor.

    Attributes
    ----------
    l1_weight : float
        Weight of ``||w_m||_1`` (``strength * l1_ratio``).
    l2_weight : float
        Weight of ``0.5 * ||w_m||_2^2`` (``strength * (1 - l1_ratio)``).
    """

    name = ""

    def __init__(self, l1_weight=0.0, l2_weight=0.0):
        self.l1_weight = float(l1_weight)
        self.l2_weight = float(l2_weight)

    @property
    def is_smooth(self):
        """bool : True when there is no L1 part, so ``prox`` is the identity."""
        return self.l1_weight == 0.0

    def smooth(self, w, mask):
        """Value and gradient of the differentiable (L2) part.

        Parameters
        ----------
        w : ndarray of shape (p,)
            Parameter vector.
        mask : ndarray of shape (p,), dtype bool
            True for the entries that are penalised.

        Returns
        -------
        value : float
            ``0.5 * l2_weight * ||w[mask]||_2^2``.
        grad : ndarray of shape (p,)
            ``l2_weight * w`` on masked entries, 0 elsewhere.
        """
        w, mask = _check_mask(w, mask)
        masked = np.where(mask, w, 0.0)
        value = 0.5 * self.l2_weight * float(masked @ masked)
        return value, self.l2_weight * masked

    def nonsmooth_value(self, w, mask):
        """Value of the L1 part, ``l1_weight * ||w[mask]||_1`` (0 for smooth penalties).

        Parameters
        ----------
        w : ndarray of shape (p,)
            Parameter vector.
        mask : ndarray of shape (p,), dtype bool
            True for the entries that are penalised.

        Returns
        -------
        float
        """
        w, mask = _check_mask(w, mask)
        return self.l1_weight * float(np.abs(w[mask]).sum())

    def prox(self, w, step, mask):
        """Proximal operator of ``step`` times the L1 part.

        Solves ``argmin_u 0.5 * ||u - w||^2 + step * l1_weight * ||u[mask]||_1``:
        soft-thresholding of the masked entries by ``step * l1_weight``; unmasked
        entries are returned unchanged.

        Parameters
        ----------
        w : ndarray of shape (p,)
            Point at which to evaluate the operator.
        step : float
            Step size, >= 0.
        mask : ndarray of shape (p,), dtype bool
            True for the entries that are penalised.

        Returns
        -------
        ndarray of shape (p,)
            A new array; ``w`` is not modified.
        """
        w, mask = _check_mask(w, mask)
        step = float(step)
        if not step >= 0.0:
            raise ValueError(f"step must be >= 0, got {step!r}")
        threshold = step * self.l1_weight
        if threshold == 0.0:
            return w.copy()
        shrunk = np.sign(w) * np.maximum(np.abs(w) - threshold, 0.0)
        return np.where(mask, shrunk, w)

    def __repr__(self):
        return f"{type(self).__name__}()"

    def __eq__(self, other):
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self):
        return hash((type(self).__name__, self.l1_weight, self.l2_weight))


class NoPenalty(Penalty):
    """No regularisation: every method returns zero or the identity."""

    name = "none"

    def __init__(self):
        super().__init__(0.0, 0.0)


class L2(Penalty):
    """Ridge penalty ``0.5 * strength * ||w_m||_2^2``.

    Parameters
    ----------
    strength : float
        Finite, >= 0.
    """

    name = "l2"

    def __init__(self, strength):
        self.strength = _check_strength(strength)
        super().__init__(0.0, self.strength)

    def __repr__(self):
        return f"L2(strength={self.strength!r})"


class L1(Penalty):
    """Lasso penalty ``strength * ||w_m||_1``, handled entirely by ``prox``.

    Parameters
    ----------
    strength : float
        Finite, >= 0.
    """

    name = "l1"

    def __init__(self, strength):
        self.strength = _check_strength(strength)
        super().__init__(self.strength, 0.0)

    def __repr__(self):
        return f"L1(strength={self.strength!r})"


class ElasticNet(Penalty):
    """``strength * (l1_ratio * ||w_m||_1 + 0.5 * (1 - l1_ratio) * ||w_m||_2^2)``.

    Parameters
    ----------
    strength : float
        Finite, >= 0.
    l1_ratio : float
        In [0, 1]; 0 is ridge, 1 is lasso.
    """

    name = "elasticnet"

    def __init__(self, strength, l1_ratio):
        self.strength = _check_strength(strength)
        self.l1_ratio = _check_l1_ratio(l1_ratio)
        super().__init__(self.strength * self.l1_ratio, self.strength * (1.0 - self.l1_ratio))

    def __repr__(self):
        return f"ElasticNet(strength={self.strength!r}, l1_ratio={self.l1_ratio!r})"


PENALTIES = {
    "none": NoPenalty,
    "l2": L2,
    "l1": L1,
    "elasticnet": ElasticNet,
}


def make_penalty(name, strength, l1_ratio=0.0):
    """Build a penalty from its name.

    Parameters
    ----------
    name : {None, "none", "l2", "l1", "elasticnet"}
        Penalty name; None means no penalty.
    strength : float
        Overall strength (ignored for no penalty).
    l1_ratio : float, default 0.0
        L1 share of the strength, used by ``"elasticnet"`` only.

    Returns
    -------
    Penalty

    Raises
    ------
    ValueError
        For an unknown name or invalid ``strength`` / ``l1_ratio``.
    """
    if name is None or name == "none":
        return NoPenalty()
    if name == "l2":
        return L2(strength)
    if name == "l1":
        return L1(strength)
    if name == "elasticnet":
        return ElasticNet(strength, l1_ratio)
    raise ValueError(
        f"unknown penalty name {name!r}; valid names: None, {', '.join(map(repr, PENALTIES))}"
    )
