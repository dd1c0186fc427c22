"""A trace turned into the plain columns the plots draw: testable without a browser.

Every function here reads a trace (``docs/trace.md``), or its split
(:func:`daskgd.observe.summary.split`), and returns dicts of numpy arrays or lists.

A live trace (``attrs["daskgd_live"] == 1``) gets its per-worker measurements later
than its loss: the instrumentation polls the cluster about once a second, so the
last iterations of a running fit have a loss but no compute time or bytes yet.
:func:`pending_span` says which; the columns leave them empty (NaN) rather than
drawing a guess, so that the running totals do not run flat over them.
"""

from __future__ import annotations

import html
import json
from typing import Any

import numpy as np
import xarray as xr

from daskgd.observe.summary import PARTS, format_bytes, has_workers, worker_rows

#: One colour per part of an iteration, used by every plot and the header.
PART_COLORS = {
    "compute": "#4c72b0",
    "communication": "#dd8452",
    "sync": "#937860",
    "overhead": "#b8b8b8",
}

#: Memory of a worker: address -> (bytes in use, limit in bytes); either may be None.
Memory = dict[str, tuple[Any, Any]]


def _values(trace: xr.Dataset, name: str) -> np.ndarray:
    if name in trace.data_vars:
        return trace[name].values.astype(np.float64)
    return np.full(trace.sizes.get("iteration", 0), np.nan)


def measured_mask(trace: xr.Dataset) -> np.ndarray:
    """Per iteration: whether any worker measurement (compute time) arrived for it."""
    n = trace.sizes.get("iteration", 0)
    if not has_workers(trace) or "compute_seconds" not in trace.data_vars:
        return np.zeros(n, dtype=bool)
    compute = trace["compute_seconds"].transpose("iteration", "worker").values
    return np.asarray(np.isfinite(compute.astype(np.float64)).any(axis=1))


def pending_span(trace: xr.Dataset | None) -> tuple[int, int] | None:
    """(first, last) iteration of a live, instrumented trace whose measurements are
    still to come: those after the last measured one. None when nothing is pending.

    A trace is instrumented when ``attrs["daskgd_instrumented"]`` is 1 (set by
    :class:`daskgd.viz.live.LiveTrace`) or it already has per-worker data.
    """
    if trace is None or not int(trace.attrs.get("daskgd_live", 0)):
        return None
    if not (int(trace.attrs.get("daskgd_instrumented", 0)) or has_workers(trace)):
        return None
    iterations = trace["iteration"].values
    if iterations.size == 0:
        return None
    measured = np.flatnonzero(measured_mask(trace))
    first = int(measured[-1]) + 1 if measured.size else 0
    if first >= iterations.size:
        return None
    return int(iterations[first]), int(iterations[-1])


def loss_columns(trace: xr.Dataset) -> dict[str, np.ndarray]:
    """Loss per iteration; values <= 0 become NaN (they have no place on a log axis)."""
    loss = _values(trace, "loss")
    return {
        "iteration": trace["iteration"].values.astype(np.int64),
        "elapsed": _values(trace, "elapsed_seconds"),
        "loss": np.where(loss > 0, loss, np.nan),
        "grad_norm": _positive(_values(trace, "grad_norm")),
        # what tol is compared with; traces of version 1 have the gradient norm only
        "optimality": _positive(
            _values(trace, "optimality" if "optimality" in trace else "grad_norm")
        ),
    }


def _positive(values: np.ndarray) -> np.ndarray:
    return np.where(values > 0, values, np.nan)


def tolerance(trace: xr.Dataset) -> float | None:
    """The fit's ``tol`` from the trace's attrs, when it is a positive number."""
    try:
        tol = float(trace.attrs.get("tol", "nan"))
    except (TypeError, ValueError):
        return None
    return tol if np.isfinite(tol) and tol > 0 else None


def split_columns(parts: xr.Dataset) -> dict[str, np.ndarray]:
    """Milliseconds per part and iteration (from :func:`daskgd.observe.summary.split`)."""
    columns: dict[str, np.ndarray] = {"iteration": parts["iteration"].values.astype(np.int64)}
    for part in PARTS:
        columns[part] = parts["seconds"].sel(part=part).values * 1e3
    return columns


def worker_labels(trace: xr.Dataset, short: bool = False) -> list[str]:
    """Worker labels: ``name host:port`` (the name only when it says more); with
    ``short``, the names alone when every worker has its own."""
    if not has_workers(trace):
        return []
    addresses = [str(a).split("://", 1)[-1] for a in trace["worker"].values]
    if "worker_name" not in trace.coords:
        return addresses
    names = [str(n) for n in trace["worker_name"].values]
    if short and "" not in names and len(set(names)) == len(names):
        return [f"worker {n}" for n in names]
    return [a if n in ("", a) else f"{n} {a}" for n, a in zip(names, addresses, strict=True)]


def heatmap_columns(
    trace: xr.Dataset, short: bool = False
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(cells, stragglers): compute ms per (iteration, worker), and the flagged cells;
    ``short`` labels as :func:`worker_labels`."""
    labels = worker_labels(trace, short)
    if not labels or "compute_seconds" not in trace.data_vars:
        empty = {"iteration": np.array([], np.int64), "worker": np.array([], str)}
        return {**empty, "compute_ms": np.array([]), "straggler": np.array([], bool)}, empty
    compute = trace["compute_seconds"].transpose("iteration", "worker").values * 1e3
    flagged = np.zeros(compute.shape, dtype=bool)
    if "straggler" in trace.data_vars:
        straggler = trace["straggler"].transpose("iteration", "worker")
        flagged = straggler.fillna(False).values.astype(bool)
    iterations = trace["iteration"].values.astype(np.int64)
    grid_iteration = np.repeat(iterations, len(labels))
    grid_worker = np.tile(np.array(labels, dtype=object), len(iterations))
    cells = {
        "iteration": grid_iteration,
        "worker": grid_worker,
        "compute_ms": compute.ravel(),
        "straggler": flagged.ravel(),
    }
    marks = {"iteration": grid_iteration[flagged.ravel()], "worker": grid_worker[flagged.ravel()]}
    return cells, marks


def byte_unit(values: np.ndarray) -> tuple[str, float]:
    """The decimal unit that shows typical ``values`` (bytes) as numbers >= 1."""
    finite = values[np.isfinite(values) & (values > 0)]
    typical = float(np.percentile(finite, 90)) if finite.size else 0.0
    for name, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if typical >= scale:
            return name, scale
    return "B", 1.0


def _running_total(values: np.ndarray) -> np.ndarray:
    """Cumulative sum up to the last known value, NaN after it (not yet measured).

    An unknown value between known ones counts as 0: its bytes were not recorded.
    """
    total = np.cumsum(np.nan_to_num(values))
    known = np.flatnonzero(np.isfinite(values))
    if known.size:
        total[known[-1] + 1 :] = np.nan
    else:
        total[:] = np.nan
    return total


def bytes_columns(parts: xr.Dataset) -> tuple[dict[str, Any], str, str]:
    """(columns, unit per iteration, unit of the running totals).

    Per iteration: broadcast, reduce, other (the total's remainder: data chunks moved
    between workers) and total, in the unit; ``*_text`` for hovers; running totals
    ``*_cumulative`` in their own unit, NaN where 0 (they go on a log axis) and after
    the last measured iteration (pending, or never measured).
    """
    n = parts.sizes.get("iteration", 0)

    def get(name: str) -> np.ndarray:
        return parts[name].values.astype(np.float64) if name in parts else np.full(n, np.nan)

    values = {"broadcast": get("bytes_broadcast"), "reduce": get("bytes_reduce")}
    values["total"] = get("bytes_total")
    known = np.nan_to_num(values["broadcast"]) + np.nan_to_num(values["reduce"])
    values["other"] = np.clip(values["total"] - known, 0, None)
    unit, scale = byte_unit(values["total"])
    cumulative = {name: _running_total(v) for name, v in values.items()}
    finite_total = cumulative["total"][np.isfinite(cumulative["total"])]
    cumulative_unit, cumulative_scale = byte_unit(finite_total[-1:])
    columns: dict[str, Any] = {"iteration": parts["iteration"].values.astype(np.int64)}
    for name, v in values.items():
        columns[name] = v / scale
        columns[f"{name}_text"] = [format_bytes(x) for x in v]
        running = cumulative[name] / cumulative_scale
        columns[f"{name}_cumulative"] = np.where(running > 0, running, np.nan)
    return columns, unit, cumulative_unit


def trace_memory(trace: xr.Dataset) -> Memory:
    """Memory recorded in the trace, if any: variable ``memory_bytes`` (worker) and/or
    ``memory_limit_bytes`` (worker), or attribute ``worker_memory`` (JSON mapping of
    address to bytes in use)."""
    memory: Memory = {}
    if has_workers(trace):
        for index, address in enumerate(str(a) for a in trace["worker"].values):
            used = limit = None
            if "memory_bytes" in trace.data_vars:
                values = trace["memory_bytes"]
                values = values.isel(iteration=-1) if "iteration" in values.dims else values
                used = float(values.isel(worker=index))
            if "memory_limit_bytes" in trace.data_vars:
                limit = float(trace["memory_limit_bytes"].isel(worker=index))
            used = used if used is not None and np.isfinite(used) else None
            limit = limit if limit is not None and np.isfinite(limit) else None
            if used is not None or limit is not None:
                memory[address] = (used, limit)
    attr = trace.attrs.get("worker_memory")
    if isinstance(attr, str):
        try:
            for address, used in json.loads(attr).items():
                memory.setdefault(str(address), (float(used), None))
        except (ValueError, AttributeError, TypeError):
            pass
    return memory


def worker_columns(
    trace: xr.Dataset, parts: xr.Dataset, memory: Memory | None = None
) -> dict[str, list]:
    """The worker table: one row per worker (see :func:`daskgd.observe.summary.worker_rows`)."""
    memory = {**trace_memory(trace), **(memory or {})}
    rows = worker_rows(trace, parts)
    nan = float("nan")

    def number(value: Any) -> float:
        return nan if value is None else float(value)

    def memory_text(address: str) -> str:
        used, limit = memory.get(address, (None, None))
        if used is None and limit is None:
            return "unknown"
        used_text = format_bytes(used) if used is not None else "?"
        return used_text + (f" / {format_bytes(limit)}" if limit else "")

    return {
        "address": [r["address"] for r in rows],
        "name": [r["name"] for r in rows],
        "chunks": [number(r["chunks"]) for r in rows],
        "rows": [number(r["rows"]) for r in rows],
        "compute_seconds": [number(r["worker_compute_seconds"]) for r in rows],
        "straggler_count": [number(r["straggler_count"]) for r in rows],
        "slowest_count": [number(r["slowest_count"]) for r in rows],
        "memory": [memory_text(r["address"]) for r in rows],
    }


def _facts(trace: xr.Dataset, parts: xr.Dataset) -> list[str]:
    attrs = trace.attrs
    facts = [f"{max(trace.sizes.get('iteration', 0) - 1, 0)} iterations"]
    if "n_samples" in attrs and "n_features" in attrs:
        facts.append(f"{int(attrs['n_samples']):,} x {int(attrs['n_features'])}")
    n_workers = trace.sizes.get("worker") or attrs.get("n_workers")
    if n_workers:
        facts.append(f"{n_workers} workers")
    wall = parts.attrs.get("run_wall_seconds", np.nan)
    if np.isfinite(wall):
        facts.append(f"{wall:.2f} s")
    return facts


def header_html(trace: xr.Dataset, parts: xr.Dataset) -> str:
    """Title line, the run's configuration, its time split and what is pending, as HTML."""
    keys = ("model", "solver", "strategy")
    what = " ".join(str(trace.attrs[k]) for k in keys if k in trace.attrs)
    shares = []
    if parts.attrs.get("measured_iterations", 0):
        for part in PARTS:
            share = float(parts["run_share"].sel(part=part))
            shares.append(
                f'<span style="color:{PART_COLORS[part]};font-weight:bold">&#9632;</span> '
                f"{part} {share:.1%}"
            )
    else:
        shares.append("no per-worker measurements yet")
    pending = pending_span(trace)
    if pending is not None:
        first, last = pending
        which = f"iteration {first}" if first == last else f"iterations {first}-{last}"
        shares.append(f"<i>{which}: per-worker measurements pending</i>")
    title = html.escape(f"daskgd {what}".strip())
    return (
        f'<div style="font-family:sans-serif"><b style="font-size:1.2em">{title}</b> '
        f"&nbsp; {html.escape(', '.join(_facts(trace, parts)))}<br>"
        f"time: {' &nbsp; '.join(shares)}</div>"
    )


def fingerprint(trace: xr.Dataset | None) -> tuple:
    """A cheap summary that changes when a growing trace gets new data."""
    if trace is None:
        return ()
    last = float(trace["elapsed_seconds"].values[-1]) if trace.sizes.get("iteration") else 0.0
    measured = (
        float(np.nansum(trace["compute_seconds"].values)) if "compute_seconds" in trace else 0
    )
    live = int(trace.attrs.get("daskgd_live", 0))
    return (tuple(sorted(trace.sizes.items())), last, measured, len(trace.data_vars), live)
