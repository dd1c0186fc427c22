"""Proximal gradient descent with a backtracking step that is free when accepted."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from daskgd.models.objective import Objective
from daskgd.optim.base import MAX_BACKTRACKS, Optimizer, ValueFn, check_learning_rate


class GradientDescentState(NamedTuple):
    step_size: float
    stalled: bool = False


class GradientDescent(Optimizer):
    """Proximal gradient descent: w <- prox(w - step * grad(w), step).

    Parameters
    ----------
    learning_rate : 'auto' or float, default='auto'
        'auto' starts from 1 / L, L estimated from the data.
    backtracking : bool or None, default=None
        Halve the step until the sufficient-decrease condition
        F(w+) <= f(w) + g.(w+ - w) + ||w+ - w||^2 / (2 step) holds (Beck & Teboulle
        2009, FISTA paper, sec. 3). The trial's evaluation at the accepted w+ is also the
        next iteration's gradient (``value_fn`` is memoised), so an accepted step costs no
        extra round trip. None means on for 'auto' and off for a fixed learning rate.
    """

    name = "gd"

    def __init__(self, learning_rate: Any = "auto", backtracking: bool | None = None):
        check_learning_rate(learning_rate)
        self.learning_rate = learning_rate
        self.backtracking = learning_rate == "auto" if backtracking is None else bool(backtracking)

    @property
    def line_search(self) -> bool:  # type: ignore[override]
        return self.backtracking

    def init(self, params, *, value, grad, objective: Objective) -> GradientDescentState:
        return GradientDescentState(self.initial_step(objective))

    def update(
        self,
        grad: np.ndarray,
        state: GradientDescentState,
        params: np.ndarray,
        *,
        value: float,
        value_fn: ValueFn,
        objective: Objective,
    ) -> tuple[np.ndarray, GradientDescentState]:
        step = state.step_size
        for _ in range(MAX_BACKTRACKS):
            w_new = objective.prox(params - step * grad, step)
            if not self.backtracking:
                return w_new, GradientDescentState(step)
            new_value, _ = value_fn(w_new)
            if sufficient_decrease(params, value, grad, w_new, new_value, step):
                return w_new, GradientDescentState(step)
            step *= 0.5
        return params, state._replace(stalled=True)


def sufficient_decrease(
    w: np.ndarray, value: float, grad: np.ndarray, w_new: np.ndarray, new_value: float, step: float
) -> bool:
    moved = w_new - w
    bound = value + grad @ moved + (moved @ moved) / (2 * step)
    # A relative slack absorbs rounding in the reduction of the sums.
    return bool(math.isfinite(new_value) and new_value <= bound + 1e-12 * abs(bound))
