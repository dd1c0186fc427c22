"""Several traces side by side: the per-iteration columns and the summary table.

Everything here reads traces (``docs/trace.md``) and returns numpy arrays or an
``xarray.Dataset``; the figures of :mod:`daskgd.viz.comparison` draw them, and
:func:`daskgd.lab.compare.compare` produces the traces. The optional variables of the
newer strategies are used when a trace has them and ignored otherwise:
``staleness`` (iteration, worker; NaN where that worker's gradient was not applied),
``consensus_distance`` (iteration) and ``communicated`` (iteration, bool).

Definitions
-----------
busiest node
    per iteration, the largest ``bytes_sent + bytes_received`` of one worker: the
    figure where a central server (all m workers talk to it) and peer-to-peer (each
    worker talks to its neighbours) differ most. An iteration is what the strategy
    makes it (``docs/trace.md``: one round, or one asynchronous server update), so the
    summary also gives the busiest worker's share of all the workers' bytes, which does
    not depend on it.
client bytes
    per iteration, ``bytes_broadcast + bytes_reduce``: w sent by the client and sums
    sent back to it; for ``mapreduce`` ``bytes_reduce`` also counts the reduction
    tree's worker-to-worker sums, so this is an upper bound of the client's traffic.
rounds
    communication rounds: the updates after iteration 0, or, with ``communicated``
    (local SGD), the updates that communicated.
target loss
    by default the largest of the runs' best losses, so that every run reaches it
    (the slowest run to converge sets the bar); runs are then compared on the time,
    bytes and rounds they took to get there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from daskgd.observe.summary import format_bytes, has_workers

__all__ = [
    "busiest_node_bytes",
    "busiest_share",
    "client_bytes",
    "cumulative_bytes",
    "cumulative_rounds",
    "default_target_loss",
    "format_comparison",
    "reached_index",
    "staleness_values",
    "summary_dataset",
]


def _iteration_values(trace: xr.Dataset, name: str) -> np.ndarray:
    if name in trace.data_vars:
        return trace[name].values.astype(np.float64)
    return np.full(trace.sizes.get("iteration", 0), np.nan)


def busiest_node_bytes(trace: xr.Dataset) -> np.ndarray:
    """Per iteration: max over workers of bytes_sent + bytes_received (NaN: unmeasured)."""
    n = trace.sizes.get("iteration", 0)
    if not has_workers(trace) or "bytes_sent" not in trace or "bytes_received" not in trace:
        return np.full(n, np.nan)
    moved = (trace["bytes_sent"] + trace["bytes_received"]).transpose("iteration", "worker")
    values = moved.values.astype(np.float64)
    measured = np.isfinite(values).any(axis=1)
    busiest = np.nanmax(np.where(np.isfinite(values), values, -np.inf), axis=1)
    return np.where(measured, busiest, np.nan)


def busiest_worker(trace: xr.Dataset) -> str:
    """The worker that moved the most bytes over the run ('' when unmeasured)."""
    if not has_workers(trace) or "bytes_sent" not in trace or "bytes_received" not in trace:
        return ""
    totals = (trace["bytes_sent"] + trace["bytes_received"]).sum("iteration", skipna=True)
    if not np.isfinite(totals.values).any() or float(totals.max()) <= 0:
        return ""
    return str(trace["worker"].values[int(np.nanargmax(totals.values))])


def busiest_share(trace: xr.Dataset) -> float:
    """The busiest worker's bytes (sent + received, whole run) over all workers' bytes.

    Independent of what one iteration is (a round, or one asynchronous update): 1/m when
    every worker moves the same (ring, direct, gossip), about 1/2 when one worker is in
    every message (a parameter server on a worker). NaN when unmeasured.
    """
    if not has_workers(trace) or "bytes_sent" not in trace or "bytes_received" not in trace:
        return float("nan")
    per_worker = (trace["bytes_sent"] + trace["bytes_received"]).sum("iteration", skipna=True)
    total = float(per_worker.sum())
    return float(per_worker.max()) / total if total > 0 else float("nan")


def client_bytes(trace: xr.Dataset) -> np.ndarray:
    """Per iteration: bytes_broadcast + bytes_reduce (an upper bound for mapreduce)."""
    broadcast = _iteration_values(trace, "bytes_broadcast")
    reduce = _iteration_values(trace, "bytes_reduce")
    both = np.nan_to_num(broadcast) + np.nan_to_num(reduce)
    return np.where(np.isfinite(broadcast) | np.isfinite(reduce), both, np.nan)


def cumulative_bytes(trace: xr.Dataset) -> np.ndarray:
    """Running total of bytes_total; an unmeasured iteration adds 0, all NaN if none is."""
    total = _iteration_values(trace, "bytes_total")
    if not np.isfinite(total).any():
        return np.full(total.shape, np.nan)
    return np.cumsum(np.nan_to_num(total))


def cumulative_rounds(trace: xr.Dataset) -> np.ndarray:
    """Communication rounds done by each iteration (iteration 0, the start, is 0)."""
    n = trace.sizes.get("iteration", 0)
    if "communicated" in trace.data_vars:
        communicated = trace["communicated"].fillna(False).values.astype(bool).copy()
        if n:
            communicated[0] = False
        return np.cumsum(communicated)
    return np.maximum(np.arange(n), 0)


def staleness_values(trace: xr.Dataset) -> np.ndarray:
    """Staleness of every applied gradient (finite values), empty without the variable."""
    if "staleness" not in trace.data_vars:
        return np.array([], dtype=np.float64)
    values = trace["staleness"].values.astype(np.float64).ravel()
    return values[np.isfinite(values)]


def _losses(trace: xr.Dataset) -> np.ndarray:
    return _iteration_values(trace, "loss")


def default_target_loss(traces: Mapping[str, xr.Dataset]) -> float:
    """The largest of the runs' best (finite) losses: every run reaches it."""
    best = [np.nanmin(loss) for loss in map(_losses, traces.values()) if np.isfinite(loss).any()]
    return float(max(best)) if best else float("nan")


def reached_index(trace: xr.Dataset, target: float) -> int | None:
    """Index of the first iteration whose loss is <= target (None: never)."""
    loss = _losses(trace)
    # A relative slack: the target is often another run's best loss, met to rounding.
    hits = np.flatnonzero(loss <= target + 1e-12 * abs(target))
    return int(hits[0]) if hits.size else None


def _at(values: np.ndarray, index: int | None) -> float:
    return float(values[index]) if index is not None and index < values.size else float("nan")


def _median_after_start(values: np.ndarray) -> float:
    rest = values[1:] if values.size > 1 else values
    rest = rest[np.isfinite(rest)]
    return float(np.median(rest)) if rest.size else float("nan")


def _run_row(trace: xr.Dataset, target: float) -> dict[str, Any]:
    elapsed = _iteration_values(trace, "elapsed_seconds")
    rounds = cumulative_rounds(trace)
    cumulative = cumulative_bytes(trace)
    busiest = busiest_node_bytes(trace)
    reached = reached_index(trace, target)
    staleness = staleness_values(trace)
    consensus = _iteration_values(trace, "consensus_distance")
    loss = _losses(trace)
    return {
        "strategy": str(trace.attrs.get("strategy", "")),
        "iterations": max(trace.sizes.get("iteration", 0) - 1, 0),
        "rounds": int(rounds[-1]) if rounds.size else 0,
        "final_loss": float(loss[-1]) if loss.size else float("nan"),
        "seconds": float(elapsed[-1]) if elapsed.size else float("nan"),
        "bytes": float(cumulative[-1]) if cumulative.size else float("nan"),
        "busiest_bytes_per_round": _median_after_start(busiest),
        "busiest_worker": busiest_worker(trace),
        "busiest_share": busiest_share(trace),
        "client_bytes_per_round": _median_after_start(client_bytes(trace)),
        "seconds_to_target": _at(elapsed, reached),
        "bytes_to_target": _at(cumulative, reached),
        "rounds_to_target": _at(rounds.astype(np.float64), reached),
        "max_staleness": float(staleness.max()) if staleness.size else float("nan"),
        "final_consensus_distance": float(consensus[-1]) if consensus.size else float("nan"),
    }


#: The summary's variables: units and meaning.
SUMMARY_VARIABLES = {
    "strategy": ("", "registered name of the strategy"),
    "iterations": ("1", "updates after iteration 0"),
    "rounds": ("1", "communication rounds (local SGD: updates that communicated)"),
    "final_loss": ("1", "objective at the last iteration"),
    "seconds": ("s", "elapsed wall time of the fit's iterations"),
    "bytes": ("bytes", "all bytes moved (sum of bytes_total)"),
    "busiest_bytes_per_round": ("bytes", "median over iterations of the busiest worker's bytes"),
    "busiest_worker": ("", "the worker that moved the most bytes"),
    "busiest_share": ("1", "its share of all the workers' bytes (sent + received)"),
    "client_bytes_per_round": ("bytes", "median of bytes_broadcast + bytes_reduce"),
    "seconds_to_target": ("s", "elapsed time when the loss first reached the target"),
    "bytes_to_target": ("bytes", "bytes moved by then"),
    "rounds_to_target": ("1", "communication rounds by then"),
    "max_staleness": ("1", "largest staleness of an applied gradient"),
    "final_consensus_distance": ("1", "consensus distance at the last iteration"),
}


def summary_dataset(traces: Mapping[str, xr.Dataset], target_loss: float | None = None):
    """One row per run (dim ``run``, the labels); ``attrs["target_loss"]``.

    ``target_loss`` defaults to :func:`default_target_loss`.
    """
    if not traces:
        raise ValueError("no traces to compare")
    target = default_target_loss(traces) if target_loss is None else float(target_loss)
    rows = [_run_row(trace, target) for trace in traces.values()]
    data = {}
    for name, (units, meaning) in SUMMARY_VARIABLES.items():
        values = [row[name] for row in rows]
        data[name] = xr.DataArray(
            np.array(values, dtype=object if isinstance(values[0], str) else None),
            dims="run",
            attrs={"units": units, "long_name": meaning},
        )
    summary = xr.Dataset(data, coords={"run": list(traces)})
    summary.attrs["target_loss"] = target
    summary.attrs["target_rule"] = "given" if target_loss is not None else "largest best loss"
    return summary


def _seconds(value: float) -> str:
    return "not reached" if not np.isfinite(value) else f"{value:.3f} s"


def _bytes(value: float) -> str:
    return "-" if not np.isfinite(value) else format_bytes(value)


def _share(value: float) -> str:
    return "-" if not np.isfinite(value) else f"{value:.0%}"


def summary_cells(summary: xr.Dataset) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary table, shared by the HTML and the text forms."""
    head = ["run", "strategy", "rounds", "final loss", "time to target", "bytes to target",
            "rounds to target", "bytes in all", "busiest node / round", "busiest share",
            "client / round", "max staleness"]  # fmt: skip
    rows = []
    for run in summary["run"].values:
        r = summary.sel(run=run)
        to_rounds = float(r.rounds_to_target)
        staleness = float(r.max_staleness)
        rows.append([
            str(run), str(r.strategy.values), str(int(r.rounds)), f"{float(r.final_loss):.8g}",
            _seconds(float(r.seconds_to_target)), _bytes(float(r.bytes_to_target)),
            str(int(to_rounds)) if np.isfinite(to_rounds) else "-", _bytes(float(r.bytes)),
            _bytes(float(r.busiest_bytes_per_round)), _share(float(r.busiest_share)),
            _bytes(float(r.client_bytes_per_round)),
            f"{staleness:g}" if np.isfinite(staleness) else "-",
        ])  # fmt: skip
    return head, rows


def format_comparison(summary: xr.Dataset) -> str:
    """The summary as a plain-text table, the target loss on the first line."""
    head, rows = summary_cells(summary)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = [f"target loss {summary.attrs['target_loss']:.8g} ({summary.attrs['target_rule']})"]
    lines.append("  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)))
    for cells in rows:
        lines.append("  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)))
    return "\n".join(lines)
