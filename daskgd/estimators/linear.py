"""scikit-learn style estimators on top of the engine (the shared machinery is in
:mod:`daskgd.estimators.base`).

Parameter names, defaults and objective follow scikit-learn, so the same parameters
give the same coefficients.
"""

from __future__ import annotations

import math
from typing import Any

import dask
import dask.array as da
import numpy as np

from daskgd import data as data_module
from daskgd.data import waits
from daskgd.engine.driver import Callback
from daskgd.estimators.base import (
    ConvergenceWarning,
    NotFittedError,
    _check_positive,
    _GradientDescentEstimator,
)
from daskgd.models.losses import LeastSquares, Logistic, Multinomial
from daskgd.models.penalties import make_penalty

PENALTIES = ("l2", "l1", "elasticnet", None)

__all__ = [
    "ConvergenceWarning",
    "LinearRegression",
    "LogisticRegression",
    "NotFittedError",
    "Ridge",
]


class LogisticRegression(_GradientDescentEstimator):
    """Logistic regression (binary or multinomial) by data-parallel gradient descent.

    Minimises scikit-learn's objective: mean log-loss + penalty / (C * n_samples), i.e.
    ``C * sum(loss) + 0.5 * ||w||^2`` for 'l2', the intercept not penalised.

    Parameters
    ----------
    penalty : {'l2', 'l1', 'elasticnet', None}, default='l2'
    C : float, default=1.0
        Inverse regularisation strength (> 0; ``np.inf`` for no penalty).
    l1_ratio : float, default=0.0
        Elastic-net mixing (0 <= l1_ratio <= 1), used with penalty='elasticnet'.
    fit_intercept : bool, default=True
    tol : float, default=1e-4
        Stop when the inf-norm of the (proximal) gradient of the mean objective is <= tol.
    max_iter : int, default=100
    solver : {'lbfgs', 'gd', 'nesterov', 'sgd'}, default='lbfgs'
        'lbfgs' supports 'l2' and None only, like scikit-learn's.
    learning_rate : 'auto' or float, default='auto'
        Step size of 'gd', 'nesterov' and 'sgd'; 'auto' is 1/L estimated from the data.
    split_every : int or None, default=None
        Fan-in of the reduction tree (None: chunks per worker).
    random_state : int or None, default=None
        Seed of the mini-batch draws of 'sgd'.
    client : distributed.Client or None, default=None
        The cluster to use; None uses the active client, or dask's threaded scheduler.
    verbose : bool, default=False
        Show a progress bar with the loss.
    instrument : bool, default=True
        With a distributed client, measure compute, communication, wait and bytes per
        worker and iteration (:mod:`daskgd.observe.instrument`) into ``trace_``.
    transfer_dtype : str, default='float64'
        Codec of w and of the partial gradients on the network: 'float64' (exact),
        'float32', 'float16', 'bfloat16', 'int8' or 'topk:F' (see
        :mod:`daskgd.runtime.codecs`).
    emulation : daskgd.runtime.emulation.Emulation or None, default=None
        Emulated latency, bandwidth, stragglers and worker failures during the fit
        (see :mod:`daskgd.runtime.emulation`; needs a distributed client).
    workers : sequence of str or None, default=None
        Addresses of the workers to place the data on and compute with (None: every
        worker of the cluster; see :func:`daskgd.data.distribute`; needs a distributed
        client).
    timeout : float, default=60.0
        Seconds any request to the cluster may go unanswered, and seconds the fit waits
        for a worker when all were lost, before it stops with
        :class:`daskgd.data.waits.ClusterTimeoutError` or
        :class:`~daskgd.data.waits.NoWorkersError` (:mod:`daskgd.data.waits`).
    wait_for_workers : float, default=0.0
        Seconds to wait for a first worker when the cluster has none at the start.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    coef_ : ndarray of shape (1, n_features) or (n_classes, n_features)
    intercept_ : ndarray of shape (1,) or (n_classes,)
    n_iter_ : ndarray of shape (1,)
    trace_ : xarray.Dataset
        Per-iteration loss, grad_norm, step_size, wall_seconds, ...
    """

    _estimator_type = "classifier"

    def __init__(
        self,
        penalty: str | None = "l2",
        *,
        C: float = 1.0,
        l1_ratio: float = 0.0,
        fit_intercept: bool = True,
        tol: float = 1e-4,
        max_iter: int = 100,
        solver: str = "lbfgs",
        learning_rate: Any = "auto",
        split_every: int | None = None,
        random_state: int | None = None,
        client: Any = None,
        verbose: bool = False,
        instrument: bool = True,
        transfer_dtype: str = "float64",
        emulation: Any = None,
        workers: Any = None,
        timeout: float = waits.DEFAULT_TIMEOUT_SECONDS,
        wait_for_workers: float = 0.0,
    ):
        self.penalty = penalty
        self.C = C
        self.l1_ratio = l1_ratio
        self.fit_intercept = fit_intercept
        self.tol = tol
        self.max_iter = max_iter
        self.solver = solver
        self.learning_rate = learning_rate
        self.split_every = split_every
        self.random_state = random_state
        self.client = client
        self.verbose = verbose
        self.instrument = instrument
        self.transfer_dtype = transfer_dtype
        self.emulation = emulation
        self.workers = workers
        self.timeout = timeout
        self.wait_for_workers = wait_for_workers

    def _penalty(self, n_samples: int) -> Any:
        if self.penalty not in PENALTIES:
            raise ValueError(f"unknown penalty {self.penalty!r}; choose one of {PENALTIES}")
        _check_positive("C", self.C, allow_inf=True)
        _check_positive("l1_ratio", self.l1_ratio, allow_zero=True)
        if self.l1_ratio > 1:
            raise ValueError(f"l1_ratio must be between 0 and 1, got {self.l1_ratio!r}")
        if self.penalty is None or math.isinf(self.C):
            return make_penalty(None, 0.0)
        strength = 1.0 / (self.C * n_samples)
        l1_ratio = {"l2": 0.0, "l1": 1.0}.get(self.penalty, self.l1_ratio)
        return make_penalty(
            "elasticnet" if self.penalty == "elasticnet" else self.penalty, strength, l1_ratio
        )

    def fit(self, X: Any, y: Any, callbacks: list[Callback] | None = None) -> LogisticRegression:
        """Fit on X of shape (n_samples, n_features) and labels y of shape (n_samples,)."""
        self._validate_common()
        if (
            self.solver == "lbfgs"
            and self.penalty in ("l1", "elasticnet")
            and not (self.penalty == "elasticnet" and self.l1_ratio == 0)
        ):
            raise ValueError(
                f"solver 'lbfgs' supports only 'l2' or None penalties, got {self.penalty!r}; "
                "use solver='gd' or 'nesterov' (proximal steps) for L1"
            )
        X, y = data_module.as_dask_arrays(X, y, labels=True)
        if y is None:
            raise ValueError("y is required to fit a LogisticRegression")
        penalty = self._penalty(X.shape[0])
        client = self._checked_client()
        self.classes_, y_encoded = data_module.encode_labels(y, client=client, timeout=self.timeout)
        n_classes = len(self.classes_)
        model = Logistic() if n_classes == 2 else Multinomial(n_classes)
        self._fit_model(X, y_encoded, model, penalty, list(callbacks or []), client)
        self.n_iter_ = np.array([self.n_iter_])
        return self

    def _shape_coefficients(self, coef: np.ndarray, intercept: np.ndarray) -> tuple:
        return coef, np.asarray(intercept, dtype=np.float64)

    def predict_proba(self, X: Any) -> Any:
        """Class probabilities of shape (n_samples, n_classes); lazy for dask input."""
        scores = self.decision_function(X)
        lib = da if isinstance(scores, da.Array) else np
        if scores.ndim == 1:
            positive = 1.0 / (1.0 + lib.exp(-scores))
            return lib.stack([1.0 - positive, positive], axis=1)
        shifted = scores - scores.max(axis=1, keepdims=True)
        exp = lib.exp(shifted)
        return exp / exp.sum(axis=1, keepdims=True)

    def predict(self, X: Any) -> Any:
        """Predicted labels of shape (n_samples,); lazy for dask input."""
        scores = self.decision_function(X)
        index = (scores > 0).astype(np.int64) if scores.ndim == 1 else scores.argmax(axis=1)
        if isinstance(index, da.Array):
            return index.map_blocks(lambda i, c=self.classes_: c[i], dtype=self.classes_.dtype)
        return self.classes_[index]

    def score(self, X: Any, y: Any) -> float:
        """Mean accuracy on (X, y)."""
        predicted = self.predict(X)
        y = y.data if hasattr(y, "dims") else y
        correct = (predicted == y).mean()
        return float(correct.compute() if hasattr(correct, "compute") else correct)


class LinearRegression(_GradientDescentEstimator):
    """Ordinary least squares by data-parallel gradient descent.

    Parameters
    ----------
    fit_intercept : bool, default=True
    tol : float, default=1e-6
        Stop when the inf-norm of the gradient of mean(0.5 * residual^2) is <= tol.
    max_iter : int, default=1000
    solver : {'lbfgs', 'gd', 'nesterov', 'sgd'}, default='lbfgs'
    learning_rate, split_every, random_state, client, verbose, instrument, transfer_dtype,
    emulation, workers, timeout, wait_for_workers
        As in :class:`LogisticRegression`.
    """

    def __init__(
        self,
        *,
        fit_intercept: bool = True,
        tol: float = 1e-6,
        max_iter: int = 1000,
        solver: str = "lbfgs",
        learning_rate: Any = "auto",
        split_every: int | None = None,
        random_state: int | None = None,
        client: Any = None,
        verbose: bool = False,
        instrument: bool = True,
        transfer_dtype: str = "float64",
        emulation: Any = None,
        workers: Any = None,
        timeout: float = waits.DEFAULT_TIMEOUT_SECONDS,
        wait_for_workers: float = 0.0,
    ):
        self.fit_intercept = fit_intercept
        self.tol = tol
        self.max_iter = max_iter
        self.solver = solver
        self.learning_rate = learning_rate
        self.split_every = split_every
        self.random_state = random_state
        self.client = client
        self.verbose = verbose
        self.instrument = instrument
        self.transfer_dtype = transfer_dtype
        self.emulation = emulation
        self.workers = workers
        self.timeout = timeout
        self.wait_for_workers = wait_for_workers

    def _penalty(self, n_samples: int) -> Any:
        return make_penalty(None, 0.0)

    def fit(self, X: Any, y: Any, callbacks: list[Callback] | None = None) -> Any:
        """Fit on X of shape (n_samples, n_features) and targets y of shape (n_samples,)."""
        self._validate_common()
        X, y = data_module.as_dask_arrays(X, y)
        if y is None:
            raise ValueError(f"y is required to fit a {type(self).__name__}")
        penalty = self._penalty(X.shape[0])
        client = self._checked_client()
        self._fit_model(X, y, LeastSquares(), penalty, list(callbacks or []), client)
        return self

    def predict(self, X: Any) -> Any:
        """Predicted targets of shape (n_samples,); lazy for dask input."""
        return self.decision_function(X)

    def score(self, X: Any, y: Any) -> float:
        """Coefficient of determination R^2 on (X, y)."""
        predicted = self.predict(X)
        y = y.data if hasattr(y, "dims") else y
        lib = da if isinstance(predicted, da.Array) or isinstance(y, da.Array) else np
        y = lib.asarray(y, dtype=np.float64)
        residual = ((y - predicted) ** 2).sum()
        total = ((y - y.mean()) ** 2).sum()
        if lib is da:
            residual, total = dask.compute(residual, total)
        return float(1.0 - residual / total)


class Ridge(LinearRegression):
    """Least squares with an L2 penalty: scikit-learn's ||y - Xw||^2 + alpha * ||w||^2.

    Parameters
    ----------
    alpha : float, default=1.0
        Regularisation strength (>= 0).
    fit_intercept, tol, max_iter, solver, learning_rate, split_every, random_state,
    client, verbose, instrument, transfer_dtype, emulation, workers, timeout,
    wait_for_workers
        As in :class:`LinearRegression`.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        *,
        fit_intercept: bool = True,
        tol: float = 1e-6,
        max_iter: int = 1000,
        solver: str = "lbfgs",
        learning_rate: Any = "auto",
        split_every: int | None = None,
        random_state: int | None = None,
        client: Any = None,
        verbose: bool = False,
        instrument: bool = True,
        transfer_dtype: str = "float64",
        emulation: Any = None,
        workers: Any = None,
        timeout: float = waits.DEFAULT_TIMEOUT_SECONDS,
        wait_for_workers: float = 0.0,
    ):
        super().__init__(
            fit_intercept=fit_intercept,
            tol=tol,
            max_iter=max_iter,
            solver=solver,
            learning_rate=learning_rate,
            split_every=split_every,
            random_state=random_state,
            client=client,
            verbose=verbose,
            instrument=instrument,
            transfer_dtype=transfer_dtype,
            emulation=emulation,
            workers=workers,
            timeout=timeout,
            wait_for_workers=wait_for_workers,
        )
        self.alpha = alpha

    def _penalty(self, n_samples: int) -> Any:
        _check_positive("alpha", self.alpha, allow_zero=True)
        # 0.5/n * ||r||^2 + alpha/(2n) * ||w||^2 is sklearn's objective divided by 2n.
        return make_penalty("l2", self.alpha / n_samples)
