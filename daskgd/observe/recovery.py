"""What failures cost a fit: per-iteration recovery variables of the trace.

A worker killed during a fit is usually absorbed by ``distributed`` underneath: its chunks
are recomputed from their graph and the evaluation waits a little longer. Sometimes an
evaluation fails and the strategy sends w again (``attempts``). Both leave marks here,
from two sources:

- the strategy's session, on the client: seconds spent in failed attempts
  (``retry_seconds``) and, with ``topk`` transfers, error-feedback residuals lost with a
  worker (``residual_resets``);
- the instrumentation's scheduler plugin: workers that left the cluster
  (``workers_lost``), placed chunks computed again (``chunks_recomputed``) and the compute
  time of those chunks and of the inputs rebuilt for them (``recompute_seconds``).

Events are attributed to the evaluation in flight (the latest one submitted when the
scheduler saw the event) and through it to its iteration; a failed attempt counts with
the iteration whose evaluation then succeeded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["RECOVERY_VARIABLES", "recovery_dataset"]

RECOVERY_VARIABLES = {
    "retry_seconds": ("time in evaluation attempts that failed and were sent again", "s"),
    "residual_resets": ("top-k error-feedback residuals lost with a worker, restarted at 0", "1"),
    "workers_lost": ("workers that left the cluster during the iteration", "1"),
    "chunks_recomputed": ("placed data chunks computed again after they were lost", "1"),
    "recompute_seconds": ("compute time of the recomputed chunks and their inputs", "s"),
}

#: Variables that only the instrumentation's scheduler plugin can measure.
_MEASURED = ("workers_lost", "chunks_recomputed", "recompute_seconds")


def recovery_dataset(
    records: Sequence[Any],
    retries: Mapping[str, tuple] | None = None,
    residual_resets: Mapping[str, int] | None = None,
    failures: Sequence[tuple] | None = None,
) -> xr.Dataset:
    """Per-iteration recovery variables of ``records`` (the engine's iteration records).

    Parameters
    ----------
    retries : {key_prefix: (seconds, error names, failed key prefixes)}
        From :attr:`daskgd.strategies.mapreduce.Session.retries`.
    residual_resets : {key_prefix: count}
        From :attr:`daskgd.strategies.mapreduce.Session.residual_resets`.
    failures : list of (kind, key_prefix, detail, seconds, time), optional
        The instrumentation's events; without them (no instrumentation) the variables
        only it measures are left out.
    """
    retries, residual_resets = retries or {}, residual_resets or {}
    row_of = {prefix: i for i, record in enumerate(records) for prefix in record.key_prefixes}
    for prefix, (_, _, failed_prefixes) in retries.items():
        for failed in failed_prefixes:  # events under a failed attempt: its iteration's
            if prefix in row_of:
                row_of[failed] = row_of[prefix]
    n = len(records)
    values = {name: np.zeros(n) for name in RECOVERY_VARIABLES}
    for prefix, (seconds, _, _) in retries.items():
        if prefix in row_of:
            values["retry_seconds"][row_of[prefix]] += seconds
    for prefix, count in residual_resets.items():
        if prefix in row_of:
            values["residual_resets"][row_of[prefix]] += count
    for kind, prefix, _, seconds, _ in failures or ():
        # A worker lost between two fits' evaluations belongs to no iteration; one lost
        # after the last evaluation was submitted counts with the last iteration.
        i = row_of.get(prefix)
        if i is None:
            continue
        if kind == "worker_lost":
            values["workers_lost"][i] += 1
        else:
            values["chunks_recomputed"][i] += kind == "chunk_recomputed"
            values["recompute_seconds"][i] += seconds
    names = [name for name in RECOVERY_VARIABLES if failures is not None or name not in _MEASURED]
    data_vars = {
        name: (
            ("iteration",),
            values[name].astype(np.int64) if RECOVERY_VARIABLES[name][1] == "1" else values[name],
            {"long_name": RECOVERY_VARIABLES[name][0], "units": RECOVERY_VARIABLES[name][1]},
        )
        for name in names
    }
    iterations = np.array([record.iteration for record in records], dtype=np.int64)
    return xr.Dataset(data_vars, coords={"iteration": iterations})


def recovery_lines(trace: xr.Dataset) -> list[str]:
    """Plain-text lines on what failures cost the fit; none for an undisturbed fit."""
    parts = []

    def iterations(name: str) -> str:
        hit = trace.iteration.values[trace[name].values > 0].tolist()
        shown = ", ".join(map(str, hit[:5])) + (", ..." if len(hit) > 5 else "")
        return f"iteration{'s' if len(hit) > 1 else ''} {shown}"

    def total(name: str) -> float:
        return float(trace[name].sum()) if name in trace.data_vars else 0.0

    if total("workers_lost"):
        n = int(total("workers_lost"))
        parts.append(f"{n} worker{'s' * (n > 1)} lost ({iterations('workers_lost')})")
    if total("chunks_recomputed") or total("recompute_seconds"):
        parts.append(
            f"{int(total('chunks_recomputed'))} chunks recomputed from their graph "
            f"({total('recompute_seconds'):.3f} s of compute)"
        )
    if "attempts" in trace.data_vars and "n_evaluations" in trace.data_vars:
        again = int((trace.attempts - trace.n_evaluations).sum())
        if again > 0:
            parts.append(
                f"{again} evaluation attempt{'s' * (again > 1)} failed and sent again "
                f"({total('retry_seconds'):.3f} s lost)"
            )
    if total("residual_resets"):
        parts.append(
            f"{int(total('residual_resets'))} top-k residuals lost and restarted from zero "
            f"({iterations('residual_resets')}): the coefficients differ from an "
            "undisturbed fit's"
        )
    return [f"failures: {'; '.join(parts)}"] if parts else []
