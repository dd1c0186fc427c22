"""Optimizers: pure ``init``/``update`` pairs (optax's shape), placeable anywhere.

base.py       the protocol: state = init(params, value=, grad=, objective=);
              params, state = update(grad, state, params, value=, value_fn=, objective=)
gd.py         proximal gradient descent, backtracking free when accepted
nesterov.py   FISTA with adaptive restart
lbfgs.py      L-BFGS with an Armijo / approximate-Wolfe line search
sgd.py        mini-batch proximal SGD (the strategy draws the batches)
registry.py   names -> classes
"""

from daskgd.optim.base import MAX_BACKTRACKS, Optimizer, State, ValueFn
from daskgd.optim.gd import GradientDescent, GradientDescentState
from daskgd.optim.lbfgs import LBFGS, LBFGSState
from daskgd.optim.nesterov import Nesterov, NesterovState
from daskgd.optim.registry import OPTIMIZERS, get_optimizer
from daskgd.optim.sgd import SGD, SGDState

__all__ = [
    "LBFGS",
    "MAX_BACKTRACKS",
    "OPTIMIZERS",
    "SGD",
    "GradientDescent",
    "GradientDescentState",
    "LBFGSState",
    "Nesterov",
    "NesterovState",
    "Optimizer",
    "SGDState",
    "State",
    "ValueFn",
    "get_optimizer",
]
