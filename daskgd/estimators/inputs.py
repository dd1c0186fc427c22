"""What the estimators accept: numpy, pandas and dask DataFrames, dask arrays, xarray.

In-memory input (numpy, lists, pandas, scipy.sparse) goes through scikit-learn's ``validate_data``:
its checks and messages, ``n_features_in_`` and ``feature_names_in_``. Lazy input (dask
arrays and DataFrames, xarray Datasets, paths) is never computed here: shapes, dtypes
and column names are checked from metadata, and NaN is found when the data is placed.
"""

from __future__ import annotations

import numbers
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, validate_data

from daskgd import data as data_module
from daskgd.data import frames
from daskgd.data.sources import PATH_TYPES

#: scipy.sparse input is converted to CSR (scikit-learn's validate_data does it, and
#: checks its stored values for NaN): the format of daskgd's sparse chunks.
SPARSE_FORMAT = "csr"

#: Most classes LogisticRegression accepts: w has n_classes * (n_features + 1) entries
#: sent to every worker each iteration, and a target with more distinct values is far
#: more likely a continuous target than classes (one with ~10^4 "classes" killed a worker).
MAX_CLASSES = 1000


def _is_lazy(value) -> bool:
    if isinstance(value, xr.DataArray):
        value = value.data
    return (
        isinstance(value, da.Array)
        or frames.is_dask_frame(value)
        or (frames.is_series(value) and hasattr(value, "to_dask_array"))
    )


def fit_inputs(estimator, X, y, *, features=None, target=None, classifier=False):
    """Validated X and y for ``fit``; sets ``n_features_in_`` and ``feature_names_in_``.

    Returns numpy arrays for in-memory input, dask arrays otherwise. y keeps its label
    dtype for classifiers.
    """
    if isinstance(X, (xr.Dataset, *PATH_TYPES)):
        return _fit_dataset(estimator, X, y, features, target)
    if frames.is_frame(X) and (features is not None or target is not None):
        if y is not None and target is not None:
            raise ValueError("pass either y or target=, not both")
        X, y_column = frames.split_table(X, features, target)
        y = y_column if target is not None else y
    elif features is not None or target is not None:
        raise ValueError("features= and target= apply to a DataFrame, an xarray.Dataset or a path")
    if y is None:
        raise ValueError(
            f"requires y to be passed, but the target y is None ({type(estimator).__name__})"
        )
    if _is_lazy(X) or _is_lazy(y):
        return _fit_lazy(estimator, X, y)
    if frames.is_frame(X):
        frames.check_columns(X)
    X, y = validate_data(
        estimator,
        X,
        y,
        accept_sparse=SPARSE_FORMAT,
        dtype=[np.float64, np.float32],
        y_numeric=not classifier,
    )
    if classifier:
        check_classification_targets(y)
    return X, y


def _fit_lazy(estimator, X, y):
    names = None
    if frames.is_frame(X):
        names, X = frames.frame_to_array(X)
    if frames.is_series(y):
        y = frames.series_to_array(y)
    X, y = data_module.as_dask_arrays(X, y, labels=True)
    _set_features(estimator, X.shape[1], names)
    return X, y


def _fit_dataset(estimator, X, y, features, target):
    """An xarray.Dataset (or a path): the target variable is never a feature."""
    if isinstance(X, xr.Dataset) and isinstance(y, xr.DataArray) and target is None:
        if y.name is not None and y.name in X.data_vars and X[y.name].identical(y):
            target, y = y.name, None  # fit(ds, ds["label"]): label is the target
    names = None
    if isinstance(X, xr.Dataset):
        names = _dataset_feature_names(X, features, target)
        features = names
    X, y = data_module.as_dask_arrays(X, y, target=target, features=features, labels=True)
    if y is None:
        raise ValueError("y is required: pass it, or target= naming the Dataset's target")
    if names is not None and len(names) != X.shape[1]:
        names = None  # a 2-D variable spans several columns: no name per column
    _set_features(estimator, X.shape[1], names)
    return X, y


def _dataset_feature_names(dataset, features, target):
    if features is not None:
        return [features] if isinstance(features, str) else list(features)
    sample_dim = dataset[target].dims[0] if target is not None and dataset[target].ndim else None
    return [
        str(name)
        for name in dataset.data_vars
        if name != target and (sample_dim is None or sample_dim in dataset[name].dims)
    ]


def _set_features(estimator, n_features, names):
    estimator.n_features_in_ = int(n_features)
    if names is not None:
        estimator.feature_names_in_ = np.asarray(names, dtype=object)
    elif hasattr(estimator, "feature_names_in_"):
        del estimator.feature_names_in_


def prediction_features(estimator, X):
    """X for predict/decision_function: numpy (validated) or dask (lazy, never computed)."""
    if isinstance(X, xr.Dataset):
        names = getattr(estimator, "feature_names_in_", None)
        X, _ = data_module.as_dask_arrays(X, features=None if names is None else list(names))
    elif frames.is_dask_frame(X):
        names = getattr(estimator, "feature_names_in_", None)
        if names is not None:
            X = frames.select_columns(X, list(names))
        X = frames.frame_to_array(X)[1]
    if isinstance(X, xr.DataArray):
        X = X.data
    if isinstance(X, da.Array):
        _check_width(estimator, X)
        return X
    if frames.is_frame(X):
        frames.check_columns(X)
    return validate_data(
        estimator, X, reset=False, accept_sparse=SPARSE_FORMAT, dtype=[np.float64, np.float32]
    )


def _check_width(estimator, X):
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {X.shape}")
    expected = estimator.n_features_in_
    if X.shape[1] != expected:
        raise ValueError(
            f"X has {X.shape[1]} features, but {type(estimator).__name__} is expecting "
            f"{expected} features as input (it was fitted with {expected})"
        )


def classes_and_indices(y):
    """Sorted classes and the class index (float64) of every row; checks the target.

    A continuous target or more than MAX_CLASSES classes is refused before any fit.
    """
    if isinstance(y, da.Array):
        classes, encoded = data_module.encode_labels(y)
        if classes.dtype.kind == "f" and np.any(classes != np.round(classes)):
            raise ValueError(
                "Unknown label type: continuous. LogisticRegression needs class labels "
                "(integers, strings or bools); use a regressor for a continuous target"
            )
    else:
        classes, indices = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(
                f"y has only one class ({classes.tolist()[0]!r}): classification needs at least two"
            )
        encoded = indices.astype(np.float64)
    if len(classes) > MAX_CLASSES:
        raise ValueError(
            f"y has {len(classes)} distinct labels, more than the {MAX_CLASSES} classes "
            "LogisticRegression accepts (daskgd.estimators.inputs.MAX_CLASSES); is it a "
            "continuous target?"
        )
    return classes, encoded


def sample_weights(sample_weight, X):
    """Validated weights (numpy or dask, float64) or None."""
    if sample_weight is None:
        return None
    if isinstance(sample_weight, numbers.Number) and not isinstance(X, da.Array):
        return _check_sample_weight(sample_weight, X, ensure_non_negative=True)
    if _is_lazy(sample_weight) or isinstance(X, da.Array):
        if frames.is_series(sample_weight):
            sample_weight = frames.series_to_array(sample_weight)
        if isinstance(sample_weight, xr.DataArray):
            sample_weight = sample_weight.data
        if isinstance(sample_weight, numbers.Number):
            return da.full(X.shape[0], float(sample_weight), chunks=X.chunks[0])
        weights = da.asarray(sample_weight).astype(np.float64)
        if weights.shape != (X.shape[0],):
            raise ValueError(f"sample_weight.shape == {weights.shape}, expected ({X.shape[0]},)!")
        return weights.rechunk({0: X.chunks[0]})
    return _check_sample_weight(sample_weight, X, ensure_non_negative=True)


def normalized_weights(weights):
    """Weights scaled to mean 1, and their original total (lazy weights: one compute).

    With mean-1 weights, the chunks' row count still divides the weighted loss sum,
    which gives scikit-learn's objective ``sum(w_i * loss_i) / sum(w)``.
    """
    if weights is None:
        return None, None
    if isinstance(weights, da.Array):
        total, smallest, finite = dask.compute(
            weights.sum(), weights.min(), da.isfinite(weights).all()
        )
    else:
        total, smallest, finite = weights.sum(), weights.min(), np.isfinite(weights).all()
    if not finite:
        raise ValueError("sample_weight contains NaN or infinity")
    if smallest < 0:
        raise ValueError("Negative values in data passed to `sample_weight`.")
    if total <= 0:
        raise ValueError("sample_weight sums to 0: at least one sample needs a positive weight")
    return weights * (weights.shape[0] / float(total)), float(total)


def weights_of_classes(class_weight, classes, encoded, weights) -> Any:
    """``class_weight`` ('balanced' or {label: weight}) times sample weights, per row."""
    if class_weight is None:
        return weights
    lib = da if isinstance(encoded, da.Array) else np
    indices = encoded.astype(np.int64)
    if class_weight == "balanced":
        base = lib.ones_like(encoded) if weights is None else weights
        totals = lib.bincount(indices, weights=base, minlength=len(classes))
        totals = np.asarray(totals.compute() if lib is da else totals, dtype=np.float64)
        per_class = totals.sum() / (len(classes) * np.where(totals > 0, totals, 1.0))
    else:
        unknown = [label for label in class_weight if label not in set(classes.tolist())]
        if unknown:
            raise ValueError(f"The classes, {unknown}, are not in class_weight's labels")
        per_class = np.array([float(class_weight.get(label, 1.0)) for label in classes.tolist()])
    if lib is da:
        rows = indices.map_blocks(lambda i, p=per_class: p[i], dtype=np.float64)
    else:
        rows = per_class[indices]
    return rows if weights is None else rows * weights


def target_values(y):
    """y of score(): numpy or dask values of an array, Series or DataArray."""
    if isinstance(y, xr.DataArray):
        return y.data
    if frames.is_series(y):
        return frames.series_to_array(y)
    return y if isinstance(y, da.Array) else np.asarray(y)
