"""Fitted models as a small JSON file that ``daskgd predict`` and plain Python can read.

The format (``"format": "daskgd-model"``, ``"format_version": 1``) is a JSON object:

``estimator``      class name of the fitted estimator, e.g. ``"LogisticRegression"``
``task``           ``"classification"`` or ``"regression"``
``coef``           list (regression: shape (d,)) or list of lists (classification:
                   (1, d) for two classes, (n_classes, d) for more)
``intercept``      number (regression) or list (classification); 0 without an intercept
``classes``        the labels (classification) in the order of the rows of ``coef``, and
                   ``classes_dtype``, the numpy dtype string they are restored with
``feature_names``  names of the d features, or null
``params``         the estimator's options (``get_params()`` less ``client`` and ``verbose``;
                   those that are not numbers,
                   strings, booleans or null written as their ``repr``
``fit``            ``n_iter``, ``converged``, ``daskgd_version``

Floats are written with Python's shortest round-tripping ``repr``, so coefficients load
bit for bit. Only ``coef_``, ``intercept_``, ``classes_``, ``feature_names_in_`` and
``get_params()`` are read from the estimator: any object with those attributes can be saved.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "daskgd-model"
FORMAT_VERSION = 1
#: Options that say where and how loudly a fit ran, not what was fitted.
_RUNTIME = {"client", "verbose"}


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return repr(value)


def model_document(model: Any, *, feature_names: Any = None) -> dict:
    """The JSON-ready dict of a fitted ``model`` (see the module docstring)."""
    if not hasattr(model, "coef_"):
        raise ValueError(f"{type(model).__name__} is not fitted: it has no coef_ to save")
    from daskgd import __version__

    classes = getattr(model, "classes_", None)
    names = (
        feature_names if feature_names is not None else getattr(model, "feature_names_in_", None)
    )
    coef = np.asarray(model.coef_, dtype=np.float64)
    n_iter = getattr(model, "n_iter_", None)
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "estimator": type(model).__name__,
        "task": "regression" if classes is None else "classification",
        "coef": coef.tolist(),
        "intercept": np.asarray(getattr(model, "intercept_", 0.0), dtype=np.float64).tolist(),
        "classes": None if classes is None else np.asarray(classes).tolist(),
        "classes_dtype": None if classes is None else np.asarray(classes).dtype.str,
        "feature_names": None if names is None else [str(n) for n in names],
        "params": {
            k: _plain(v) for k, v in sorted(model.get_params().items()) if k not in _RUNTIME
        },
        "fit": {
            "n_iter": None if n_iter is None else int(np.max(n_iter)),
            "converged": _plain(getattr(model, "converged_", None)),
            "daskgd_version": __version__,
        },
    }
    n_features = coef.shape[-1]
    if names is not None and len(document["feature_names"]) != n_features:
        raise ValueError(
            f"feature_names has {len(document['feature_names'])} names for {n_features} features"
        )
    return document


def save_model(model: Any, path: str | Path, *, feature_names: Any = None) -> Path:
    """Write the fitted ``model`` to ``path`` (JSON); returns the path."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"model path {str(path)!r} is a folder; give a file name")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"model folder {str(path.parent)!r} does not exist")
    document = model_document(model, feature_names=feature_names)
    path.write_text(json.dumps(document, indent=1) + "\n")
    return path


@dataclasses.dataclass(frozen=True)
class SavedModel:
    """A model loaded by :func:`load_model`: predictions in numpy (or lazy with dask)."""

    estimator: str
    task: str
    coef: np.ndarray
    intercept: np.ndarray | float
    classes: np.ndarray | None
    feature_names: list[str] | None
    params: dict
    fit: dict

    @property
    def n_features(self) -> int:
        return int(self.coef.shape[-1])

    def decision_function(self, X: Any) -> Any:
        """Linear scores: (n,) for regression and two classes, (n, n_classes) otherwise."""
        if getattr(X, "ndim", None) != 2 or X.shape[1] != self.n_features:
            raise ValueError(
                f"X must have shape (n_samples, {self.n_features}), got "
                f"{getattr(X, 'shape', type(X).__name__)}"
            )
        scores = X @ self.coef.T + self.intercept
        return scores[:, 0] if scores.ndim == 2 and scores.shape[1] == 1 else scores

    def predict_proba(self, X: Any) -> Any:
        if self.classes is None:
            raise ValueError(f"{self.estimator} is a regression model: it has no probabilities")
        scores = self.decision_function(X)
        if scores.ndim == 1:
            positive = 1.0 / (1.0 + np.exp(-scores))
            return np.stack([1.0 - positive, positive], axis=1)
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    def predict(self, X: Any) -> Any:
        scores = self.decision_function(X)
        if self.classes is None:
            return scores
        index = (scores > 0).astype(np.int64) if scores.ndim == 1 else scores.argmax(axis=1)
        if hasattr(index, "map_blocks"):  # dask: stay lazy
            return index.map_blocks(lambda i, c=self.classes: c[i], dtype=self.classes.dtype)
        return self.classes[index]


def load_model(path: str | Path) -> SavedModel:
    """Read a model written by :func:`save_model` (or ``daskgd run --model-out``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{str(path)!r} is not a daskgd model file: {error}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a daskgd model file (no format {FORMAT!r})")
    if document.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{str(path)!r} has model format version {document.get('format_version')!r}; "
            f"this daskgd reads version {FORMAT_VERSION}"
        )
    classes = document["classes"]
    intercept = np.asarray(document["intercept"], dtype=np.float64)
    return SavedModel(
        estimator=document["estimator"],
        task=document["task"],
        coef=np.asarray(document["coef"], dtype=np.float64),
        intercept=float(intercept) if intercept.ndim == 0 else intercept,
        classes=None if classes is None else np.asarray(classes, dtype=document["classes_dtype"]),
        feature_names=document["feature_names"],
        params=document["params"],
        fit=document["fit"],
    )
