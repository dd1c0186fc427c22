"""Least squares estimators: LinearRegression, Ridge, Lasso and ElasticNet.

Each minimises scikit-learn's objective with scikit-learn's parameter names, divided
by the number of samples (or the sum of the sample weights) so that the loss is a
mean: ``0.5 / n * ||y - Xw||^2 + penalty``. Lasso and ElasticNet need proximal steps
(their default solver is 'nesterov', FISTA; 'gd' also works; 'lbfgs' cannot).
"""

from __future__ import annotations

import numbers
from typing import Any

import dask
import dask.array as da
import numpy as np
from sklearn.base import RegressorMixin
from sklearn.metrics import r2_score
from sklearn.utils._param_validation import Interval

from daskgd.data.waits import DEFAULT_TIMEOUT_SECONDS
from daskgd.engine.callbacks import Callback
from daskgd.estimators import inputs
from daskgd.estimators.base import (
    COMMON_CONSTRAINTS,
    ConvergenceWarning,
    GradientDescentEstimator,
    NotFittedError,
)
from daskgd.estimators.logistic import LogisticRegression
from daskgd.models.losses import LeastSquares
from daskgd.models.penalties import make_penalty

# Imported from here by existing code: daskgd.estimators.linear stays a valid path.
__all__ = [
    "ConvergenceWarning",
    "ElasticNet",
    "Lasso",
    "LinearRegression",
    "LogisticRegression",
    "NotFittedError",
    "Ridge",
]

_OPTIONS_DOC = """learning_rate, strategy, split_every, random_state, client, verbose, instrument,
    transfer_dtype, emulation, workers, warm_start, timeout, wait_for_workers
        As in :class:`daskgd.LogisticRegression`."""


class LinearRegression(RegressorMixin, GradientDescentEstimator):
    __doc__ = f"""Ordinary least squares by data-parallel gradient descent.

    Parameters
    ----------
    fit_intercept : bool, default=True
    tol : float, default=1e-6
        Stop when the inf-norm of the gradient of mean(0.5 * residual^2) is <= tol.
        ``tol=0`` runs max_iter iterations on purpose, without a ConvergenceWarning.
    max_iter : int, default=1000
    solver : {{'lbfgs', 'gd', 'nesterov', 'sgd'}}, default='lbfgs'
    {_OPTIONS_DOC}

    Attributes
    ----------
    coef_ : ndarray of shape (n_features,)
    intercept_ : float
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,), when X had column names
    n_iter_ : int
    trace_ : xarray.Dataset
    """

    def __init__(
        self,
        *,
        fit_intercept: bool = True,
        tol: float = 1e-6,
        max_iter: int = 1000,
        solver: str = "lbfgs",
        learning_rate: Any = "auto",
        strategy: Any = "mapreduce",
        split_every: int | None = None,
        random_state: int | None = None,
        client: Any = None,
        verbose: bool = False,
        instrument: bool = True,
        transfer_dtype: str = "float64",
        emulation: Any = None,
        workers: Any = None,
        warm_start: bool = False,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        wait_for_workers: float = 0.0,
    ):
        self.fit_intercept = fit_intercept
        self.tol = tol
        self.max_iter = max_iter
        self.solver = solver
        self.learning_rate = learning_rate
        self.strategy = strategy
        self.split_every = split_every
        self.random_state = random_state
        self.client = client
        self.verbose = verbose
        self.instrument = instrument
        self.transfer_dtype = transfer_dtype
        self.emulation = emulation
        self.workers = workers
        self.warm_start = warm_start
        self.timeout = timeout
        self.wait_for_workers = wait_for_workers

    def _penalty(self, total_weight: float) -> Any:
        return make_penalty(None, 0.0)

    def _check_solver(self) -> None:
        """The solvers this estimator's penalty allows (every one for a smooth penalty)."""

    def fit(
        self,
        X: Any,
        y: Any = None,
        sample_weight: Any = None,
        *,
        callbacks: list[Callback] | None = None,
        features: Any = None,
        target: str | None = None,
    ) -> Any:
        """Fit on X of shape (n_samples, n_features) and targets y of shape (n_samples,).

        Parameters
        ----------
        X : array-like, DataFrame, dask array or DataFrame, xarray.Dataset or path
        y : array-like of shape (n_samples,), or None with ``target=``
        sample_weight : array-like of shape (n_samples,), optional
        callbacks : list of daskgd.engine.callbacks.Callback, optional
        features, target : column / variable names of a DataFrame or Dataset X
        """
        self.check_options()
        client = self._checked_client()  # workers there before any computation
        X, y = inputs.fit_inputs(self, X, y, features=features, target=target)
        if isinstance(y, da.Array):
            inputs_dtype = np.dtype(y.dtype)
            if inputs_dtype.kind not in "biuf":
                raise TypeError(
                    f"y has non-numeric dtype {inputs_dtype}: a regressor needs numbers"
                )
            y = y.astype(np.float64)
        weights = inputs.sample_weights(sample_weight, X)
        weights, total = inputs.normalized_weights(weights)
        penalty = self._penalty(X.shape[0] if total is None else total)
        self._fit_model(X, y, LeastSquares(), penalty, list(callbacks or []), weights, client)
        return self

    def predict(self, X: Any) -> Any:
        """Predicted targets of shape (n_samples,); lazy for dask input."""
        return self._decision(X)

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Coefficient of determination R^2 on (X, y)."""
        predicted = self.predict(X)
        y = inputs.target_values(y)
        if not isinstance(predicted, da.Array) and not isinstance(y, da.Array):
            return float(r2_score(y, predicted, sample_weight=sample_weight))
        y = da.asarray(y).astype(np.float64)
        weight = da.ones_like(y) if sample_weight is None else da.asarray(sample_weight)
        mean = (weight * y).sum() / weight.sum()
        residual = (weight * (y - predicted) ** 2).sum()
        total = (weight * (y - mean) ** 2).sum()
        residual, total = dask.compute(residual, total)
        return float(1.0 - residual / total)


class Ridge(LinearRegression):
    __doc__ = f"""Least squares with an L2 penalty: scikit-learn's ||y - Xw||^2 + alpha * ||w||^2.

    Parameters
    ----------
    alpha : float, default=1.0
        Regularisation strength (>= 0).
    fit_intercept, tol, max_iter, solver
        As in :class:`LinearRegression`.
    {_OPTIONS_DOC}
    """

    _parameter_constraints: dict = {
        **COMMON_CONSTRAINTS,
        "alpha": [Interval(numbers.Real, 0, None, closed="left")],
    }

    def __init__(
        self,
        alpha: float = 1.0,
        *,
        fit_intercept: bool = True,
        tol: float = 1e-6,
        max_iter: int = 1000,
        solver: str = "lbfgs",
        learning_rate: Any = "auto",
        strategy: Any = "mapreduce",
        split_every: int | None = None,
        random_state: int | None = None,
        client: Any = None,
        verbose: bool = False,
        instrument: bool = True,
        transfer_dtype: str = "float64",
        emulation: Any = None,
        workers: Any = None,
        warm_start: bool = False,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        wait_for_workers: float = 0.0,
    ):
        super().__init__(
            fit_intercept=fit_intercept,
            tol=tol,
            max_iter=max_iter,
            solver=solver,
            learning_rate=learning_rate,
            strategy=strategy,
            split_every=split_every,
            random_state=random_state,
            client=client,
            verbose=verbose,
            instrument=instrument,
            transfer_dtype=transfer_dtype,
            emulation=emulation,
            workers=workers,
            warm_start=warm_start,
            timeout=timeout,
            wait_for_workers=wait_for_workers,
        )
        self.alpha = alpha

    def _penalty(self, total_weight: float) -> Any:
        # 0.5/n * ||r||^2 + alpha/(2n) * ||w||^2 is sklearn's objective divided by 2n.
        return make_penalty("l2", self.alpha / total_weight)


class ElasticNet(LinearRegression):
    __doc__ = f"""Least squares with an elastic-net penalty, scikit-learn's objective::

        1 / (2 * n_samples) * ||y - Xw||^2 + alpha * l1_ratio * ||w||_1
            + 0.5 * alpha * (1 - l1_ratio) * ||w||^2

    (with sample weights, scikit-learn's: the weights rescaled to sum to n_samples).

    Parameters
    ----------
    alpha : float, default=1.0
        Regularisation strength (>= 0).
    l1_ratio : float, default=0.5
        L1 share of the penalty (0 <= l1_ratio <= 1).
    fit_intercept : bool, default=True
    tol : float, default=1e-6
        Stop when the inf-norm of the proximal gradient is <= tol.
        ``tol=0`` runs max_iter iterations on purpose, without a ConvergenceWarning.
    max_iter : int, default=1000
    solver : {{'nesterov', 'gd'}}, default='nesterov'
        Proximal solvers (FISTA with restart, or gradient descent with backtracking).
    {_OPTIONS_DOC}
    """

    _parameter_constraints: dict = {
        **COMMON_CONSTRAINTS,
        "alpha": [Interval(numbers.Real, 0, None, closed="left")],
        "l1_ratio": [Interval(numbers.Real, 0, 1, closed="both")],
    }

    def __init__(
        self,
        alpha: float = 1.0,
        *,
        l1_ratio: float = 0.5,
        fit_intercept: bool = True,
        tol: float = 1e-6,
        max_iter: int = 1000,
        solver: str = "nesterov",
        learning_rate: Any = "auto",
        strategy: Any = "mapreduce",
        split_every: int | None = None,
        random_state: int | None = None,
        client: Any = None,
        verbose: bool = False,
        instrument: bool = True,
        transfer_dtype: str = "float64",
        emulation: Any = None,
        workers: Any = None,
        warm_start: bool = False,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        wait_for_workers: float = 0.0,
    ):
        super().__init__(
            fit_intercept=fit_intercept,
            tol=tol,
            max_iter=max_iter,
            solver=solver,
            learning_rate=learning_rate,
            strategy=strategy,
            split_every=split_every,
            random_state=random_state,
            client=client,
            verbose=verbose,
            instrument=instrument,
            transfer_dtype=transfer_dtype,
            emulation=emulation,
            workers=workers,
            warm_start=warm_start,
            timeout=timeout,
            wait_for_workers=wait_for_workers,
        )
        self.alpha = alpha
        self.l1_ratio = l1_ratio

    def _check_solver(self) -> None:
        if self.solver not in ("gd", "nesterov") and self.alpha * self.l1_ratio > 0:
            raise ValueError(
                f"{type(self).__name__} needs a proximal solver ('gd' or 'nesterov') for its "
                f"L1 term, got solver={self.solver!r}"
            )

    def _penalty(self, total_weight: float) -> Any:
        # scikit-learn rescales sample weights to sum to n_samples: alpha is not rescaled.
        if self.alpha == 0:
            return make_penalty(None, 0.0)
        return make_penalty("elasticnet", self.alpha, self.l1_ratio)


class Lasso(ElasticNet):
    __doc__ = f"""Least squares with an L1 penalty, scikit-learn's objective::

        1 / (2 * n_samples) * ||y - Xw||^2 + alpha * ||w||_1

    Parameters
    ----------
    alpha : float, default=1.0
        Regularisation strength (>= 0).
    fit_intercept, tol, max_iter, solver
        As in :class:`ElasticNet`.
    {_OPTIONS_DOC}
    """

    _parameter_constraints: dict = {
        **COMMON_CONSTRAINTS,
        "alpha": [Interval(numbers.Real, 0, None, closed="left")],
    }
    #: Not a parameter: Lasso is ElasticNet with l1_ratio=1.
    l1_ratio = 1.0

    def __init__(
        self,
        alpha: float = 1.0,
        *,
        fit_intercept: bool = True,
        tol: float = 1e-6,
        max_iter: int = 1000,
        solver: str = "nesterov",
        learning_rate: Any = "auto",
        strategy: Any = "mapreduce",
        split_every: int | None = None,
        random_state: int | None = None,
        client: Any = None,
        verbose: bool = False,
        instrument: bool = True,
        transfer_dtype: str = "float64",
        emulation: Any = None,
        workers: Any = None,
        warm_start: bool = False,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        wait_for_workers: float = 0.0,
    ):
        LinearRegression.__init__(
            self,
            fit_intercept=fit_intercept,
            tol=tol,
            max_iter=max_iter,
            solver=solver,
            learning_rate=learning_rate,
            strategy=strategy,
            split_every=split_every,
            random_state=random_state,
            client=client,
            verbose=verbose,
            instrument=instrument,
            transfer_dtype=transfer_dtype,
            emulation=emulation,
            workers=workers,
            warm_start=warm_start,
            timeout=timeout,
            wait_for_workers=wait_for_workers,
        )
        self.alpha = alpha
