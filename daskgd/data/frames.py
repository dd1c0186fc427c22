"""Tables as inputs: pandas and dask DataFrames, CSV and Parquet files.

A table becomes a row-chunked array plus its column names (the estimators'
``feature_names_in_``). Columns are checked one by one, so a bad column is named in
the error instead of failing later inside a chunk task. Files are read through
``dask.dataframe`` (lazily, partition by partition on the workers).
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["is_dask_frame", "is_frame", "frame_to_array", "read_table", "split_table"]

TABLE_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def is_frame(value) -> bool:
    """A pandas DataFrame or a dask DataFrame (duck-typed: both have ``columns``, ``dtypes``)."""
    return hasattr(value, "columns") and hasattr(value, "dtypes") and hasattr(value, "iloc")


def is_dask_frame(value) -> bool:
    return is_frame(value) and hasattr(value, "to_dask_array")


def is_series(value) -> bool:
    return hasattr(value, "dtype") and hasattr(value, "name") and hasattr(value, "iloc")


def check_columns(frame, name="X"):
    """Raise TypeError naming every non-numeric (object, string, datetime...) column."""
    bad = [
        f"{column!r} ({dtype})"
        for column, dtype in frame.dtypes.items()
        if getattr(np.dtype(dtype) if _numpy_like(dtype) else None, "kind", "O") not in "biuf"
    ]
    if bad:
        raise TypeError(
            f"{name} has non-numeric columns {', '.join(bad)}: daskgd needs numbers "
            "(bool, integer or float); encode or drop them first"
        )


def _numpy_like(dtype) -> bool:
    try:
        np.dtype(dtype)
    except TypeError:
        return False
    return True


def frame_to_array(frame, name="X"):
    """Column names and the values of a DataFrame: numpy for pandas, dask for dask.

    A dask DataFrame's partition lengths are computed once when unknown (as after
    ``read_csv``), so the array has known row chunks.
    """
    columns = [str(column) for column in frame.columns]
    check_columns(frame, name)
    if is_dask_frame(frame):
        return columns, frame.to_dask_array(lengths=True).astype(np.float64)
    return columns, frame.to_numpy(dtype=np.float64)


def series_to_array(series):
    """The values of a pandas or dask Series (label dtypes kept)."""
    if hasattr(series, "to_dask_array"):
        return series.to_dask_array(lengths=True)
    return series.to_numpy()


def select_columns(frame, columns, name="X"):
    """``frame[columns]`` with a clear error naming the missing columns."""
    available = [str(column) for column in frame.columns]
    missing = [column for column in columns if column not in available]
    if missing:
        raise ValueError(f"{name}: no column {missing} in the table; its columns are {available}")
    return frame[list(columns)]


def split_table(frame, features=None, target=None):
    """X (a DataFrame of the feature columns) and y (the target column or None).

    Without ``features``, every column but the target is a feature: the target is
    never used as a feature.
    """
    columns = [str(column) for column in frame.columns]
    if isinstance(features, str):
        features = [features]
    if target is not None and target not in columns:
        raise ValueError(f"target: no column {target!r} in the table; its columns are {columns}")
    if features is None:
        features = [column for column in columns if column != target]
    elif target in features:
        raise ValueError(f"the target column {target!r} cannot also be a feature")
    if not features:
        raise ValueError(f"no feature columns: the table's columns are {columns}")
    X = select_columns(frame, features)
    return X, None if target is None else frame[target]


def read_table(path, features=None, target=None, *, blocksize="64MiB"):
    """Open a CSV or Parquet file (or a glob / directory of them) as (X, y) DataFrames.

    Parameters
    ----------
    path : str or os.PathLike
        ``*.csv`` or ``*.parquet`` / ``*.pq`` (a directory is read as Parquet).
    features : list of str, optional
        Feature columns; default every column but ``target``.
    target : str, optional
        Target column.
    """
    import dask.dataframe as dd

    path = os.fspath(path)
    kind = table_kind(path)
    if kind is None:
        raise ValueError(f"{path!r} is not a CSV or Parquet file (.csv, .parquet, .pq)")
    if "*" not in path and not os.path.exists(path):
        raise FileNotFoundError(f"no file at {path!r}")
    if kind == "csv":
        frame = dd.read_csv(path, blocksize=blocksize)
    else:
        frame = dd.read_parquet(path)
    return split_table(frame, features, target)


def table_kind(path) -> str | None:
    """'csv', 'parquet' or None, from the file name (a directory counts as Parquet)."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix in TABLE_SUFFIXES:
        return TABLE_SUFFIXES[suffix]
    if os.path.isdir(path) and any(f.endswith((".parquet", ".pq")) for f in os.listdir(path)):
        return "parquet"
    return None
