"""LogisticRegression: binary and multinomial, scikit-learn's objective and parameters."""

from __future__ import annotations

import math
import numbers
from typing import Any

import dask.array as da
import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.metrics import accuracy_score
from sklearn.utils._param_validation import Interval, StrOptions

from daskgd.data.waits import DEFAULT_TIMEOUT_SECONDS
from daskgd.engine.callbacks import Callback
from daskgd.estimators import inputs
from daskgd.estimators.base import COMMON_CONSTRAINTS, GradientDescentEstimator
from daskgd.models.losses import Logistic, Multinomial
from daskgd.models.penalties import make_penalty

PENALTIES = ("l2", "l1", "elasticnet", None)


class LogisticRegression(ClassifierMixin, GradientDescentEstimator):
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
    class_weight : dict, 'balanced' or None, default=None
        Weights of the classes ({label: weight}, missing labels weigh 1); 'balanced'
        weighs class k by ``n_samples / (n_classes * count_k)`` (counts weighted by
        ``sample_weight``), as in scikit-learn.
    fit_intercept : bool, default=True
    tol : float, default=1e-4
        Stop when the inf-norm of the (proximal) gradient of the mean objective is <= tol.
        ``tol=0`` runs max_iter iterations on purpose, without a ConvergenceWarning.
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
    warm_start : bool, default=False
        Start from the previous fit's coefficients (same classes and features).
    timeout : float, default=60.0
        Seconds any request to the cluster may go unanswered (a frozen scheduler, a lost
        worker) before the fit stops with an error naming what did not answer.
    wait_for_workers : float, default=0.0
        Seconds to wait for a first worker when the cluster has none (workers still
        starting, jobs still queued); then the fit fails with a clear error.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Column names of a DataFrame or variable names of a Dataset, when X had them.
    coef_ : ndarray of shape (1, n_features) or (n_classes, n_features)
    intercept_ : ndarray of shape (1,) or (n_classes,)
    n_iter_ : ndarray of shape (1,)
    trace_ : xarray.Dataset
        Per-iteration loss, grad_norm, step_size, wall_seconds, ...
    """

    # Fitted attributes, declared for type checkers (set by fit).
    classes_: np.ndarray
    n_iter_: Any

    _parameter_constraints: dict = {
        **COMMON_CONSTRAINTS,
        "penalty": [StrOptions({"l2", "l1", "elasticnet"}), None],
        "C": [Interval(numbers.Real, 0, None, closed="neither")],
        "l1_ratio": [Interval(numbers.Real, 0, 1, closed="both")],
        "class_weight": [dict, StrOptions({"balanced"}), None],
    }

    def __init__(
        self,
        penalty: str | None = "l2",
        *,
        C: float = 1.0,
        l1_ratio: float = 0.0,
        class_weight: Any = None,
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
        warm_start: bool = False,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        wait_for_workers: float = 0.0,
    ):
        self.penalty = penalty
        self.C = C
        self.l1_ratio = l1_ratio
        self.class_weight = class_weight
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
        """scikit-learn's penalty / (C * sum of sample weights) on the mean loss."""
        if self.penalty is None or math.isinf(self.C):
            return make_penalty(None, 0.0)
        strength = 1.0 / (self.C * total_weight)
        l1_ratio = {"l2": 0.0, "l1": 1.0}.get(self.penalty, self.l1_ratio)
        return make_penalty(
            "elasticnet" if self.penalty == "elasticnet" else self.penalty, strength, l1_ratio
        )

    def _check_solver(self) -> None:
        if (
            self.solver == "lbfgs"
            and self.penalty in ("l1", "elasticnet")
            and not (self.penalty == "elasticnet" and self.l1_ratio == 0)
        ):
            raise ValueError(
                f"solver 'lbfgs' supports only 'l2' or None penalties, got {self.penalty!r}; "
                "use solver='gd' or 'nesterov' (proximal steps) for L1"
            )

    def fit(
        self,
        X: Any,
        y: Any = None,
        sample_weight: Any = None,
        *,
        callbacks: list[Callback] | None = None,
        features: Any = None,
        target: str | None = None,
    ) -> LogisticRegression:
        """Fit on X of shape (n_samples, n_features) and labels y of shape (n_samples,).

        Parameters
        ----------
        X : array-like, DataFrame, dask array or DataFrame, xarray.Dataset or path
        y : array-like of shape (n_samples,), or None with ``target=``
        sample_weight : array-like of shape (n_samples,), optional
        callbacks : list of daskgd.engine.callbacks.Callback, optional
        features, target : column / variable names of a DataFrame or Dataset X
        """
        self.check_options()
        client = self._checked_client()  # workers there before any computation (label encoding)
        X, y = inputs.fit_inputs(self, X, y, features=features, target=target, classifier=True)
        classes, y_encoded = inputs.classes_and_indices(y)
        weights = inputs.sample_weights(sample_weight, X)
        weights = inputs.weights_of_classes(self.class_weight, classes, y_encoded, weights)
        weights, total = inputs.normalized_weights(weights)
        if self.warm_start and hasattr(self, "classes_") and not _same(self.classes_, classes):
            del self._w  # other classes: a cold start
        self.classes_ = classes
        n_classes = len(classes)
        model = Logistic() if n_classes == 2 else Multinomial(n_classes)
        penalty = self._penalty(X.shape[0] if total is None else total)
        self._fit_model(X, y_encoded, model, penalty, list(callbacks or []), weights, client)
        self.n_iter_ = np.array([self.n_iter_])
        return self

    def _shape_coefficients(self, coef: np.ndarray, intercept: np.ndarray) -> tuple:
        return coef, np.asarray(intercept, dtype=np.float64)

    def decision_function(self, X: Any) -> Any:
        """Linear scores: (n_samples,) for two classes, else (n_samples, n_classes)."""
        return self._decision(X)

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

    def predict_log_proba(self, X: Any) -> Any:
        """Logarithm of ``predict_proba``."""
        probabilities = self.predict_proba(X)
        lib = da if isinstance(probabilities, da.Array) else np
        return lib.log(probabilities)

    def predict(self, X: Any) -> Any:
        """Predicted labels of shape (n_samples,); lazy for dask input."""
        scores = self.decision_function(X)
        index = (scores > 0).astype(np.int64) if scores.ndim == 1 else scores.argmax(axis=1)
        if isinstance(index, da.Array):
            blocks: Any = index  # dask's map_blocks decorator confuses mypy
            return blocks.map_blocks(lambda i, c=self.classes_: c[i], dtype=self.classes_.dtype)
        return self.classes_[index]

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Mean accuracy on (X, y), weighted by ``sample_weight``; dask input stays lazy
        until the one final compute."""
        predicted = self.predict(X)
        y = inputs.target_values(y)
        if not isinstance(predicted, da.Array) and not isinstance(y, da.Array):
            return float(accuracy_score(y, predicted, sample_weight=sample_weight))
        correct = predicted == y
        if sample_weight is not None:
            weight = da.asarray(sample_weight)
            return float((correct * weight).sum().compute() / weight.sum().compute())
        return float(correct.mean().compute())


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.all(a == b))
