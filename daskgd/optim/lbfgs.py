"""Limited-memory BFGS with a backtracking Armijo / approximate-Wolfe line search."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from daskgd.models.objective import Objective
from daskgd.optim.base import MAX_BACKTRACKS, Optimizer, ValueFn


class LBFGSState(NamedTuple):
    """``step_size`` is the last accepted step length (and, with no curvature pairs
    yet, the scale of the first direction: 1 / ||g0||)."""

    step_size: float
    steps: tuple = ()
    changes: tuple = ()
    stalled: bool = False


class LBFGS(Optimizer):
    """Limited-memory BFGS (Nocedal & Wright 2006, alg. 7.4/7.5) with a backtracking
    Armijo line search; one gather per function evaluation, usually one per iteration
    because the unit step is accepted (and its evaluation is the next gradient).

    Parameters
    ----------
    memory_size : int, default=10
        Number of (s, y) pairs kept.
    """

    name = "lbfgs"
    supports_nonsmooth = False
    line_search = True

    def __init__(self, memory_size: int = 10):
        if isinstance(memory_size, bool) or not isinstance(memory_size, int) or memory_size < 1:
            raise ValueError(f"memory_size must be a positive integer, got {memory_size!r}")
        self.memory_size = memory_size

    @property
    def needs_lipschitz(self) -> bool:
        # No curvature pairs yet: the first trial step has unit length along -g (as in
        # Nocedal & Wright 2006, sec. 7.2), so no pass is spent estimating L.
        return False

    def init(self, params, *, value, grad, objective: Objective) -> LBFGSState:
        norm = float(np.linalg.norm(grad))
        return LBFGSState(1.0 / norm if norm > 0 else 1.0)

    def update(
        self,
        grad: np.ndarray,
        state: LBFGSState,
        params: np.ndarray,
        *,
        value: float,
        value_fn: ValueFn,
        objective: Objective,
    ) -> tuple[np.ndarray, LBFGSState]:
        steps, changes = state.steps, state.changes
        direction = -_two_loop(grad, steps, changes, state.step_size)
        slope = float(grad @ direction)
        if not slope < 0:  # not a descent direction: forget the curvature pairs
            steps, changes = (), ()
            direction = -state.step_size * grad
            slope = -state.step_size * float(grad @ grad)
        length = 1.0
        for _ in range(MAX_BACKTRACKS):
            w_new = params + length * direction
            new_value, new_grad = value_fn(w_new)
            if _armijo(value, new_value, new_grad, length, slope, direction):
                break
            length = _backtrack(length, slope, value, new_value)
        else:
            return params, state._replace(stalled=True)
        s, y = w_new - params, new_grad - grad
        if s @ y > 1e-10 * math.sqrt((s @ s) * (y @ y)):
            steps = (*steps, s)[-self.memory_size :]
            changes = (*changes, y)[-self.memory_size :]
        return w_new, LBFGSState(length, steps, changes)


def _armijo(
    value: float,
    new_value: float,
    new_grad: np.ndarray,
    length: float,
    slope: float,
    direction: np.ndarray,
) -> bool:
    """Sufficient decrease, or its approximate form near the optimum.

    Close to the minimum the decrease 1e-4 * length * slope falls below the rounding of
    F itself, and the exact Armijo test can never pass. The approximate Wolfe condition
    of Hager & Zhang (2005, SIAM J. Optim. 16(1)) accepts a step that keeps F within a
    few ulps and reduces the directional derivative.
    """
    if not math.isfinite(new_value):
        return False
    if new_value <= value + 1e-4 * length * slope:
        return True
    within_rounding = new_value <= value + 1e-12 * abs(value)
    return within_rounding and abs(float(new_grad @ direction)) <= 0.9 * abs(slope)


def _backtrack(length: float, slope: float, value: float, new_value: float) -> float:
    if not math.isfinite(new_value):
        return length * 0.1
    # Minimiser of the quadratic through f(0), f'(0) and f(length), kept in a safe range.
    denominator = 2.0 * (new_value - value - slope * length)
    trial = -slope * length**2 / denominator if denominator > 0 else 0.5 * length
    return min(max(trial, 0.1 * length), 0.5 * length)


def _two_loop(grad: np.ndarray, steps: tuple, changes: tuple, initial_scale: float) -> np.ndarray:
    q = grad.copy()
    alphas = []
    for s, y in zip(reversed(steps), reversed(changes), strict=False):
        rho = 1.0 / (y @ s)
        alpha = rho * (s @ q)
        q -= alpha * y
        alphas.append((rho, alpha, s, y))
    scale = (steps[-1] @ changes[-1]) / (changes[-1] @ changes[-1]) if steps else initial_scale
    r = scale * q
    for rho, alpha, s, y in reversed(alphas):
        r += (alpha - rho * (y @ r)) * s
    return r
