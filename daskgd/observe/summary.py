"""Where the time went: compute, communication, synchronisation and overhead, from a trace.

The lecture's model of one synchronous iteration is

    time = computation on the workers + communication + synchronisation

and :func:`split` measures those parts from a trace (see ``docs/trace.md``), plus a
fourth the model leaves out: the orchestration around the workers' work. Per
iteration, seen from the **average worker**:

- compute: the mean over workers of ``compute_seconds``;
- communication: the mean over workers of ``communication_seconds``;
- sync: the mean over workers of ``sync_seconds``, waiting for the slowest worker
  (its compute minus this worker's); 0 with one worker;
- overhead: the rest of the iteration's wall time on the client, ``wall_seconds``:
  the worker idle for other reasons than a slower peer, the scheduler's dispatch, the
  client's graph submission and update.

The four parts add up to ``wall_seconds``, so their shares add up to 1 and the run's
totals add up to the fit's wall time. Averaging over workers, rather than following
the slowest worker (the critical path), is what makes a straggler visible as sync:
the slowest worker never waits, everyone else waits for it. When a worker reports
more busy time than the iteration lasted (clocks of different processes, overlapping
measurements), compute, communication and sync are scaled down to fit and overhead is
0. A trace without ``sync_seconds`` (older traces) gets it from ``compute_seconds``
and ``wait_seconds`` by the same rule (:func:`daskgd.observe.stragglers.sync_and_overhead`).

:func:`format_summary` turns the same figures into the plain-text table printed at
the end of ``daskgd demo`` and ``daskgd run``. Both work on traces without a
``worker`` dimension: then only the wall time and the bytes that were recorded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from daskgd.observe.recovery import recovery_lines
from daskgd.observe.stragglers import sync_and_overhead

#: The parts of an iteration, in the order they are stacked and printed.
PARTS = ("compute", "communication", "sync", "overhead")
#: What each part means, for legends and tooltips.
PART_LABELS = {
    "compute": "compute",
    "communication": "communication",
    "sync": "sync (waiting for the slowest worker)",
    "overhead": "overhead (scheduler, client)",
}

_BYTES = ("bytes_broadcast", "bytes_reduce", "bytes_total")


def has_workers(trace: xr.Dataset) -> bool:
    """Whether the trace holds per-worker measurements (a non-empty ``worker`` dim)."""
    return trace.sizes.get("worker", 0) > 0


def _variable(trace: xr.Dataset, name: str) -> xr.DataArray | None:
    return trace[name].astype(np.float64) if name in trace.data_vars else None


def _nan(trace: xr.Dataset) -> xr.DataArray:
    iteration = trace["iteration"]
    return xr.DataArray(np.full(iteration.size, np.nan), coords={"iteration": iteration})


def _worker_mean(trace: xr.Dataset, name: str) -> xr.DataArray:
    values = _variable(trace, name)
    if values is None or not has_workers(trace):
        return _nan(trace)
    count = values.notnull().sum("worker")
    return values.sum("worker", skipna=True).where(count > 0) / count.where(count > 0)


def _sync_mean(trace: xr.Dataset) -> xr.DataArray:
    """Mean over workers of ``sync_seconds``, derived for traces that lack it."""
    if "sync_seconds" in trace.data_vars or not has_workers(trace):
        return _worker_mean(trace, "sync_seconds")
    compute, wait = _variable(trace, "compute_seconds"), _variable(trace, "wait_seconds")
    if compute is None or wait is None:
        return _nan(trace)
    active = trace["n_tasks"] > 0 if "n_tasks" in trace.data_vars else compute.notnull()
    sync, _ = sync_and_overhead(compute.values, wait.values, active.values)
    derived = trace.assign(sync_seconds=(compute.dims, sync))
    return _worker_mean(derived, "sync_seconds")


def _split_seconds(trace: xr.Dataset) -> xr.DataArray:
    """(iteration, part) seconds; NaN for iterations without worker measurements."""
    wall = _variable(trace, "wall_seconds")
    if wall is None:
        wall = _nan(trace)
    compute = _worker_mean(trace, "compute_seconds")
    communication = _worker_mean(trace, "communication_seconds")
    sync = _sync_mean(trace).fillna(0.0)
    busy = compute + communication + sync
    scale = xr.where(busy > wall, wall / busy.where(busy > 0), 1.0)
    compute, communication, sync = compute * scale, communication * scale, sync * scale
    overhead = wall - compute - communication - sync
    seconds = xr.concat([compute, communication, sync, overhead], dim="part")
    seconds = seconds.assign_coords(part=list(PARTS)).transpose("iteration", "part")
    measured = wall.notnull() & compute.notnull() & communication.notnull()
    return seconds.where(measured)


def _bytes(trace: xr.Dataset) -> dict[str, xr.DataArray]:
    found = {name: _variable(trace, name) for name in _BYTES}
    if found["bytes_total"] is None and found["bytes_broadcast"] is not None:
        if found["bytes_reduce"] is not None:
            found["bytes_total"] = found["bytes_broadcast"] + found["bytes_reduce"]
    out = {name: value for name, value in found.items() if value is not None}
    if "bytes_total" in out:
        out["bytes_cumulative"] = out["bytes_total"].fillna(0).cumsum("iteration")
    return out


def _worker_variables(trace: xr.Dataset) -> dict[str, xr.DataArray]:
    if not has_workers(trace):
        return {}
    out = {}
    for part in (*PARTS, "wait"):
        values = _variable(trace, f"{part}_seconds")
        if values is not None:
            out[f"worker_{part}_seconds"] = values.sum("iteration", skipna=True, min_count=1)
    if "straggler" in trace.data_vars:
        out["straggler_count"] = trace["straggler"].fillna(False).astype(bool).sum("iteration")
    compute = _variable(trace, "compute_seconds")
    if compute is not None:
        # The worker with the most compute in each iteration: the one the others wait for.
        measured = compute.notnull().any("worker")
        slowest = compute.fillna(-np.inf).argmax("worker").where(measured)
        counts = [int((slowest == i).sum()) for i in range(trace.sizes["worker"])]
        out["slowest_count"] = xr.DataArray(counts, dims="worker")
    return out


def split(trace: xr.Dataset) -> xr.Dataset:
    """Split a trace's time into compute / communication / sync / overhead; count stragglers.

    Parameters
    ----------
    trace : xarray.Dataset
        A trace in the format of ``docs/trace.md`` (``iteration`` [x ``worker``]).

    Returns
    -------
    xarray.Dataset
        With a ``part`` dimension (``compute``, ``communication``, ``sync``,
        ``overhead``):

        - ``seconds`` (iteration, part) and ``share`` (iteration, part): each
          iteration's split; shares add up to 1. NaN where no worker measured.
        - ``run_seconds`` (part) and ``run_share`` (part): the same over all measured
          iterations; ``run_share`` adds up to 1.
        - ``wall_seconds`` (iteration), and ``bytes_broadcast``, ``bytes_reduce``,
          ``bytes_total``, ``bytes_cumulative`` (iteration) when the trace has them.
        - per worker, when the trace has a ``worker`` dimension:
          ``worker_compute_seconds``, ``worker_communication_seconds``,
          ``worker_sync_seconds``, ``worker_overhead_seconds``, ``worker_wait_seconds``
          (totals over the run, as far as the trace has them), ``straggler_count``
          (iterations flagged as straggler) and ``slowest_count`` (iterations in which
          the worker computed longest).

        ``attrs`` give ``measured_iterations``, ``run_wall_seconds`` (all
        iterations) and ``method`` (how the split is made).
    """
    seconds = _split_seconds(trace)
    wall = seconds.sum("part", min_count=1)
    share = seconds / wall.where(wall > 0)
    measured = seconds.notnull().all("part")
    run_seconds = seconds.where(measured).sum("iteration", min_count=1)
    run_total = float(run_seconds.sum("part", min_count=1))
    run_share = run_seconds / run_total if run_total > 0 else run_seconds * np.nan
    wall_seconds = _variable(trace, "wall_seconds")
    data = {
        "seconds": seconds.assign_attrs(units="s", long_name="time per part of the iteration"),
        "share": share.assign_attrs(units="1", long_name="share of the iteration's wall time"),
        "run_seconds": run_seconds.assign_attrs(units="s", long_name="total over the run"),
        "run_share": run_share.assign_attrs(units="1", long_name="share of the run"),
    }
    if wall_seconds is not None:
        data["wall_seconds"] = wall_seconds.assign_attrs(units="s")
    for name, values in {**_bytes(trace), **_worker_variables(trace)}.items():
        units = "bytes" if name.startswith("bytes") else "s" if "seconds" in name else "1"
        data[name] = values.assign_attrs(units=units)
    result = xr.Dataset(data)
    if "worker_name" in trace.coords and has_workers(trace):
        result = result.assign_coords(worker_name=trace["worker_name"])
    result.attrs.update(
        measured_iterations=int(measured.sum()),
        run_wall_seconds=float(wall_seconds.sum()) if wall_seconds is not None else np.nan,
        method="mean over workers; overhead = wall_seconds - compute - communication - sync",
    )
    return result


# ----------------------------------------------------------------------------------
# Plain-text summary
# ----------------------------------------------------------------------------------


def attr_list(trace: xr.Dataset, name: str) -> list:
    """A list-valued trace attribute (stored as JSON in netCDF), or [] when absent."""
    value = trace.attrs.get(name)
    if value is None:
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return []
    if isinstance(value, np.ndarray):
        value = value.tolist()
    return list(value) if isinstance(value, (list, tuple)) else []


def worker_holdings(trace: xr.Dataset) -> dict[str, tuple[int, int]]:
    """Chunks and rows held per worker address, from ``chunk_workers``/``chunk_rows``."""
    workers, rows = attr_list(trace, "chunk_workers"), attr_list(trace, "chunk_rows")
    holdings: dict[str, tuple[int, int]] = {}
    for index, address in enumerate(workers):
        chunks, n_rows = holdings.get(str(address), (0, 0))
        extra = int(rows[index]) if index < len(rows) else 0
        holdings[str(address)] = (chunks + 1, n_rows + extra)
    return holdings


def format_bytes(n: float) -> str:
    """1234567 -> '1.23 MB' (decimal units, as network figures are usually given)."""
    if not np.isfinite(n):
        return "-"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} GB"  # pragma: no cover - loop always returns


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> list[str]:
    """Fixed-width columns: the first ``left`` columns left-aligned, the rest right."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = []
    for cells in (headers, *rows):
        parts = [
            str(cell).ljust(width) if i < left else str(cell).rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
    return lines


def _header(trace: xr.Dataset, parts: xr.Dataset) -> str:
    n_iterations = max(trace.sizes.get("iteration", 0) - 1, 0)
    wall = parts.attrs["run_wall_seconds"]
    n_workers = trace.sizes.get("worker") or trace.attrs.get("n_workers") or "?"
    bits = [f"{n_iterations} iterations", f"{n_workers} workers"]
    if np.isfinite(wall):
        bits.append(f"{wall:.2f} s")
    solver = trace.attrs.get("solver")
    return "daskgd " + (f"{solver}: " if solver else "") + ", ".join(bits)


def _split_lines(parts: xr.Dataset) -> list[str]:
    n = parts.attrs["measured_iterations"]
    if n == 0:
        return ["time split: no per-worker measurements in this trace"]
    rows = []
    for part in PARTS:
        seconds = float(parts.run_seconds.sel(part=part))
        share = float(parts.run_share.sel(part=part))
        rows.append(
            [PART_LABELS[part], f"{seconds:.3f}", f"{share:.1%}", f"{seconds / n * 1e3:.2f}"]
        )
    total = float(parts.run_seconds.sum())
    rows.append(["total", f"{total:.3f}", "100.0%", f"{total / n * 1e3:.2f}"])
    heading = f"where the time went ({n} measured iterations, mean over workers)"
    return [heading, *_table(["part", "seconds", "share", "ms/iteration"], rows)]


def _bytes_lines(parts: xr.Dataset) -> list[str]:
    if "bytes_total" not in parts:
        return ["bytes: not recorded in this trace"]
    if parts.sizes["iteration"] == 0:
        return ["bytes: no iteration yet"]
    total = float(parts.bytes_total.sum())
    per = float(parts.bytes_total.mean())
    line = f"bytes: {format_bytes(total)} in all, {format_bytes(per)} per iteration"
    if "bytes_broadcast" in parts and "bytes_reduce" in parts:
        broadcast, reduce = float(parts.bytes_broadcast.mean()), float(parts.bytes_reduce.mean())
        line += f" ({format_bytes(broadcast)} broadcast + {format_bytes(reduce)} reduce"
        other = per - broadcast - reduce
        if other > 0.01 * per:
            line += f" + {format_bytes(other)} other, e.g. data chunks moved"
        line += ")"
    return [line]


def worker_rows(trace: xr.Dataset, parts: xr.Dataset | None = None) -> list[dict[str, Any]]:
    """One dict per worker: address, name, chunks, rows, compute, sync, stragglers, slowest.

    Workers come from the trace's ``worker`` dimension, then from ``chunk_workers``.
    Missing figures are None.
    """
    parts = split(trace) if parts is None else parts
    holdings = worker_holdings(trace)
    addresses = [str(a) for a in trace["worker"].values] if has_workers(trace) else []
    addresses += [a for a in holdings if a not in addresses]
    names = {}
    if "worker_name" in trace.coords and has_workers(trace):
        names = dict(zip(addresses, map(str, trace["worker_name"].values), strict=False))
    rows = []
    for index, address in enumerate(addresses):
        measured = has_workers(trace) and index < trace.sizes["worker"]
        row: dict[str, Any] = {
            "address": address,
            "name": names.get(address, ""),
            "chunks": holdings.get(address, (None, None))[0],
            "rows": holdings.get(address, (None, None))[1],
        }
        for key in (
            "worker_compute_seconds",
            "worker_sync_seconds",
            "straggler_count",
            "slowest_count",
        ):
            value = parts[key].values[index] if measured and key in parts else None
            row[key] = None if value is None or not np.isfinite(value) else value.item()
        rows.append(row)
    return rows


def _worker_lines(trace: xr.Dataset, parts: xr.Dataset) -> list[str]:
    rows = worker_rows(trace, parts)
    if not rows:
        return []

    def cell(value: Any, spec: str = "") -> str:
        return "-" if value is None else format(value, spec)

    table = [
        [
            row["address"],
            row["name"] or "-",
            cell(row["chunks"]),
            cell(row["rows"], ","),
            cell(row["worker_compute_seconds"], ".3f"),
            cell(row["worker_sync_seconds"], ".3f"),
            cell(row["straggler_count"]),
            cell(row["slowest_count"]),
        ]
        for row in rows
    ]
    headers = ["worker", "name", "chunks", "rows", "compute s", "sync s", "straggler", "slowest"]
    return _table(headers, table, left=2)


def format_summary(trace: xr.Dataset) -> str:
    """A plain-text, fixed-width summary of a trace: time split, bytes, workers, and what
    failures cost (:func:`daskgd.observe.recovery.recovery_lines`)."""
    parts = split(trace)
    sections = [[_header(trace, parts)], _split_lines(parts), _bytes_lines(parts)]
    workers = _worker_lines(trace, parts)
    if workers:
        sections.append(workers)
    failures = recovery_lines(trace)
    if failures:
        sections.append(failures)
    return "\n\n".join("\n".join(lines) for lines in sections)
