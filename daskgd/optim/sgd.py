"""Mini-batch proximal stochastic gradient descent."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from daskgd.models.objective import Objective
from daskgd.optim.base import Optimizer, ValueFn, check_learning_rate


class SGDState(NamedTuple):
    step_count: int
    initial_step: float
    step_size: float
    stalled: bool = False


class SGD(Optimizer):
    """Mini-batch proximal SGD with learning rate eta_t = eta_0 / (1 + decay * t).

    The optimizer only steps along the gradient it is given; which chunks make the
    mini-batch of step t is the strategy's business (:func:`daskgd.engine.sampling.
    batch_blocks`: ``batch_blocks`` chunks drawn without replacement from a generator
    seeded with (``random_state``, t), so a fit is reproducible and the state holds no
    random generator). Gradients are noisy, so ``tol`` is compared with the relative
    change of w, max|w_t - w_{t-1}| / max(1, max|w_t|).

    Parameters
    ----------
    learning_rate : 'auto' or float, default='auto'
        eta_0; 'auto' uses 1 / L with L estimated from the data.
    batch_blocks : int or None, default=None
        Chunks per mini-batch; None uses a quarter of the chunks (at least 1).
    decay : float, default=0.01
        Decay of the learning rate per iteration.
    random_state : int or None, default=None
        Seed of the chunk draws.
    """

    name = "sgd"
    stochastic = True

    def __init__(
        self,
        learning_rate: Any = "auto",
        batch_blocks: int | None = None,
        decay: float = 0.01,
        random_state: int | None = None,
    ):
        check_learning_rate(learning_rate)
        if batch_blocks is not None and (
            isinstance(batch_blocks, bool) or not isinstance(batch_blocks, int) or batch_blocks < 1
        ):
            raise ValueError(
                f"batch_blocks must be a positive integer or None, got {batch_blocks!r}"
            )
        if not (isinstance(decay, (int, float)) and math.isfinite(decay) and decay >= 0):
            raise ValueError(f"decay must be a non-negative number, got {decay!r}")
        self.learning_rate = learning_rate
        self.batch_blocks = batch_blocks
        self.decay = decay
        self.random_state = random_state

    def init(self, params, *, value, grad, objective: Objective) -> SGDState:
        step = self.initial_step(objective)
        return SGDState(0, step, step)

    def update(
        self,
        grad: np.ndarray,
        state: SGDState,
        params: np.ndarray,
        *,
        value: float,
        value_fn: ValueFn,
        objective: Objective,
    ) -> tuple[np.ndarray, SGDState]:
        step = state.initial_step / (1.0 + self.decay * state.step_count)
        w_new = objective.prox(params - step * grad, step)
        return w_new, SGDState(state.step_count + 1, state.initial_step, step)

    def optimality(self, params, grad, state, *, previous, objective) -> float:
        if previous is None:  # the initial point: the gradient, as for the others
            return super().optimality(params, grad, state, previous=None, objective=objective)
        change = float(np.max(np.abs(params - previous))) if params.size else 0.0
        return change / max(1.0, float(np.max(np.abs(params))) if params.size else 1.0)
