"""One optimizer step, wherever it runs: the client, a server, or every worker.

A *gather* turns w into the totals of the chunk sums (:class:`Evaluation`);
:class:`Evaluator` wraps one into the ``value_fn`` an optimizer sees, remembering its
last few points so that a line search's accepted trial is also the next iteration's
gradient. :func:`first_iterate` and :func:`next_iterate` are the whole of an iteration:
``optimizer.update``, then the value and gradient at the new point, then the optimality
that ``tol`` is compared with. The synchronous driver runs them on the client for
``mapreduce`` and ``direct``; ``allreduce`` runs the very same functions on every worker,
with a gather that sums over the ring.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from daskgd.models.objective import Objective
from daskgd.optim.base import Optimizer

#: Points an :class:`Evaluator` remembers (a line search revisits at most the last one).
REMEMBERED_POINTS = 4


@dataclass(frozen=True)
class Evaluation:
    """Totals of one gather over the chunks, and what it cost.

    Attributes
    ----------
    loss_sum : float
        Sum of the per-sample losses over the rows used.
    grad_sum : ndarray of shape (n_params,)
        Sum of the per-sample gradients.
    n_rows : int
        Number of rows the sums cover.
    wall_seconds : float
        Wall-clock time of the gather as seen by its caller (all attempts).
    attempts : int
        1, or more when a worker was lost and the gather was sent again.
    key_prefix : str
        Prefix of the task keys or messages of the gather (to find them in a task stream).
    measures : dict or None
        ``{worker address: {compute_seconds: ..., bytes_sent: ..., ...}}`` measured on the
        workers, when the strategy's workers time themselves (resident strategies).
    """

    loss_sum: float
    grad_sum: np.ndarray
    n_rows: int
    wall_seconds: float
    attempts: int
    key_prefix: str
    measures: dict | None = None


Gather = Callable[[np.ndarray, "Sequence[int] | None"], Evaluation]


class Iterate(NamedTuple):
    """Where an iteration ended: the point, F and its parts there, the optimizer state."""

    params: np.ndarray
    smooth_value: float
    grad: np.ndarray
    value: float
    state: Any
    grad_norm: float
    optimality: float


class Evaluator:
    """``value_fn(w, blocks=None) -> (f(w), grad f(w))`` over a gather, with memory.

    Each call not answered from memory is one gather (one round trip); the evaluations
    made since :meth:`take` are kept for the iteration's record, then dropped, so
    nothing grows with the number of iterations.
    """

    def __init__(self, gather: Gather, objective: Objective):
        self.gather = gather
        self.objective = objective
        self._memory: OrderedDict[tuple, tuple[float, np.ndarray]] = OrderedDict()
        self._evaluations: list[Evaluation] = []

    def __call__(
        self, w: np.ndarray, blocks: Sequence[int] | None = None
    ) -> tuple[float, np.ndarray]:
        w = np.asarray(w, dtype=np.float64)
        key = (w.tobytes(), None if blocks is None else tuple(blocks))
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        evaluation = self.gather(w, blocks)
        self._evaluations.append(evaluation)
        result = self.objective.smooth_value_grad(
            w, evaluation.loss_sum, evaluation.grad_sum, evaluation.n_rows
        )
        self._memory[key] = result
        while len(self._memory) > REMEMBERED_POINTS:
            self._memory.popitem(last=False)
        return result

    def take(self) -> list[Evaluation]:
        """The evaluations made since the last call (and forget them)."""
        evaluations, self._evaluations = self._evaluations, []
        return evaluations


def _iterate(
    optimizer: Optimizer,
    objective: Objective,
    params: np.ndarray,
    smooth_value: float,
    grad: np.ndarray,
    state: Any,
    previous: np.ndarray | None,
) -> Iterate:
    grad_norm = objective.gradient_mapping_norm(params, grad, state.step_size)
    optimality = optimizer.optimality(params, grad, state, previous=previous, objective=objective)
    return Iterate(
        params=params,
        smooth_value=smooth_value,
        grad=grad,
        value=smooth_value + objective.nonsmooth(params),
        state=state,
        grad_norm=grad_norm,
        optimality=optimality,
    )


def first_iterate(
    optimizer: Optimizer, objective: Objective, w0: np.ndarray, evaluate: Evaluator
) -> Iterate:
    """Iteration 0: F and its gradient at w0 over all the data, and the optimizer's state."""
    if not objective.is_smooth and not optimizer.supports_nonsmooth:
        raise ValueError(
            f"solver {optimizer.name!r} supports only smooth penalties ('l2' or None); "
            "use 'gd', 'nesterov' or 'sgd' with an L1 part"
        )
    w0 = np.asarray(w0, dtype=np.float64)
    smooth_value, grad = evaluate(w0)
    state = optimizer.init(w0, value=smooth_value, grad=grad, objective=objective)
    return _iterate(optimizer, objective, w0, smooth_value, grad, state, previous=None)


def next_iterate(
    optimizer: Optimizer,
    objective: Objective,
    iterate: Iterate,
    evaluate: Evaluator,
    blocks: Sequence[int] | None = None,
) -> Iterate:
    """One update, then the value and gradient at the new point (over ``blocks``, for a
    stochastic optimizer, else over all the data; free when the update evaluated it).

    A stalled update returns the old point with the stalled state.
    """
    params, state = optimizer.update(
        iterate.grad,
        iterate.state,
        iterate.params,
        value=iterate.smooth_value,
        value_fn=evaluate,
        objective=objective,
    )
    if state.stalled:
        return iterate._replace(state=state)
    smooth_value, grad = evaluate(params, blocks)
    return _iterate(optimizer, objective, params, smooth_value, grad, state, iterate.params)
