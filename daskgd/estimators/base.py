"""The shared machinery of the estimators: parameters, validation, the fit, predictions.

``__init__`` only stores parameters (scikit-learn's ``BaseEstimator`` gives
``get_params``/``set_params``/``clone``/``repr``); ``fit`` validates them
(``_parameter_constraints``, with scikit-learn's messages) and the data, places the
data on the cluster, builds model, penalty, strategy and optimizer by name, runs
``strategy.run`` (the strategy owns the loop) and sets the fitted attributes (ending
in ``_``). Parameter names, defaults and objective follow scikit-learn, so the same
parameters give the same coefficients.
"""

from __future__ import annotations

import numbers
import platform
import warnings
from typing import Any

import dask
import numpy as np
import sklearn.exceptions
from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import Interval, StrOptions

from daskgd import data as data_module
from daskgd.data import waits
from daskgd.engine.callbacks import ProgressBar
from daskgd.engine.driver import Stopping
from daskgd.engine.failures import FailureInjector
from daskgd.estimators import inputs
from daskgd.models.losses import Model
from daskgd.observe.instrument import Instrumentation
from daskgd.observe.recovery import recovery_dataset
from daskgd.observe.resident import has_resident_measures, resident_worker_dataset
from daskgd.observe.trace import build_trace, iteration_variables
from daskgd.optim.registry import OPTIMIZERS, get_optimizer
from daskgd.runtime.codecs import get_codec
from daskgd.runtime.emulation import Emulation
from daskgd.strategies.base import STRATEGIES, FitProblem, Strategy, get_strategy

#: Estimator parameters that configure the strategy, with their defaults.
_STRATEGY_OPTION_DEFAULTS = {"split_every": None, "transfer_dtype": "float64", "emulation": None}

#: Constraints shared by every estimator (scikit-learn's validation and messages).
COMMON_CONSTRAINTS: dict = {
    "fit_intercept": ["boolean"],
    "tol": [Interval(numbers.Real, 0, None, closed="left")],
    "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
    # solver and strategy: checked against their registries at fit time (see
    # _validate_common), so names registered after this import are accepted.
    "solver": [str],
    "learning_rate": [StrOptions({"auto"}), Interval(numbers.Real, 0, None, closed="neither")],
    "strategy": [str, Strategy],
    "split_every": [Interval(numbers.Integral, 2, None, closed="left"), None],
    "random_state": ["random_state"],
    "client": "no_validation",
    "verbose": ["verbose"],
    "instrument": ["boolean"],
    "transfer_dtype": [str],
    "emulation": [Emulation, None],
    "workers": ["array-like", None],
    "warm_start": ["boolean"],
    "timeout": [Interval(numbers.Real, 0, None, closed="neither")],
    "wait_for_workers": [Interval(numbers.Real, 0, None, closed="left")],
}


class ConvergenceWarning(sklearn.exceptions.ConvergenceWarning):
    """The solver stopped at max_iter before reaching tol (scikit-learn's warning)."""


class NotFittedError(sklearn.exceptions.NotFittedError):
    """The estimator is used before ``fit`` (scikit-learn's error: ValueError, AttributeError)."""


class GradientDescentEstimator(BaseEstimator):
    """Shared machinery: parameters, fit loop, trace, predict plumbing."""

    _parameter_constraints: dict = COMMON_CONSTRAINTS

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # scipy.sparse input is fitted as CSR chunks (daskgd.models.sparse).
        tags.input_tags.sparse = True
        tags.input_tags.allow_nan = False
        return tags

    def __getstate__(self):
        # A client holds sockets and an event loop: never pickled; a loaded estimator
        # predicts locally and fits on the active client.
        state = dict(super().__getstate__())  # a copy: the estimator keeps its client
        state["client"] = None
        return state

    # -- validation ------------------------------------------------------------
    def check_options(self) -> None:
        """Check every option as ``fit`` first does, without data or a cluster.

        scikit-learn's parameter validation, the solver against the penalty, the strategy
        against the solver: the command line calls it before it starts a cluster.

        Raises
        ------
        ValueError, TypeError
            Naming the option and the problem.
        """
        self._validate_common()
        self._check_solver()
        self._strategy().check(self._optimizer())

    def _validate_common(self) -> None:
        self._validate_params()  # _parameter_constraints, with scikit-learn's messages
        if self.solver not in OPTIMIZERS:
            raise ValueError(f"unknown solver {self.solver!r}; choose one of {sorted(OPTIMIZERS)}")
        if not isinstance(self.strategy, Strategy) and self.strategy not in STRATEGIES:
            raise ValueError(
                f"unknown strategy {self.strategy!r}; choose one of {list(STRATEGIES)} "
                "or pass a configured daskgd.strategies.get_strategy(name, ...)"
            )
        get_codec(self.transfer_dtype)
        if self.workers is not None and (
            isinstance(self.workers, (str, bytes))
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

    def _start(self, model: Model, n_features: int) -> np.ndarray | None:
        """The warm start: the previous fit's w when it has this problem's shape."""
        if not self.warm_start or not hasattr(self, "_w"):
            return None
        if self._w.shape != (model.n_params(n_features, self.fit_intercept),):
            return None
        return self._w

    # -- fitting ---------------------------------------------------------------
    def _checked_client(self) -> Any:
        """The fit's client (or None), checked before anything is read or computed.

        A cluster without workers would leave the first computation (the label encoding
        of a classifier) waiting forever: it fails here, after ``wait_for_workers``.
        """
        client = data_module.current_client(self.client)
        strategy = self._strategy()
        if client is None:
            if strategy.emulation is not None:
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
        if strategy.emulation is not None:  # checked before the data moves
            strategy.emulation.resolve(sorted(running))
        return client

    def _fit_model(
        self,
        X: Any,
        y: Any,
        model: Model,
        penalty: Any,
        callbacks: list,
        sample_weight=None,
        client: Any = None,
    ) -> None:
        # ``fit`` checked the options and the client before its first computation;
        # callers that did not (none in daskgd) get the checks here.
        if client is None:
            self.check_options()
            client = self._checked_client()
        strategy, optimizer = self._strategy(), self._optimizer()
        placed = data_module.distribute(
            X,
            y,
            client,
            workers=self.workers,
            sample_weight=sample_weight,
            timeout=self.timeout,
            wait_for_workers=self.wait_for_workers,
        )
        w0 = self._start(model, placed.n_features)
        problem = FitProblem(placed, model, self.fit_intercept, penalty, w0)
        info = self._run_info(placed, model, penalty, optimizer, strategy)
        callbacks, instrumentation = self._callbacks(callbacks, placed.client, strategy, optimizer)
        result = strategy.run(
            problem,
            optimizer,
            Stopping(max_iter=self.max_iter, tol=self.tol),
            callbacks,
            info=info,
            seed=self.random_state,
        )
        self._set_coefficients(result.w, model, placed.n_features)
        self.n_iter_ = result.n_iter
        self.converged_ = result.converged
        self.trace_ = self._trace(result, strategy, instrumentation, placed.client)
        self._warn_resets()
        self._warn_convergence(result, optimizer)

    def _callbacks(
        self, callbacks: list, client: Any, strategy: Strategy, optimizer: Any
    ) -> tuple[list, Any]:
        """The user's callbacks with the fit's own: progress, failure injection, and the
        instrumentation (None for strategies whose workers time themselves)."""
        if self.verbose:
            callbacks = [ProgressBar(f"daskgd {optimizer.name}"), *callbacks]
        emulation = strategy.emulation
        if emulation is not None and emulation.failures and not strategy.injects_failures:
            callbacks = [*callbacks, FailureInjector(client, emulation, timeout=self.timeout)]
        instrumentation = None
        if self.instrument and client is not None and not strategy.self_measured:
            instrumentation = Instrumentation(client, timeout=self.timeout)
            callbacks = [*callbacks, instrumentation]
            for callback in callbacks:  # a LiveTrace shows the same measurements
                if hasattr(callback, "use_instrumentation"):
                    callback.use_instrumentation(instrumentation)
        return callbacks, instrumentation

    def _warn_convergence(self, result: Any, optimizer: Any) -> None:
        """scikit-learn's ConvergenceWarning, unless ``tol=0`` asked for max_iter steps."""
        if self.tol == 0:
            # tol=0 asks for max_iter iterations on purpose (benchmarks, notebooks): stopping
            # there, or earlier at the precision floor, is what was asked, not a failure
            return
        if result.stalled:
            warnings.warn(
                f"{type(self).__name__} with solver {optimizer.name!r} stopped after "
                f"{result.n_iter} iterations: no step decreases the loss any more (gradient "
                f"inf-norm {result.optimality:.3g} > tol={self.tol}); the loss is at "
                "the limit of floating-point precision: use a larger tol or scale X",
                ConvergenceWarning,
                stacklevel=4,
            )
        elif not result.converged:
            warnings.warn(
                f"{type(self).__name__} with solver {optimizer.name!r} stopped at "
                f"max_iter={self.max_iter} before reaching tol={self.tol}; increase max_iter",
                ConvergenceWarning,
                stacklevel=4,
            )

    def _trace(self, result: Any, strategy: Strategy, instrumentation: Any, client: Any) -> Any:
        """The trace: records, per-worker measures, and what failures cost (recovery)."""
        report = result.session_report
        recovery = recovery_dataset(
            result.records,
            report.get("retries"),
            report.get("residual_resets"),
            instrumentation.recovery_events() if instrumentation is not None else None,
        )
        if instrumentation is not None:
            recovery = instrumentation.worker_dataset(result.records).merge(recovery)
        elif self.instrument and strategy.self_measured and has_resident_measures(result.records):
            recovery = resident_worker_dataset(result.records, client=client).merge(recovery)
        if report.get("iteration_variables"):  # a strategy's own, e.g. consensus_distance
            variables = iteration_variables(result.records, report["iteration_variables"])
            recovery = recovery.merge(variables)
        return build_trace(result.records, result.info, recovery)

    def _warn_resets(self) -> None:
        resets = int(self.trace_.residual_resets.sum()) if "residual_resets" in self.trace_ else 0
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

    def coefficients(self) -> Any:
        """``coef_`` as an xarray.DataArray labelled by feature (and class) names.

        Features are named by ``feature_names_in_`` (DataFrame columns, Dataset
        variables) when the fit had names, else numbered 0 .. n_features_in_ - 1.
        """
        import xarray as xr

        self._check_fitted()
        names = getattr(self, "feature_names_in_", None)
        features = list(names) if names is not None else list(range(self.n_features_in_))
        coef = np.asarray(self.coef_)
        if coef.ndim == 1:
            return xr.DataArray(coef, dims=("feature",), coords={"feature": features}, name="coef")
        classes = getattr(self, "classes_", np.arange(len(coef)))
        labels = classes[1:] if len(coef) == 1 and len(classes) == 2 else classes
        return xr.DataArray(
            coef,
            dims=("class", "feature"),
            coords={"class": list(labels), "feature": features},
            name="coef",
        )

    def _decision(self, X: Any) -> Any:
        """Linear scores; lazy for dask input (regressors have no public decision_function).

        Parameters
        ----------
        X : array-like, DataFrame or dask array of shape (n_samples, n_features)

        Returns
        -------
        scores : array of shape (n_samples,) or (n_samples, n_classes)
        """
        self._check_fitted()
        X = inputs.prediction_features(self, X)
        return self._model.decision_function(self._w, X, self.fit_intercept)


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return False
