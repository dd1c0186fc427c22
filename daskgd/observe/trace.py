"""The trace of a fit: an ``xarray.Dataset`` with an ``iteration`` dimension.

Everything measured during a fit lands here, with units in each variable's ``attrs``
and the run's configuration in the Dataset's ``attrs``. Traces are saved and loaded as
netCDF (``.nc``) or zarr (``.zarr``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

#: Format version written into every trace; :func:`load_trace` checks it.
TRACE_VERSION = 2

_ITERATION_VARIABLES = {
    "loss": ("objective F(w) after the iteration, on the rows evaluated", "1"),
    "grad_norm": ("inf-norm of the (proximal) gradient, on the rows evaluated", "1"),
    "optimality": ("what tol is compared with (grad_norm; sgd: relative change of w)", "1"),
    "step_size": ("step size used by the update", "1"),
    "wall_seconds": ("wall-clock time of the iteration on the client", "s"),
    "elapsed_seconds": ("wall-clock time since the fit started", "s"),
    "n_evaluations": ("round trips to the cluster (gradient evaluations)", "1"),
    "evaluation_seconds": ("time spent waiting for the cluster's sums", "s"),
    "attempts": ("evaluation attempts (more than n_evaluations when a worker was lost)", "1"),
}


def build_trace(
    records: Sequence[Any], attrs: dict | None = None, workers: xr.Dataset | None = None
) -> xr.Dataset:
    """Turn the engine's iteration records into a trace Dataset.

    ``workers``, the per-worker measurements of the same records
    (:meth:`daskgd.observe.instrument.Instrumentation.worker_dataset`), is merged in.
    """
    iterations = np.array([record.iteration for record in records], dtype=np.int64)
    data_vars = {}
    for name, (description, units) in _ITERATION_VARIABLES.items():
        values = np.array([getattr(record, name) for record in records])
        data_vars[name] = xr.Variable(
            ("iteration",), values, {"long_name": description, "units": units}
        )
    start = np.array([record.start_time for record in records], dtype=np.float64)
    data_vars["start_time"] = xr.Variable(
        ("iteration",), start, {"long_name": "iteration start (POSIX time)", "units": "s"}
    )
    dataset = xr.Dataset(data_vars, coords={"iteration": iterations})
    if workers is not None:
        dataset = dataset.merge(workers, join="exact", combine_attrs="override")
        dataset.attrs.update(workers.attrs)
    dataset.attrs.update(_clean_attrs(attrs or {}))
    dataset.attrs["daskgd_trace_version"] = TRACE_VERSION
    return dataset


def iteration_variables(records: Sequence[Any], variables: dict) -> xr.Dataset:
    """A strategy's own per-iteration variables, ``{name: (values, attrs)}``, as a Dataset
    over the records' iterations (e.g. ``consensus_distance`` of the peer-to-peer ones)."""
    iterations = np.array([record.iteration for record in records], dtype=np.int64)
    data_vars = {name: (("iteration",), np.asarray(values), dict(attrs))
                 for name, (values, attrs) in variables.items()}  # fmt: skip
    return xr.Dataset(data_vars, coords={"iteration": iterations})


def _clean_attrs(attrs: dict) -> dict:
    """netCDF attributes must be str, numbers or 1-D arrays: encode the rest as JSON."""
    clean: dict[str, Any] = {}
    for key, value in attrs.items():
        if isinstance(value, bool):
            clean[key] = int(value)
        elif isinstance(value, (str, int, float, np.integer, np.floating)):
            clean[key] = value
        elif value is None:
            clean[key] = "None"
        else:
            clean[key] = json.dumps(value, default=str)
    return clean


def save_trace(trace: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write a trace to ``path``: zarr when it ends in ``.zarr``, else netCDF."""
    path = Path(path)
    if path.suffix == ".zarr":
        trace.to_zarr(path, mode="w")
    else:
        trace.to_netcdf(path, engine="h5netcdf")
    return path


def load_trace(path: str | os.PathLike) -> xr.Dataset:
    """Read a trace written by :func:`save_trace`, checking that it is one.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        When the file is not a daskgd trace or comes from another trace version.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"trace file {str(path)!r} does not exist")
    try:
        if path.suffix == ".zarr" or path.is_dir():
            trace = xr.open_zarr(path).load()
        else:
            with xr.open_dataset(path, engine="h5netcdf") as opened:
                trace = opened.load()
    except Exception as error:  # any reader failure means: not a trace we can read
        raise ValueError(
            f"{str(path)!r} is not a daskgd trace (netCDF or zarr): {type(error).__name__}"
        ) from None
    version = trace.attrs.get("daskgd_trace_version")
    if version is None or "iteration" not in trace.dims:
        raise ValueError(f"{str(path)!r} is not a daskgd trace (no daskgd_trace_version)")
    if int(version) != TRACE_VERSION:
        raise ValueError(
            f"{str(path)!r} is a daskgd trace of version {version}; this daskgd reads "
            f"version {TRACE_VERSION}"
        )
    return trace
