"""Optimizers: gd, nesterov, lbfgs, sgd as (init, update) pairs."""

from daskgd.optim.optimizers import OPTIMIZERS, Optimizer, OptState, get_optimizer

__all__ = ["OPTIMIZERS", "OptState", "Optimizer", "get_optimizer"]
