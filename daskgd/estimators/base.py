"""The machinery the estimators share: parameters, checks, the fit loop, the trace.

``__init__`` only stores parameters; ``fit`` validates them and the data, checks the
cluster's workers before anything is computed, places the data on the cluster, builds
model, penalty, strategy and optimizer by name, runs :func:`daskgd.engine.driver.minimize`
and sets the fitted attributes (ending in ``_``).
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
from daskgd.data import waits
from daskgd.engine.driver import ProgressBar, minimize
from daskgd.engine.failures import FailureInjector
from daskgd.models.losses import Model
from daskgd.models.objective import Objective
from daskgd.observe.instrument import Instrumentation
from daskgd.observe.recovery import recovery_dataset
from daskgd.observe.trace import build_trace
from daskgd.optim.optimizers import OPTIMIZERS, get_optimizer
from daskgd.runtime.codecs import get_codec
from daskgd.runtime.emulation import Emulation
from daskgd.strategies.mapreduce import get_strategy


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
        waits.check_seconds("timeout", self.timeout)
        waits.check_seconds("wait_for_workers", self.wait_for_workers, allow_zero=True)
        if isinstance(self.solver, str) and self.solver not in OPTIMIZERS:
            raise ValueError(f"unknown solver {self.solver!r}; choose one of {sorted(OPTIMIZERS)}")
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
        if self.solver == "sgd":
            options["random_state"] = self.random_state
        return get_optimizer(self.solver, **options)

    # -- fitting ---------------------------------------------------------------
    def _checked_client(self) -> Any:
        """The fit's client (or None), checked before anything is read or computed.

        A cluster without workers would leave the first computation (the label encoding
        of a classifier) waiting forever: it fails here, after ``wait_for_workers``.
        """
        client = data_module.current_client(self.client)
        if client is None:
            if self.emulation is not None:
                raise ValueError("emulation needs a distributed client (a cluster to slow down)")
            if self.workers is not None:
                raise ValueError("workers needs a distributed client (a cluster to place data on)")
            return None
        running = waits.running_workers(
            client,
            what=f"starting a {type(self).__name__} fit",
            timeout=self.timeout,
            wait_for_workers=self.wait_for_workers,
        )
        if self.emulation is not None:  # checked before the data moves
            self.emulation.resolve(sorted(running))
        return client

    def _fit_model(
        self, X: Any, y: Any, model: Model, penalty: Any, callbacks: list, client: Any
    ) -> None:
        placed = data_module.distribute(
            X,
            y,
            client,
            workers=self.workers,
            timeout=self.timeout,
            wait_for_workers=self.wait_for_workers,
        )
        strategy = get_strategy(
            "mapreduce",
            split_every=self.split_every,
            transfer_dtype=self.transfer_dtype,
            emulation=self.emulation,
        )
        optimizer = self._optimizer()
        mask = model.penalty_mask(placed.n_features, self.fit_intercept)
        w0 = np.zeros(model.n_params(placed.n_features, self.fit_intercept))
        info = self._run_info(placed, model, penalty, optimizer, strategy)
        if self.verbose:
            callbacks = [ProgressBar(f"daskgd {optimizer.name}"), *callbacks]
        if self.emulation is not None and self.emulation.failures:
            callbacks = [
                *callbacks,
                FailureInjector(placed.client, self.emulation, timeout=self.timeout),
            ]
        instrumentation = None
        if self.instrument and placed.client is not None:
            instrumentation = Instrumentation(placed.client, timeout=self.timeout)
            callbacks = [*callbacks, instrumentation]
            for callback in callbacks:  # a LiveTrace shows the same measurements
                if hasattr(callback, "use_instrumentation"):
                    callback.use_instrumentation(instrumentation)
        with strategy.session(placed, model, self.fit_intercept) as session:
            objective = Objective(session, penalty, mask)
            result = minimize(
                objective,
                optimizer,
                w0,
                max_iter=self.max_iter,
                tol=self.tol,
                callbacks=callbacks,
                info=info,
            )
        self.n_features_in_ = placed.n_features
        self._set_coefficients(result.w, model, placed.n_features)
        self.n_iter_ = result.n_iter
        self.converged_ = result.converged
        self.trace_ = self._trace(result.records, info, session, instrumentation)
        self._warn(result, optimizer.name)

    def _trace(self, records: list, info: dict, session: Any, instrumentation: Any) -> Any:
        recovery = recovery_dataset(
            records,
            session.retries,
            session.residual_resets,
            instrumentation.recovery_events() if instrumentation is not None else None,
        )
        if instrumentation is not None:
            recovery = instrumentation.worker_dataset(records).merge(recovery)
        return build_trace(records, info, recovery)

    def _warn(self, result: Any, solver: str) -> None:
        resets = int(self.trace_.residual_resets.sum())
        if resets:
            iterations = self.trace_.iteration.values[self.trace_.residual_resets.values > 0]
            warnings.warn(
                f"transfer_dtype={self.transfer_dtype!r}: {resets} top-k error-feedback "
                f"residuals were lost with their workers (iterations {iterations.tolist()}) "
                "and restarted from zero, so the coefficients differ from an undisturbed "
                "fit's (within the codec's tolerance); see trace_.residual_resets",
                RuntimeWarning,
                stacklevel=4,
            )
        if result.stalled:
            warnings.warn(
                f"{type(self).__name__} with solver {solver!r} stopped after "
                f"{result.n_iter} iterations: no step decreases the loss any more (gradient "
                f"inf-norm {result.state.optimality:.3g} > tol={self.tol}); the loss is at "
                "the limit of floating-point precision: use a larger tol or scale X",
                ConvergenceWarning,
                stacklevel=4,
            )
        elif not result.converged:
            warnings.warn(
                f"{type(self).__name__} with solver {solver!r} stopped at "
                f"max_iter={self.max_iter} before reaching tol={self.tol}; increase max_iter",
                ConvergenceWarning,
                stacklevel=4,
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
            "emulation": self.emulation.to_attrs() if self.emulation is not None else None,
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
