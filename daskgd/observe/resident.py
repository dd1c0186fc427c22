"""The per-worker trace of a resident strategy, from what the workers measured themselves.

The residents of :mod:`daskgd.runtime` time their own compute, communication and
waiting and count their bytes for every request; the driver adds them up per
iteration (``IterationRecord.worker_measures``). This builds from them the same
variables a ``mapreduce`` fit gets from distributed's records
(:mod:`daskgd.observe.worker_measures`), so summaries, dashboards and reports read both
alike. Bytes: ``bytes_broadcast`` is what the workers received from the client (w),
``bytes_reduce`` what they sent back to it (partial sums, records), and ``bytes_total``
adds the worker-to-worker messages (counted once, at the sender).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from daskgd.data import waits
from daskgd.observe.stragglers import straggler_flags, sync_and_overhead
from daskgd.observe.worker_measures import (
    DEFAULT_RULE,
    ITERATION_BYTE_VARIABLES,
    WORKER_VARIABLES,
    memory_variables,
    straggler_attrs,
)

_TIMED = (
    "compute_seconds",
    "communication_seconds",
    "wait_seconds",
    "bytes_sent",
    "bytes_received",
)


def _table(records: Sequence[Any], workers: list[str], name: str) -> np.ndarray:
    values = np.full((len(records), len(workers)), np.nan)
    for i, record in enumerate(records):
        for j, worker in enumerate(workers):
            measured = (record.worker_measures or {}).get(worker)
            if measured is not None:
                values[i, j] = float(measured.get(name, 0.0))
    return values


def has_resident_measures(records: Sequence[Any]) -> bool:
    return any(getattr(record, "worker_measures", None) for record in records)


def _wait_split_and_stragglers(
    data_vars: dict, active: np.ndarray, rule: dict, data_bytes: np.ndarray
) -> dict:
    """``sync_seconds``, ``overhead_seconds`` and ``straggler`` from the residents' compute
    and wait (:mod:`daskgd.observe.stragglers`). The straggler rule compares compute per
    byte of the chunks summed (``data_bytes``, as mapreduce's per-task pace): a worker
    holding more rows than the others (a survivor after a rebuild) is not slow for that;
    where no bytes were recorded, the compute seconds themselves."""
    cells = ("iteration", "worker")
    compute, wait = data_vars["compute_seconds"][1], data_vars["wait_seconds"][1]
    sync, overhead = sync_and_overhead(compute, wait, active)
    out = {}
    for name, values in (("sync_seconds", sync), ("overhead_seconds", overhead)):
        description, units = WORKER_VARIABLES[name]
        out[name] = (cells, values, {"long_name": description, "units": units})
    pace = None
    if np.nansum(data_bytes) > 0:
        with np.errstate(divide="ignore", invalid="ignore"):
            pace = np.where(data_bytes > 0, compute / data_bytes, np.nan)
    flags = straggler_flags(np.nan_to_num(compute), active, pace=pace, **rule)
    out["straggler"] = (cells, flags, straggler_attrs(rule))
    return out


def _optional_variables(records: Sequence[Any], workers: list[str]) -> dict:
    """``staleness`` where a strategy recorded it, ``emulated_seconds`` where the
    emulation slept (other traces are unchanged)."""
    cells, out = ("iteration", "worker"), {}
    if any("staleness" in m for r in records for m in (r.worker_measures or {}).values()):
        out["staleness"] = (cells, _table(records, workers, "staleness"), {
            "long_name": "updates (parameter server) or evaluations (backup workers) since "
            "the partial sum applied was computed; NaN where none of the worker's was",
            "units": "1"})  # fmt: skip
    emulated = _table(records, workers, "emulated_seconds")
    if np.nansum(emulated) > 0:
        out["emulated_seconds"] = (cells, emulated, {
            "long_name": "part of compute_seconds slept by the emulation (straggler, "
            "emulated compute); compute_seconds minus it is what the compute really cost",
            "units": "s"})  # fmt: skip
    return out


def resident_worker_dataset(
    records: Sequence[Any], *, client: Any = None, **rule: Any
) -> xr.Dataset:
    """Dims (iteration, worker) and the iteration byte totals, as for ``mapreduce``.

    ``client`` (optional) gives the workers' names for the ``worker_name`` coordinate;
    ``rule``: the straggler rule's settings (``window``, ``ratio``,
    ``min_excess_seconds``; :mod:`daskgd.observe.stragglers`).
    """
    rule = {**DEFAULT_RULE, **rule}
    records = list(records)
    names: dict = {}
    memory: dict = {}
    if client is not None:
        workers_info = waits.scheduler_workers(client, what="naming the workers")
        names = {address: str(info.get("name", "")) for address, info in workers_info.items()}
        memory = {
            address: (info.get("metrics", {}).get("memory", np.nan), info.get("memory_limit", 0))
            for address, info in workers_info.items()
        }
    workers = sorted({w for record in records for w in (record.worker_measures or {})})
    cells = ("iteration", "worker")
    data_vars: dict[str, Any] = {}
    for name in _TIMED:
        description, units = WORKER_VARIABLES[name]
        data_vars[name] = (cells, _table(records, workers, name), {"long_name": description,
                                                                   "units": units})  # fmt: skip
    data_vars.update(_optional_variables(records, workers))
    compute = data_vars["compute_seconds"][1]
    active = ~np.isnan(compute)
    data_vars["n_tasks"] = (cells, active.astype(np.int64), {"long_name": "requests served",
                                                             "units": "1"})  # fmt: skip
    data_bytes = _table(records, workers, "data_bytes")
    data_vars.update(_wait_split_and_stragglers(data_vars, active, rule, data_bytes))
    data_vars.update(memory_variables(workers, memory))
    from_client = np.nansum(_table(records, workers, "bytes_from_client"), axis=1)
    to_client = np.nansum(_table(records, workers, "bytes_to_client"), axis=1)
    sent = np.nansum(data_vars["bytes_sent"][1], axis=1)
    moved = {
        "bytes_broadcast": from_client,
        "bytes_reduce": to_client,
        "bytes_total": from_client + sent,
    }
    for name, values in moved.items():
        description, units = ITERATION_BYTE_VARIABLES[name]
        values = np.where(active.any(axis=1), values, np.nan)
        data_vars[name] = (("iteration",), values, {"long_name": description, "units": units})
    coords = {
        "iteration": np.array([record.iteration for record in records], dtype=np.int64),
        "worker": np.array(workers, dtype=object),
        "worker_name": ("worker", np.array([names.get(w, "") for w in workers], object)),
    }
    dataset = xr.Dataset(data_vars, coords=coords)
    dataset.attrs.update({f"straggler_{name}": value for name, value in rule.items()})
    dataset.attrs["measured_by"] = "residents"
    return dataset
