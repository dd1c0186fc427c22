"""scikit-learn style estimators."""

from daskgd.estimators.linear import (
    ConvergenceWarning,
    LinearRegression,
    LogisticRegression,
    NotFittedError,
    Ridge,
)

__all__ = [
    "ConvergenceWarning",
    "LinearRegression",
    "LogisticRegression",
    "NotFittedError",
    "Ridge",
]
