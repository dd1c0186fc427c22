"""daskgd: data-parallel gradient descent on Dask distributed, measured and shown.

Each iteration broadcasts the weights to the workers, maps a one-pass chunk-gradient
function over the row chunks (``map_blocks``), tree-reduces the partial sums
(``da.sum``) and updates the weights on the client.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "LogisticRegression": "daskgd.estimators",
    "LinearRegression": "daskgd.estimators",
    "Ridge": "daskgd.estimators",
    "Lasso": "daskgd.estimators",
    "ElasticNet": "daskgd.estimators",
    "ConvergenceWarning": "daskgd.estimators",
    "save_model": "daskgd.estimators.persist",
    "load_model": "daskgd.estimators.persist",
    "load_trace": "daskgd.observe.trace",
    "save_trace": "daskgd.observe.trace",
    "minimize": "daskgd.engine",
    "get_strategy": "daskgd.strategies",
    "Callback": "daskgd.engine",
    "datasets": "daskgd.datasets",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    # Imported on first use so that `import daskgd` (and the CLI's --help) stay fast.
    if name not in _LAZY:
        raise AttributeError(f"module 'daskgd' has no attribute {name!r}")
    module = import_module(_LAZY[name])
    return module if name == "datasets" else getattr(module, name)
