"""scikit-learn estimators on a Dask cluster.

base.py       the shared machinery: parameters and their validation, the fit, predict
inputs.py     numpy / pandas / dask / xarray inputs, labels, sample and class weights
logistic.py   LogisticRegression
linear.py     LinearRegression, Ridge, Lasso, ElasticNet
"""

from daskgd.estimators.base import ConvergenceWarning, NotFittedError
from daskgd.estimators.linear import ElasticNet, Lasso, LinearRegression, Ridge
from daskgd.estimators.logistic import LogisticRegression

__all__ = [
    "ConvergenceWarning",
    "ElasticNet",
    "Lasso",
    "LinearRegression",
    "LogisticRegression",
    "NotFittedError",
    "Ridge",
]
