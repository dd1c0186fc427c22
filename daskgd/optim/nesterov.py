"""Accelerated proximal gradient (FISTA) with adaptive restart."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from daskgd.models.objective import Objective
from daskgd.optim.base import MAX_BACKTRACKS, Optimizer, ValueFn, check_learning_rate


class NesterovState(NamedTuple):
    step_size: float
    x_previous: np.ndarray
    momentum: float
    stalled: bool = False


class Nesterov(Optimizer):
    """Accelerated proximal gradient (FISTA, Beck & Teboulle 2009) with adaptive restart.

    The parameters the driver sees are the extrapolated points y, where the gradient is
    evaluated once per iteration; the state keeps the last proximal point x. Momentum
    restarts when it points uphill, (y - x+).(x+ - x) > 0 (O'Donoghue & Candes 2015),
    which also protects against a step a little too long. A non-finite loss at the new y
    halves the step and drops the momentum (one more evaluation).

    Parameters
    ----------
    learning_rate : 'auto' or float, default='auto'
        'auto' uses 1 / L with L estimated from the data.
    """

    name = "nesterov"

    def __init__(self, learning_rate: Any = "auto"):
        check_learning_rate(learning_rate)
        self.learning_rate = learning_rate

    def init(self, params, *, value, grad, objective: Objective) -> NesterovState:
        return NesterovState(self.initial_step(objective), np.asarray(params, float), 1.0)

    def update(
        self,
        grad: np.ndarray,
        state: NesterovState,
        params: np.ndarray,
        *,
        value: float,
        value_fn: ValueFn,
        objective: Objective,
    ) -> tuple[np.ndarray, NesterovState]:
        step, x_previous, momentum = state.step_size, state.x_previous, state.momentum
        for _ in range(MAX_BACKTRACKS):
            x_new = objective.prox(params - step * grad, step)
            next_momentum = (1.0 + math.sqrt(1.0 + 4.0 * momentum**2)) / 2.0
            if (params - x_new) @ (x_new - x_previous) > 0:
                next_momentum = 1.0  # restart: momentum points uphill
            y_new = x_new + ((momentum - 1.0) / next_momentum) * (x_new - x_previous)
            smooth_value, _ = value_fn(y_new)
            if math.isfinite(smooth_value + objective.nonsmooth(y_new)):
                return y_new, NesterovState(step, x_new, next_momentum)
            # Diverging extrapolation: shorter step, no momentum.
            step, momentum, x_previous = step * 0.5, 1.0, params
        # Still diverging: the driver sees the non-finite loss at y_new and stops.
        return y_new, NesterovState(step, x_new, 1.0)
