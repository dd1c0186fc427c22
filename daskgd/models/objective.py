"""The objective the optimizers minimise, from the chunk sums and the penalty.

    F(w) = f(w) + h(w),   f(w) = loss_sum(w) / n_rows + smooth_penalty(w),
                          h(w) = nonsmooth_penalty(w)

Pure and small: it holds the penalty, the mask of penalised entries and (once known)
the Lipschitz estimate of grad f, so it pickles in a few bytes and the same object
serves an optimizer on the client, on a server or on every worker. The sums come from
whoever holds the data (a strategy), through :meth:`Objective.smooth_value_grad`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from daskgd.models.penalties import Penalty


@dataclass
class Objective:
    """Composite objective F = f + h over data held elsewhere.

    Parameters
    ----------
    penalty : daskgd.models.penalties.Penalty
        Regularisation; its smooth part joins f, its non-smooth part is handled by
        :meth:`prox`.
    mask : ndarray of bool, shape (n_params,)
        Entries of w that are penalised (coefficients, not intercepts).
    lipschitz_fn : callable or None
        Returns an estimate of the Lipschitz constant of grad (loss_sum / n_rows), asked
        once, when an optimizer first needs it (a pass over the data); call
        :meth:`resolved` before shipping the objective to another process.
    """

    penalty: Penalty
    mask: np.ndarray
    lipschitz_fn: Callable[[], float] | None = field(default=None, repr=False)
    _lipschitz: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.mask = np.asarray(self.mask, dtype=bool)

    @property
    def n_params(self) -> int:
        return int(self.mask.size)

    @property
    def is_smooth(self) -> bool:
        return bool(self.penalty.is_smooth)

    def smooth_value_grad(
        self, w: np.ndarray, loss_sum: float, grad_sum: np.ndarray, n_rows: int
    ) -> tuple[float, np.ndarray]:
        """f(w) and grad f(w) from the chunk sums at w."""
        n_rows = max(int(n_rows), 1)
        penalty_value, penalty_grad = self.penalty.smooth(w, self.mask)
        value = loss_sum / n_rows + penalty_value
        grad = np.asarray(grad_sum, dtype=np.float64) / n_rows + penalty_grad
        return float(value), grad

    def nonsmooth(self, w: np.ndarray) -> float:
        return float(self.penalty.nonsmooth_value(w, self.mask))

    def prox(self, w: np.ndarray, step: float) -> np.ndarray:
        return self.penalty.prox(w, step, self.mask)

    def gradient_mapping_norm(self, w: np.ndarray, grad: np.ndarray, step: float) -> float:
        """inf-norm of (w - prox(w - step * grad, step)) / step: the gradient for smooth F."""
        if self.is_smooth:
            return float(np.max(np.abs(grad))) if grad.size else 0.0
        moved = w - self.prox(w - step * grad, step)
        return float(np.max(np.abs(moved))) / step if grad.size else 0.0

    @property
    def lipschitz(self) -> float:
        """Lipschitz estimate of grad f: the loss's (asked once) plus the penalty's."""
        if self._lipschitz is None:
            if self.lipschitz_fn is None:
                raise ValueError(
                    "this objective has no Lipschitz estimate: give lipschitz_fn, or a "
                    "numeric learning_rate"
                )
            ones, zeros = np.ones(self.n_params), np.zeros(self.n_params)
            # The smooth penalties are quadratic: the change of their gradient between
            # 0 and 1 is their curvature on each entry.
            penalty_curvature = self.penalty.smooth(ones, self.mask)[1]
            penalty_curvature = penalty_curvature - self.penalty.smooth(zeros, self.mask)[1]
            extra = float(np.max(penalty_curvature)) if self.n_params else 0.0
            self._lipschitz = max(float(self.lipschitz_fn()) + extra, 1e-12)
        return self._lipschitz

    def resolved(self, needs_lipschitz: bool) -> Objective:
        """A copy with no callable inside (the estimate computed first if needed)."""
        lipschitz = self.lipschitz if needs_lipschitz else self._lipschitz
        return Objective(self.penalty, self.mask, None, lipschitz)
