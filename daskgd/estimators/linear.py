"""scikit-learn style estimators on top of the engine.

``__init__`` only stores parameters; ``fit`` validates them and the data, places the
data on the cluster, builds model, penalty, strategy and optimizer by name, runs
``strategy.run`` (the strategy owns the loop) and sets the fitted attributes (ending
in ``_``).
Parameter names, defaults and objective follow scikit-learn, so the same parameters
give the same coefficients.
"""

from __future__ import annotations

import inspect
import math
import numbers
import platform
import warnings
from typing import Any

import dask
import dask.array as da
import numpy as np

from daskgd import data as data_module
from daskgd.engine.callbacks import Callback, ProgressBar
from daskgd.engine.driver import Stopping
from daskgd.engine.failures import FailureInjector
from daskgd.models.losses import LeastSquares, Logistic, Model, Multinomial
from daskgd.models.penalties import make_penalty
from daskgd.observe.instrument import Instrumentation
from daskgd.observe.resident import has_resident_measures, resident_worker_dataset
from daskgd.observe.trace import build_trace
from daskgd.optim.registry import OPTIMIZERS, get_optimizer
from daskgd.runtime.codecs import get_codec
from daskgd.runtime.emulation import Emulation
from daskgd.strategies.base import STRATEGIES, FitProblem, Strategy, get_strategy

PENALTIES = ("l2", "l1", "elasticnet", None)
#: Estimator parameters that configure the strategy, with their defaults.
_STRATEGY_OPTION_DEFAULTS = {"split_every": None, "transfer_dtype": "float64", "emulation": None}


class ConvergenceWarning(UserWarning):
    """The solver stopped at max_iter before reaching tol."""


class NotFittedError(ValueError, AttributeError):
    """The estimator is used before ``fit``."""


def _check_positive(name: str, value: Any, *, allow_zero: bool = False, allow_inf: bool = False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


class _GradientDescentEstimator:
    """Shared machinery: parameters, fit loop, trace, predict plumbing."""

    _estimator_type = "regressor"

    def get_params(self, deep: bool = True) -> dict:
        names = inspect.signature(type(self).__init__).parameters
        return {name: getattr(self, name) for name in names if name != "self"}

    def set_params(self, **params: Any) -> Any:
        valid = self.get_params()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"invalid parameter {name!r} for {type(self).__name__}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = {
            name: p.default for name, p in inspect.signature(type(self).__init__).parameters.items()
        }
        changed = [
            f"{name}={value!r}"
            for name, value in self.get_params().items()
            if not (value is defaults.get(name) or _equal(value, defaults.get(name)))
        ]
        return f"{type(self).__name__}({', '.join(changed)})"

    # -- validation ------------------------------------------------------------
    def _validate_common(self) -> None:
        if not isinstance(self.fit_intercept, bool):
            raise TypeError(f"fit_intercept must be True or False, got {self.fit_intercept!r}")
        _check_positive("tol", self.tol, allow_zero=True)
        _check_int("max_iter", self.max_iter, 1)
        if not isinstance(self.instrument, bool):
            raise TypeError(f"instrument must be True or False, got {self.instrument!r}")
        if isinstance(self.solver, str) and self.solver not in OPTIMIZERS:
            raise ValueError(f"unknown solver {self.solver!r}; choose one of {sorted(OPTIMIZERS)}")
        if not isinstance(self.strategy, Strategy) and self.strategy not in STRATEGIES:
            raise ValueError(
                f"unknown strategy {self.strategy!r}; choose one of {list(STRATEGIES)} "
                "or pass a configured daskgd.strategies.get_strategy(name, ...)"
            )
        get_codec(self.transfer_dtype)
        if self.emulation is not None and not isinstance(self.emulation, Emulation):
            raise TypeError(
                "emulation must be a daskgd.runtime.emulation.Emulation or None, "
                f"got {self.emulation!r}"
            )
        if self.workers is not None and (
            isinstance(self.workers, (str, bytes))
            or not hasattr(self.workers, "__iter__")
            or len(list(self.workers)) == 0
            or not all(isinstance(address, str) for address in self.workers)
        ):
            raise ValueError(
                f"workers must be a non-empty sequence of worker addresses or None, "
                f"got {self.workers!r}"
            )

    def _optimizer(self) -> Any:
        options: dict = {}
        if self.solver in ("gd", "nesterov", "sgd"):
            options["learning_rate"] = self.learning_rate
        return get_optimizer(self.solver, **options)

    def _strategy(self) -> Strategy:
        """The configured strategy: by name with this estimator's options, or as given."""
        if isinstance(self.strategy, Strategy):
            changed = [
                name
                for name, default in _STRATEGY_OPTION_DEFAULTS.items()
                if not _equal(getattr(self, name), default)
            ]
            if changed:
                raise ValueError(
                    f"{', '.join(changed)} cannot be combined with a configured strategy "
                    f"({self.strategy!r}): give them to get_strategy({self.strategy.name!r}, ...)"
                )
            return self.strategy
        options: dict = {"transfer_dtype": self.transfer_dtype, "emulation": self.emulation}
        if self.split_every is not None:
            if self.strategy != "mapreduce":
                raise ValueError(
                    f"split_every is an option of strategy 'mapreduce', not {self.strategy!r}"
                )
            options["split_every"] = self.split_every
        return get_strategy(self.strategy, **options)

    # -- fitting ---------------------------------------------------------------
    def _fit_model(self, X: Any, y: Any, model: Model, penalty: Any, callbacks: list) -> None:
        client = data_module.current_client(self.client)
        strategy, optimizer = self._strategy(), self._optimizer()
        strategy.check(optimizer)
        emulation = strategy.emulation
        if emulation is not None:  # checked before the data moves
            if client is None:
                raise ValueError("emulation needs a distributed client (a cluster to slow down)")
            emulation.resolve(list(client.scheduler_info()["workers"]))
        if self.workers is not None and client is None:
            raise ValueError("workers needs a distributed client (a cluster to place data on)")
        placed = data_module.distribute(X, y, client, workers=self.workers)
        problem = FitProblem(placed, model, self.fit_intercept, penalty)
        info = self._run_info(placed, model, penalty, optimizer, strategy)
        if self.verbose:
            callbacks = [ProgressBar(f"daskgd {optimizer.name}"), *callbacks]
        if emulation is not None and emulation.failures:
            callbacks = [*callbacks, FailureInjector(placed.client, emulation)]
        instrumentation = None
        if self.instrument and placed.client is not None and not strategy.self_measured:
            instrumentation = Instrumentation(placed.client)
            callbacks = [*callbacks, instrumentation]
            for callback in callbacks:  # a LiveTrace shows the same measurements
                if hasattr(callback, "use_instrumentation"):
                    callback.use_instrumentation(instrumentation)
        result = strategy.run(
            problem,
            optimizer,
            Stopping(max_iter=self.max_iter, tol=self.tol),
            callbacks,
            info=info,
            seed=self.random_state,
        )
        self.n_features_in_ = placed.n_features
        self._set_coefficients(result.w, model, placed.n_features)
        self.n_iter_ = result.n_iter
        self.converged_ = result.converged
        workers = instrumentation.worker_dataset(result.records) if instrumentation else None
        if self.instrument and strategy.self_measured and has_resident_measures(result.records):
            workers = resident_worker_dataset(result.records, client=placed.client)
        self.trace_ = build_trace(result.records, result.info, workers)
        if result.stalled:
            warnings.warn(
                f"{type(self).__name__} with solver {optimizer.name!r} stopped after "
                f"{result.n_iter} iterations: no step decreases the loss any more (gradient "
                f"inf-norm {result.optimality:.3g} > tol={self.tol}); the loss is at "
                "the limit of floating-point precision: use a larger tol or scale X",
                ConvergenceWarning,
                stacklevel=3,
            )
        elif not result.converged:
            warnings.warn(
                f"{type(self).__name__} with solver {optimizer.name!r} stopped at "
                f"max_iter={self.max_iter} before reaching tol={self.tol}; increase max_iter",
                ConvergenceWarning,
                stacklevel=3,
            )

    def _run_info(self, placed: Any, model: Model, penalty: Any, optimizer: Any, strategy: Any):
        import distributed

        workers = sorted(set(placed.placement)) if placed.placement else []
        return {
            "estimator": repr(self),
            "model": model.name,
            "solver": optimizer.name,
            "optimizer": repr(optimizer),
            "penalty": type(penalty).__name__,
            "strategy": strategy.name,
            "transfer_dtype": strategy.codec.name,
            "emulation": strategy.emulation.to_attrs() if strategy.emulation is not None else None,
            "n_samples": int(placed.n_samples),
            "n_features": int(placed.n_features),
            "dtype": str(placed.X.dtype),
            "chunk_rows": [int(c) for c in placed.chunk_rows],
            "chunk_workers": list(placed.placement or []),
            "n_workers": len(workers),
            "scheduler": getattr(getattr(placed.client, "scheduler", None), "address", "threads"),
            "versions": {
                "python": platform.python_version(),
                "dask": dask.__version__,
                "distributed": distributed.__version__,
                "numpy": np.__version__,
            },
        }

    def _set_coefficients(self, w: np.ndarray, model: Model, n_features: int) -> None:
        n_columns = n_features + int(self.fit_intercept)
        matrix = w.reshape(-1, n_columns)
        coef = matrix[:, :n_features]
        intercept = matrix[:, n_features] if self.fit_intercept else np.zeros(len(matrix))
        self._w = w
        self._model = model
        self.coef_, self.intercept_ = self._shape_coefficients(coef, intercept)

    def _shape_coefficients(self, coef: np.ndarray, intercept: np.ndarray) -> tuple:
        return coef[0], float(intercept[0])

    # -- prediction ------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "_w"):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet: call fit(X, y) first"
            )

    def decision_function(self, X: Any) -> Any:
        """Linear scores; lazy for dask input.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        scores : array of shape (n_samples,) or (n_samples, n_classes)
        """
        self._check_fitted()
        X = _as_features(X, self.n_features_in_)
        return self._model.decision_function(self._w, X, self.fit_intercept)


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return False


def _as_features(X: Any, n_features: int) -> Any:
    """Prediction input as numpy or dask (never computed), with its width checked."""
    if hasattr(X, "dims") and hasattr(X, "data"):  # xarray.DataArray
        X = X.data
    if not isinstance(X, da.Array):
        X = np.asarray(X)
        if X.dtype == object or not np.issubdtype(X.dtype, np.number):
            raise TypeError(f"X must hold numbers, got dtype {X.dtype}")
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {X.shape}")
    if X.shape[1] != n_features:
        raise ValueError(
            f"X has {X.shape[1]} features, but the estimator was fitted with {n_features}"
        )
    return X


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
    strategy : str or daskgd.strategies.Strategy, default='mapreduce'
        How the workers' partial sums are gathered and who updates w: a name of
        ``daskgd.strategies.STRATEGIES`` (configured with ``transfer_dtype``,
        ``emulation`` and, for 'mapreduce', ``split_every``), or a strategy configured
        with ``daskgd.strategies.get_strategy(name, **options)``.
    split_every : int or None, default=None
        Fan-in of the 'mapreduce' reduction tree (None: flat up to 32 chunks).
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
        strategy: Any = "mapreduce",
        split_every: int | None = None,
        random_state: int | None = None,
        client: Any = None,
        verbose: bool = False,
        instrument: bool = True,
        transfer_dtype: str = "float64",
        emulation: Any = None,
        workers: Any = None,
    ):
        self.penalty = penalty
        self.C = C
        self.l1_ratio = l1_ratio
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
        self.classes_, y_encoded = data_module.encode_labels(y)
        n_classes = len(self.classes_)
        model = Logistic() if n_classes == 2 else Multinomial(n_classes)
        self._fit_model(X, y_encoded, model, penalty, list(callbacks or []))
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
    learning_rate, strategy, split_every, random_state, client, verbose, instrument,
    transfer_dtype, emulation, workers
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
        strategy: Any = "mapreduce",
        split_every: int | None = None,
        random_state: int | None = None,
        client: Any = None,
        verbose: bool = False,
        instrument: bool = True,
        transfer_dtype: str = "float64",
        emulation: Any = None,
        workers: Any = None,
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

    def _penalty(self, n_samples: int) -> Any:
        return make_penalty(None, 0.0)

    def fit(self, X: Any, y: Any, callbacks: list[Callback] | None = None) -> Any:
        """Fit on X of shape (n_samples, n_features) and targets y of shape (n_samples,)."""
        self._validate_common()
        X, y = data_module.as_dask_arrays(X, y)
        if y is None:
            raise ValueError(f"y is required to fit a {type(self).__name__}")
        penalty = self._penalty(X.shape[0])
        self._fit_model(X, y, LeastSquares(), penalty, list(callbacks or []))
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
    fit_intercept, tol, max_iter, solver, learning_rate, strategy, split_every, random_state,
    client, verbose, instrument, transfer_dtype, emulation, workers
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
        strategy: Any = "mapreduce",
        split_every: int | None = None,
        random_state: int | None = None,
        client: Any = None,
        verbose: bool = False,
        instrument: bool = True,
        transfer_dtype: str = "float64",
        emulation: Any = None,
        workers: Any = None,
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
        )
        self.alpha = alpha

    def _penalty(self, n_samples: int) -> Any:
        _check_positive("alpha", self.alpha, allow_zero=True)
        # 0.5/n * ||r||^2 + alpha/(2n) * ||w||^2 is sklearn's objective divided by 2n.
        return make_penalty("l2", self.alpha / n_samples)
