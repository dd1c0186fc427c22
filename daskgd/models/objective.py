"""The objective the optimizers minimise, assembled on the client.

    F(w) = loss_sum(w) / n_rows + smooth_penalty(w) + nonsmooth_penalty(w)

The sums come from a strategy session (one round trip per call of
:meth:`Objective.value_grad`); the penalty is evaluated on the client, where w is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from daskgd.models.penalties import Penalty


class Objective:
    """Composite objective over the data bound to ``session``.

    Parameters
    ----------
    session : daskgd.strategies.mapreduce.Session
        Gathers ``(loss_sum, grad_sum, n_rows)`` at a given w.
    penalty : daskgd.models.penalties.Penalty
        Regularisation; its smooth part joins the gradient, its non-smooth part is
        handled by :meth:`prox`.
    mask : ndarray of bool, shape (n_params,)
        Entries of w that are penalised (coefficients, not intercepts).
    """

    def __init__(self, session: Any, penalty: Penalty, mask: np.ndarray):
        self.session = session
        self.penalty = penalty
        self.mask = np.asarray(mask, dtype=bool)
        self.evaluations: list = []
        self._lipschitz: float | None = None

    @property
    def n_params(self) -> int:
        return int(self.mask.size)

    @property
    def n_blocks(self) -> int:
        return int(self.session.n_blocks)

    @property
    def is_smooth(self) -> bool:
        return bool(self.penalty.is_smooth)

    def value_grad(
        self, w: np.ndarray, blocks: Sequence[int] | None = None
    ) -> tuple[float, np.ndarray]:
        """Smooth part of F and its gradient at w (one round trip to the cluster)."""
        evaluation = self.session.evaluate(w, blocks)
        self.evaluations.append(evaluation)
        n_rows = max(evaluation.n_rows, 1)
        penalty_value, penalty_grad = self.penalty.smooth(w, self.mask)
        value = evaluation.loss_sum / n_rows + penalty_value
        grad = evaluation.grad_sum / n_rows + penalty_grad
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
        """Estimate of the Lipschitz constant of the smooth gradient (one round trip, cached)."""
        if self._lipschitz is None:
            curvature = self.session.model.curvature * self.session.top_gram_eigenvalue()
            ones, zeros = np.ones(self.n_params), np.zeros(self.n_params)
            # The smooth penalties are quadratic: the change of their gradient between
            # 0 and 1 is their curvature on each entry.
            penalty_curvature = self.penalty.smooth(ones, self.mask)[1]
            penalty_curvature = penalty_curvature - self.penalty.smooth(zeros, self.mask)[1]
            extra = float(np.max(penalty_curvature)) if self.n_params else 0.0
            self._lipschitz = max(curvature + extra, 1e-12)
        return self._lipschitz
