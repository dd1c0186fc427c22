"""What every optimizer is: a configuration with two pure functions.

    state = optimizer.init(params, value=f(params), grad=g(params), objective=objective)
    params, state = optimizer.update(grad, state, params, value=f(params),
                                     value_fn=value_fn, objective=objective)

The shape is optax's (``optax/_src/base.py``): ``init``/``update`` never reach the
cluster and never mutate their state, so the same step can run on the client, on a
parameter server or on every worker of an all-reduce ring. What an optimizer needs of
the data comes in as arguments:

- ``value`` and ``grad``: the smooth part f of the objective and its gradient at
  ``params``, computed by whoever holds the data;
- ``value_fn(w) -> (f(w), grad f(w))``: a capability the strategy offers to line
  searches (one gather per call, memoised by the strategy, so the evaluation at an
  accepted point is also the next iteration's gradient and costs nothing more);
- ``objective``: the pure, client-side parts of F = f + h (the non-smooth penalty h, its
  proximal step, the gradient-mapping norm, the Lipschitz estimate).

A state is a small NamedTuple of the optimizer's own; every state has ``step_size`` (the
step the last update used, recorded in the trace) and ``stalled`` (the last update found
no point that decreases F: the loss is at the limit of floating-point precision).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from daskgd.models.objective import Objective

#: value_fn(w) -> (smooth objective value at w, its gradient)
ValueFn = Callable[[np.ndarray], tuple[float, np.ndarray]]

#: Step reductions tried before a step is given up (the fit then stops as stalled).
MAX_BACKTRACKS = 30


class State(Protocol):
    """What the driver reads of every optimizer state."""

    step_size: float
    stalled: bool


class Optimizer:
    """Base class: a configuration (hyper-parameters only) with pure init/update.

    Class attributes declare what the optimizer needs of a strategy:

    - ``supports_nonsmooth``: handles an L1 part through its proximal step;
    - ``line_search``: calls ``value_fn`` inside ``update`` (needs a strategy that can
      evaluate extra points synchronously);
    - ``stochastic``: steps along mini-batch gradients, drawn by the strategy from a
      seed and the step number (``batch_blocks`` chunks per step).
    """

    name = "optimizer"
    supports_nonsmooth = True
    line_search = False
    stochastic = False

    def initial_step(self, objective: Objective) -> float:
        learning_rate = getattr(self, "learning_rate", "auto")
        if learning_rate == "auto":
            return 1.0 / objective.lipschitz
        return float(learning_rate)

    @property
    def needs_lipschitz(self) -> bool:
        """Whether ``init`` reads ``objective.lipschitz`` (one extra pass to estimate it)."""
        return getattr(self, "learning_rate", None) == "auto"

    def init(self, params: np.ndarray, *, value: float, grad: np.ndarray, objective: Objective):
        raise NotImplementedError

    def update(
        self,
        grad: np.ndarray,
        state: Any,
        params: np.ndarray,
        *,
        value: float,
        value_fn: ValueFn,
        objective: Objective,
    ) -> tuple[np.ndarray, Any]:
        raise NotImplementedError

    def optimality(
        self,
        params: np.ndarray,
        grad: np.ndarray,
        state: Any,
        *,
        previous: np.ndarray | None,
        objective: Objective,
    ) -> float:
        """What ``tol`` is compared with: the inf-norm of the (proximal) gradient."""
        return objective.gradient_mapping_norm(params, grad, state.step_size)

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in vars(self).items())
        return f"{type(self).__name__}({options})"


def check_learning_rate(learning_rate: Any) -> None:
    if learning_rate == "auto":
        return
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)):
        raise TypeError(f"learning_rate must be 'auto' or a number, got {learning_rate!r}")
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate must be positive and finite, got {learning_rate!r}")
