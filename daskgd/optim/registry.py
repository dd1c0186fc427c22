"""Optimizers by name: the registry the estimators, the CLI and scaling read."""

from __future__ import annotations

from typing import Any

from daskgd.optim.base import Optimizer
from daskgd.optim.gd import GradientDescent
from daskgd.optim.lbfgs import LBFGS
from daskgd.optim.nesterov import Nesterov
from daskgd.optim.sgd import SGD

#: name -> optimizer class; ``daskgd run --solver`` offers these.
OPTIMIZERS: dict[str, type[Optimizer]] = {
    cls.name: cls for cls in (GradientDescent, Nesterov, LBFGS, SGD)
}


def get_optimizer(name: str | Optimizer, **options: Any) -> Optimizer:
    """An optimizer by name ('gd', 'nesterov', 'lbfgs', 'sgd'), or the given one."""
    if isinstance(name, Optimizer):
        return name
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown solver {name!r}; choose one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](**options)
