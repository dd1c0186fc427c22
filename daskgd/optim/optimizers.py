"""Optimizers: pure (init, update) pairs run on the client.

Each optimizer is a small configuration object with two methods:

- ``init(w0, objective) -> OptState`` evaluates the objective once at w0;
- ``update(state, objective) -> OptState`` takes one step and returns a new state.

States are immutable NamedTuples. ``objective.value_grad`` is the only way to reach
the cluster (one round trip per call), so the number of round trips of a step is the
number of evaluations it makes: one for an accepted gd, nesterov or sgd step, one per
line-search trial for lbfgs (usually one).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from daskgd.models.objective import Objective

#: Step reductions tried before a step is given up (the fit then stops as stalled).
MAX_BACKTRACKS = 30


class OptState(NamedTuple):
    """Immutable optimizer state.

    Attributes
    ----------
    w : ndarray of shape (n_params,)
        Point at which ``value`` and ``grad`` were evaluated.
    value : float
        Full objective F(w) (smooth + non-smooth parts).
    smooth_value : float
        Smooth part of F at w.
    grad : ndarray of shape (n_params,)
        Gradient of the smooth part at w.
    step_size : float
        Step size used by the last update (or the initial one).
    optimality : float
        inf-norm of the (proximal) gradient at w; ``tol`` is compared with it.
    memory : tuple
        Optimizer-specific extra state.
    n_evaluations : int
        Round trips made by the last update.
    stalled : bool
        The last update found no point that decreases F: the loss is at the limit of
        floating-point precision (or the problem is badly scaled); the engine stops.
    """

    w: np.ndarray
    value: float
    smooth_value: float
    grad: np.ndarray
    step_size: float
    optimality: float
    memory: tuple = ()
    n_evaluations: int = 1
    stalled: bool = False


def _evaluate_state(objective: Objective, w: np.ndarray, step: float, **fields: Any) -> OptState:
    smooth_value, grad = objective.value_grad(w)
    return OptState(
        w=w,
        value=smooth_value + objective.nonsmooth(w),
        smooth_value=smooth_value,
        grad=grad,
        step_size=step,
        optimality=objective.gradient_mapping_norm(w, grad, step),
        **fields,
    )


def _check_learning_rate(learning_rate: Any) -> None:
    if learning_rate == "auto":
        return
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)):
        raise TypeError(f"learning_rate must be 'auto' or a number, got {learning_rate!r}")
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate must be positive and finite, got {learning_rate!r}")


class Optimizer:
    """Base class; subclasses implement :meth:`init` and :meth:`update`."""

    name = "optimizer"
    #: Whether a non-smooth (L1) penalty can be handled.
    supports_nonsmooth = True

    def initial_step(self, objective: Objective) -> float:
        learning_rate = getattr(self, "learning_rate", "auto")
        if learning_rate == "auto":
            return 1.0 / objective.lipschitz
        return float(learning_rate)

    def init(self, w0: np.ndarray, objective: Objective) -> OptState:
        return _evaluate_state(objective, np.asarray(w0, float), self.initial_step(objective))

    def update(self, state: OptState, objective: Objective) -> OptState:
        raise NotImplementedError

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in vars(self).items())
        return f"{type(self).__name__}({options})"


class GradientDescent(Optimizer):
    """Proximal gradient descent: w <- prox(w - step * grad(w), step).

    Parameters
    ----------
    learning_rate : 'auto' or float, default='auto'
        'auto' starts from 1 / L, L estimated from the data (one round trip).
    backtracking : bool or None, default=None
        Halve the step until the sufficient-decrease condition
        F(w+) <= f(w) + g.(w+ - w) + ||w+ - w||^2 / (2 step) holds (Beck & Teboulle
        2009, FISTA paper, sec. 3). The evaluation at the accepted w+ is also the next
        iteration's gradient, so an accepted step costs no extra round trip. None means
        on for 'auto' and off for a fixed learning rate.
    """

    name = "gd"

    def __init__(self, learning_rate: Any = "auto", backtracking: bool | None = None):
        _check_learning_rate(learning_rate)
        self.learning_rate = learning_rate
        self.backtracking = learning_rate == "auto" if backtracking is None else bool(backtracking)

    def update(self, state: OptState, objective: Objective) -> OptState:
        step = state.step_size
        for trial in range(1, MAX_BACKTRACKS + 1):
            w_new = objective.prox(state.w - step * state.grad, step)
            new = _evaluate_state(objective, w_new, step, n_evaluations=trial)
            if not self.backtracking or _sufficient_decrease(state, new, step):
                return new
            step *= 0.5
        return state._replace(n_evaluations=MAX_BACKTRACKS, stalled=True)


def _sufficient_decrease(old: OptState, new: OptState, step: float) -> bool:
    moved = new.w - old.w
    bound = old.smooth_value + old.grad @ moved + (moved @ moved) / (2 * step)
    # A relative slack absorbs rounding in the reduction of the sums.
    return bool(math.isfinite(new.smooth_value) and new.smooth_value <= bound + 1e-12 * abs(bound))


class Nesterov(Optimizer):
    """Accelerated proximal gradient (FISTA, Beck & Teboulle 2009) with adaptive restart.

    The gradient is evaluated at the extrapolated point y once per iteration. Momentum
    restarts when it points uphill, (y - x+).(x+ - x) > 0 (O'Donoghue & Candes 2015),
    which also protects against a step a little too long. The reported w, loss and
    gradient are those at y.

    Parameters
    ----------
    learning_rate : 'auto' or float, default='auto'
        'auto' uses 1 / L with L estimated from the data.
    """

    name = "nesterov"

    def __init__(self, learning_rate: Any = "auto"):
        _check_learning_rate(learning_rate)
        self.learning_rate = learning_rate

    def init(self, w0: np.ndarray, objective: Objective) -> OptState:
        state = super().init(w0, objective)
        # memory: (previous iterate x, momentum t)
        return state._replace(memory=(state.w, 1.0))

    def update(self, state: OptState, objective: Objective) -> OptState:
        x_previous, momentum = state.memory
        step = state.step_size
        for trial in range(1, MAX_BACKTRACKS + 1):
            x_new = objective.prox(state.w - step * state.grad, step)
            next_momentum = (1.0 + math.sqrt(1.0 + 4.0 * momentum**2)) / 2.0
            if (state.w - x_new) @ (x_new - x_previous) > 0:
                next_momentum = 1.0  # restart: momentum points uphill
            y_new = x_new + ((momentum - 1.0) / next_momentum) * (x_new - x_previous)
            new = _evaluate_state(objective, y_new, step, n_evaluations=trial)
            if math.isfinite(new.value):
                return new._replace(memory=(x_new, next_momentum))
            # Diverging extrapolation: shorter step, no momentum.
            step, momentum, x_previous = step * 0.5, 1.0, state.w
        return new._replace(memory=(x_new, 1.0))


class LBFGS(Optimizer):
    """Limited-memory BFGS (Nocedal & Wright 2006, alg. 7.4/7.5) with a backtracking
    Armijo line search; one round trip per function evaluation, usually one per
    iteration because the unit step is accepted.

    Parameters
    ----------
    memory_size : int, default=10
        Number of (s, y) pairs kept.
    """

    name = "lbfgs"
    supports_nonsmooth = False

    def __init__(self, memory_size: int = 10):
        if isinstance(memory_size, bool) or not isinstance(memory_size, int) or memory_size < 1:
            raise ValueError(f"memory_size must be a positive integer, got {memory_size!r}")
        self.memory_size = memory_size

    def initial_step(self, objective: Objective) -> float:
        # No curvature pairs yet: the first trial step has unit length along -g (as in
        # Nocedal & Wright 2006, sec. 7.2), so no round trip is spent estimating L.
        return 1.0

    def init(self, w0: np.ndarray, objective: Objective) -> OptState:
        state = super().init(w0, objective)
        norm = float(np.linalg.norm(state.grad))
        return state._replace(memory=((), ()), step_size=1.0 / norm if norm > 0 else 1.0)

    def update(self, state: OptState, objective: Objective) -> OptState:
        steps, changes = state.memory
        direction = -_two_loop(state.grad, steps, changes, state.step_size)
        slope = float(state.grad @ direction)
        if not slope < 0:  # not a descent direction: forget the curvature pairs
            steps, changes = (), ()
            direction, slope = (
                -state.step_size * state.grad,
                -state.step_size * float(state.grad @ state.grad),
            )
        length = 1.0
        for trial in range(1, MAX_BACKTRACKS + 1):
            new = _evaluate_state(objective, state.w + length * direction, 1.0, n_evaluations=trial)
            if _armijo(state, new, length, slope, direction):
                break
            length = _backtrack(length, slope, state.value, new.value)
        else:
            return state._replace(n_evaluations=MAX_BACKTRACKS, stalled=True)
        s, y = new.w - state.w, new.grad - state.grad
        if s @ y > 1e-10 * math.sqrt((s @ s) * (y @ y)):
            steps = (*steps, s)[-self.memory_size :]
            changes = (*changes, y)[-self.memory_size :]
        return new._replace(step_size=length, memory=(steps, changes))


def _armijo(
    old: OptState, new: OptState, length: float, slope: float, direction: np.ndarray
) -> bool:
    """Sufficient decrease, or its approximate form near the optimum.

    Close to the minimum the decrease 1e-4 * length * slope falls below the rounding of
    F itself, and the exact Armijo test can never pass. The approximate Wolfe condition
    of Hager & Zhang (2005, SIAM J. Optim. 16(1)) accepts a step that keeps F within a
    few ulps and reduces the directional derivative.
    """
    if not math.isfinite(new.value):
        return False
    if new.value <= old.value + 1e-4 * length * slope:
        return True
    within_rounding = new.value <= old.value + 1e-12 * abs(old.value)
    return within_rounding and abs(float(new.grad @ direction)) <= 0.9 * abs(slope)


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


class SGD(Optimizer):
    """Mini-batch proximal stochastic gradient descent over random chunks.

    Each iteration draws ``batch_blocks`` chunks without replacement and steps along
    their mean gradient with learning rate eta_t = eta_0 / (1 + decay * t).

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

    def __init__(
        self,
        learning_rate: Any = "auto",
        batch_blocks: int | None = None,
        decay: float = 0.01,
        random_state: int | None = None,
    ):
        _check_learning_rate(learning_rate)
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

    def init(self, w0: np.ndarray, objective: Objective) -> OptState:
        state = super().init(w0, objective)
        rng = np.random.default_rng(self.random_state)
        return state._replace(memory=(rng, 0, state.step_size))

    def update(self, state: OptState, objective: Objective) -> OptState:
        rng, iteration, initial_step = state.memory
        n_blocks = objective.n_blocks
        batch = min(self.batch_blocks or max(1, n_blocks // 4), n_blocks)
        blocks = sorted(rng.choice(n_blocks, size=batch, replace=False).tolist())
        step = initial_step / (1.0 + self.decay * iteration)
        w_new = objective.prox(state.w - step * state.grad, step)
        smooth_value, grad = objective.value_grad(w_new, blocks)
        # For sgd the optimality is the relative change of w: gradients are noisy.
        change = float(np.max(np.abs(w_new - state.w))) / max(1.0, float(np.max(np.abs(w_new))))
        return OptState(
            w=w_new,
            value=smooth_value + objective.nonsmooth(w_new),
            smooth_value=smooth_value,
            grad=grad,
            step_size=step,
            optimality=change,
            memory=(rng, iteration + 1, initial_step),
        )


OPTIMIZERS = {cls.name: cls for cls in (GradientDescent, Nesterov, LBFGS, SGD)}


def get_optimizer(name: str | Optimizer, **options: Any) -> Optimizer:
    """An optimizer by name ('gd', 'nesterov', 'lbfgs', 'sgd'), or the given one."""
    if isinstance(name, Optimizer):
        return name
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown solver {name!r}; choose one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](**options)
