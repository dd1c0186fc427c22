"""Speedup lab: the same fit on 1, 2, 4, ... workers, and where its time goes.

The lecture defines speedup as the time on one node over the time on m nodes; with
computation alone it would be m, communication and synchronisation make it smaller.
:func:`scaling` measures it: for each worker count m it starts a
:class:`distributed.LocalCluster` of m worker processes (one thread each), or uses the
first m workers of an existing cluster (``client=``), generates the same data on those
workers (same seed, same chunks), runs the same fit, and records

- ``iteration_seconds``: T(m), the median wall time of one iteration (the initial
  evaluation, iteration 0, is left out: it also pays for warming up);
- ``total_seconds``: the fit's wall time summed over its iterations;
- ``speedup`` = T(m0) / T(m) * m0 and ``efficiency`` = speedup / m, with m0 the smallest
  worker count measured (1 normally; with m0 > 1 perfect scaling up to m0 is assumed
  and ``attrs["baseline_workers"]`` says so);
- ``seconds`` (workers, part): the median per-iteration split into compute,
  communication, sync (waiting for the slowest worker) and overhead (the scheduler's
  and the client's orchestration) (:func:`daskgd.observe.summary.split`), and
  ``share`` of each;
- the figures the cost model (:mod:`daskgd.lab.costmodel`) is fitted to: rows on the
  busiest worker, bytes per iteration, bytes of one partial gradient, and the mean and
  spread (slowest minus mean) of the workers' compute time per iteration.

Medians, not means: a 2-core machine running 4 or 8 worker processes has noisy
iterations, and one descheduled process should not decide T(m).
"""

from __future__ import annotations

import html
import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from daskgd.data import waits
from daskgd.observe.summary import PARTS, split

__all__ = ["scaling", "scaling_document", "write_scaling_report"]


def _check_worker_counts(worker_counts: Any) -> list[int]:
    if isinstance(worker_counts, (str, bytes)) or not isinstance(worker_counts, Sequence):
        raise TypeError(f"worker_counts must be a sequence of integers, got {worker_counts!r}")
    if len(worker_counts) == 0:
        raise ValueError("worker_counts is empty: give at least one worker count, e.g. (1, 2)")
    counts = []
    for count in worker_counts:
        if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 1:
            raise ValueError(f"worker counts must be integers >= 1, got {count!r}")
        counts.append(int(count))
    if len(set(counts)) != len(counts):
        raise ValueError(f"worker counts must be distinct, got {list(worker_counts)!r}")
    return sorted(counts)


def _default_chunk_rows(n_samples: int, counts: list[int]) -> int:
    # A chunk count every worker count divides (when small enough) gives every worker
    # the same rows, so only m changes between runs, not the balance.
    n_chunks = math.lcm(*counts)
    if n_chunks > 64:
        n_chunks = max(counts)
    return max(1, math.ceil(n_samples / n_chunks))


def _one_run(
    n_workers: int,
    *,
    n_samples: int,
    n_features: int,
    chunks: int,
    random_state: int,
    estimator_options: dict,
    client: Any = None,
) -> xr.Dataset:
    """Fit on a fresh LocalCluster of ``n_workers`` processes, or on the first
    ``n_workers`` workers (sorted addresses) of ``client``'s cluster; return the trace."""
    if client is not None:
        workers = _cluster_workers(client)[:n_workers]
        return _fit(client, workers, n_samples, n_features, chunks, random_state, estimator_options)

    from distributed import Client

    from daskgd.cluster.local import make_local_cluster

    with (
        make_local_cluster(n_workers, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(n_workers)
        return _fit(client, None, n_samples, n_features, chunks, random_state, estimator_options)


def _cluster_workers(client: Any) -> list[str]:
    return sorted(waits.scheduler_workers(client, what="listing the workers"))


def _fit(client, workers, n_samples, n_features, chunks, random_state, estimator_options):
    from daskgd.data.synthetic import make_classification
    from daskgd.estimators.linear import ConvergenceWarning, LogisticRegression

    X, y = make_classification(n_samples, n_features, chunks=chunks, random_state=random_state)
    estimator = LogisticRegression(client=client, workers=workers, **estimator_options)
    with warnings.catch_warnings():
        # A fixed number of iterations is the point here, not convergence.
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator.fit(X, y)
    return estimator.trace_


def _rows_per_worker(trace: xr.Dataset) -> float:
    from daskgd.observe.summary import worker_holdings

    holdings = worker_holdings(trace)
    if holdings:
        return float(max(rows for _, rows in holdings.values()))
    return float(trace.attrs.get("n_samples", np.nan))


def _fan_in(trace: xr.Dataset, split_every: int | None) -> int:
    """The reduction's fan-in as the strategy resolved and recorded it for this run."""
    if "split_every" in trace.attrs:
        return int(trace.attrs["split_every"])
    return int(split_every) if split_every is not None else 2


def _partial_bytes(trace: xr.Dataset) -> float:
    """Bytes of one partial gradient: loss and rows (float64) and the encoded gradient."""
    from daskgd.runtime.codecs import get_codec, partial_nbytes

    n_params = int(trace.attrs.get("n_features", 0)) + 1
    return float(partial_nbytes(get_codec(trace.attrs.get("transfer_dtype")), n_params))


def _run_figures(trace: xr.Dataset, split_every: int | None = None) -> dict[str, Any]:
    """Per-run scalars (and the per-part split) from one trace."""
    steps = trace.isel(iteration=slice(1, None)) if trace.sizes["iteration"] > 1 else trace
    parts = split(steps)
    figures: dict[str, Any] = {
        "iteration_seconds": float(steps["wall_seconds"].median()),
        "total_seconds": float(steps["wall_seconds"].sum()),
        "n_iterations": int(steps.sizes["iteration"]),
        "final_loss": float(trace["loss"].values[-1]),
        "rows_per_worker": _rows_per_worker(trace),
        "partial_bytes": _partial_bytes(trace),
        "split_every": _fan_in(trace, split_every),
        "seconds": parts["seconds"].median("iteration").values,
    }
    figures["bytes_per_iteration"] = (
        float(steps["bytes_total"].median()) if "bytes_total" in steps else np.nan
    )
    if "compute_seconds" in steps and steps.sizes.get("worker", 0) > 0:
        compute = steps["compute_seconds"]
        figures["compute_seconds"] = float(compute.mean("worker").median())
        figures["compute_spread_seconds"] = float(
            (compute.max("worker") - compute.mean("worker")).median()
        )
        figures["communication_seconds"] = float(
            steps["communication_seconds"].mean("worker").median()
        )
    else:
        for name in ("compute_seconds", "compute_spread_seconds", "communication_seconds"):
            figures[name] = np.nan
    return figures


_UNITS = {
    "iteration_seconds": ("s", "T(m): median wall time of one iteration"),
    "total_seconds": ("s", "wall time of all iterations"),
    "n_iterations": ("1", "iterations measured"),
    "final_loss": ("1", "objective at the end of the fit"),
    "rows_per_worker": ("1", "rows held by the busiest worker"),
    "partial_bytes": ("bytes", "bytes of one partial gradient"),
    "split_every": ("1", "fan-in of the reduction tree"),
    "bytes_per_iteration": ("bytes", "median bytes moved per iteration"),
    "compute_seconds": ("s", "median over iterations of the mean worker compute"),
    "compute_spread_seconds": ("s", "median over iterations of slowest minus mean compute"),
    "communication_seconds": ("s", "median over iterations of the mean worker communication"),
}


def scaling_dataset(
    traces: Sequence[xr.Dataset], worker_counts: Sequence[int], split_every: int | None = None
) -> xr.Dataset:
    """The scaling Dataset (dim ``workers``) from one trace per worker count."""
    counts = _check_worker_counts(list(worker_counts))
    if len(traces) != len(counts):
        raise ValueError(f"{len(traces)} traces for {len(counts)} worker counts")
    order = np.argsort(list(worker_counts))
    rows = [_run_figures(traces[i], split_every) for i in order]
    data = {}
    for name, (units, long_name) in _UNITS.items():
        data[name] = xr.DataArray(
            [row[name] for row in rows],
            dims="workers",
            attrs={"units": units, "long_name": long_name},
        )
    seconds = np.array([row["seconds"] for row in rows])
    data["seconds"] = xr.DataArray(
        seconds,
        dims=("workers", "part"),
        attrs={"units": "s", "long_name": "median per-iteration time of each part"},
    )
    total = seconds.sum(axis=1, keepdims=True)
    data["share"] = xr.DataArray(
        seconds / np.where(total > 0, total, np.nan),
        dims=("workers", "part"),
        attrs={"units": "1", "long_name": "share of the iteration"},
    )
    result = xr.Dataset(data, coords={"workers": counts, "part": list(PARTS)})
    baseline = counts[0]
    t = result["iteration_seconds"]
    speedup = float(t.sel(workers=baseline)) / t * baseline
    result["speedup"] = speedup.assign_attrs(units="1", long_name="T(m0) / T(m) * m0")
    result["efficiency"] = (speedup / result["workers"]).assign_attrs(
        units="1", long_name="speedup / m"
    )
    result.attrs.update(baseline_workers=baseline, daskgd_scaling_version=1)
    for key in ("model", "solver", "n_samples", "n_features", "strategy", "transfer_dtype"):
        if key in traces[0].attrs:
            result.attrs[key] = traces[0].attrs[key]
    return result


def scaling(
    worker_counts: Sequence[int] = (1, 2),
    *,
    n_samples: int,
    n_features: int,
    solver: str = "gd",
    max_iter: int = 20,
    chunks: int | None = None,
    split_every: int | None = None,
    random_state: int = 0,
    estimator_options: Mapping[str, Any] | None = None,
    return_traces: bool = False,
    client: Any = None,
) -> xr.Dataset | tuple[xr.Dataset, list[xr.Dataset]]:
    """Run the same logistic-regression fit on each number of worker processes.

    Parameters
    ----------
    worker_counts : sequence of int, default (1, 2)
        Numbers of worker processes m, each >= 1 and distinct.
    n_samples, n_features : int
        Size of the generated problem (:func:`daskgd.data.synthetic.make_classification`).
    solver : str, default "gd"
        Solver of :class:`daskgd.LogisticRegression`.
    max_iter : int, default 20
        Iterations of every fit (tol is 0, so each run does exactly as many).
    chunks : int, optional
        Rows per chunk. Default: a chunk count that every worker count divides
        (their least common multiple, or the largest count when that exceeds 64).
    split_every : int, optional
        Fan-in of the reduction tree (the estimator's default when None).
    random_state : int, default 0
        Seed of the data; every run sees the same data.
    estimator_options : mapping, optional
        More parameters of :class:`daskgd.LogisticRegression` for every fit, e.g.
        ``{"emulation": Emulation(latency_seconds=0.005), "transfer_dtype": "float16"}``.
    return_traces : bool, default False
        Also return the traces of the fits, in the order of ``workers``.
    client : distributed.Client, optional
        An existing cluster to measure on instead of a fresh LocalCluster per m: the
        fit with m workers places the data on the first m of its workers (sorted
        addresses; see ``workers`` of :func:`daskgd.data.distribute`). The other
        workers stay idle but connected, and the cluster's workers may have any number
        of threads.

    Returns
    -------
    xarray.Dataset
        Dimension ``workers`` (and ``part`` for the split): ``iteration_seconds``,
        ``total_seconds``, ``speedup``, ``efficiency``, ``seconds``, ``share``,
        ``n_iterations``, ``final_loss``, ``rows_per_worker``, ``partial_bytes``,
        ``split_every``, ``bytes_per_iteration``, ``compute_seconds``, ``compute_spread_seconds``,
        ``communication_seconds``.
    """
    counts = _check_worker_counts(worker_counts)
    for name, value in (("n_samples", n_samples), ("n_features", n_features)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    from daskgd.optim.registry import OPTIMIZERS

    if solver not in OPTIMIZERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {sorted(OPTIMIZERS)}")
    if n_samples < max(counts):
        raise ValueError(f"n_samples={n_samples} is fewer than the {max(counts)} workers")
    if client is not None:
        available = len(_cluster_workers(client))
        if max(counts) > available:
            raise ValueError(
                f"worker count {max(counts)} exceeds the {available} workers of the cluster "
                f"at {client.scheduler.address}"
            )
    chunks = _default_chunk_rows(n_samples, counts) if chunks is None else chunks
    options = {"solver": solver, "max_iter": max_iter, "tol": 0.0, "split_every": split_every}
    extra = dict(estimator_options or {})
    fixed = sorted(set(extra) & {*options, "client", "workers"})
    if fixed:
        raise ValueError(f"estimator_options cannot set {fixed}: they are scaling() arguments")
    options.update(extra)
    traces = [
        _one_run(
            m,
            n_samples=n_samples,
            n_features=n_features,
            chunks=chunks,
            random_state=random_state,
            estimator_options=options,
            client=client,
        )
        for m in counts
    ]
    result = scaling_dataset(traces, counts, split_every)
    result.attrs["chunk_rows"] = int(chunks)
    return (result, traces) if return_traces else result


# ----------------------------------------------------------------------------------
# Plots and the HTML report
# ----------------------------------------------------------------------------------

_PART_COLORS = {
    "compute": "#1f77b4",
    "communication": "#ff7f0e",
    "sync": "#8c564b",
    "overhead": "#7f7f7f",
}


def problem_title(result: xr.Dataset) -> str:
    """The problem a scaling result measured: n x d, rows per chunk, model and solver."""
    attrs = result.attrs
    bits = []
    if "n_samples" in attrs and "n_features" in attrs:
        bits.append(f"n={int(attrs['n_samples']):,} x d={int(attrs['n_features'])}")
    if "chunk_rows" in attrs:
        bits.append(f"chunks of {int(attrs['chunk_rows']):,} rows")
    what = " ".join(str(attrs[k]) for k in ("model", "solver") if k in attrs)
    if what:
        bits.append(what)
    if "strategy" in attrs:
        bits.append(f"strategy {attrs['strategy']}")
    return ", ".join(bits)


def _worker_axis(fig: Any, counts: Any) -> None:
    """Ticks at the measured worker counts only: there is no 1.5 workers."""
    from bokeh.models import FixedTicker

    fig.xaxis.ticker = FixedTicker(ticks=[int(m) for m in counts])


def _legend_outside(fig: Any) -> None:
    """The legend to the right of the plot, where it covers no line or bar."""
    legend = fig.legend[0]
    fig.center = [item for item in fig.center if item is not legend]
    legend.label_text_font_size = "11px"
    fig.add_layout(legend, "right")


def speedup_figure(result: xr.Dataset, predicted: xr.Dataset | None = None) -> Any:
    """Measured speedup against m, with the ideal line (and model predictions if given)."""
    from bokeh.plotting import figure

    m = result["workers"].values
    fig = figure(
        title="Speedup T(1)/T(m)",
        x_axis_label="workers m",
        y_axis_label="speedup",
        width=560,
        height=320,
        name="daskgd-speedup",
    )
    fig.line(m, m, color="black", line_dash="dashed", legend_label="ideal (m)")
    fig.line(m, result["speedup"].values, color="#1f77b4", line_width=2, legend_label="measured")
    fig.scatter(m, result["speedup"].values, color="#1f77b4", size=8)
    if predicted is not None:
        for topology in predicted["topology"].values:
            sel = predicted["speedup"].sel(topology=topology)
            keep = sel["workers"].values <= max(m)
            fig.line(
                sel["workers"].values[keep], sel.values[keep], legend_label=f"model {topology}"
            )
    _worker_axis(fig, m)
    _legend_outside(fig)
    return fig


def split_figure(result: xr.Dataset) -> Any:
    """Stacked per-iteration compute / communication / sync / overhead (median) against m."""
    from bokeh.models import FactorRange
    from bokeh.plotting import figure

    labels = [str(m) for m in result["workers"].values]
    columns: dict[str, Any] = {"workers": labels}
    for part in PARTS:
        columns[part] = result["seconds"].sel(part=part).values * 1e3
    fig: Any = figure(
        x_range=FactorRange(factors=labels),
        title="Where one iteration's time goes",
        x_axis_label="workers m",
        y_axis_label="ms per iteration (median)",
        width=560,
        height=320,
        name="daskgd-split",
    )
    fig.vbar_stack(
        list(PARTS),
        x="workers",
        width=0.7,
        source=columns,
        color=[_PART_COLORS[p] for p in PARTS],
        legend_label=list(PARTS),
    )
    fig.y_range.start = 0
    _legend_outside(fig)
    return fig


def _table_cells(result: xr.Dataset) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the scaling table, shared by the HTML and the text forms."""
    head = ["m", "T(m) ms", "speedup", "efficiency", *PARTS]
    rows = []
    for m in result["workers"].values:
        r = result.sel(workers=m)
        rows.append(
            [
                str(m),
                f"{float(r.iteration_seconds) * 1e3:.2f}",
                f"{float(r.speedup):.2f}",
                f"{float(r.efficiency):.0%}",
                *(f"{float(r.share.sel(part=p)):.0%}" for p in PARTS),
            ]
        )
    return head, rows


def _table_html(result: xr.Dataset) -> str:
    head, rows = _table_cells(result)
    header = "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>" for cells in rows)
    return f"<table border=1 cellpadding=4>{header}{body}</table>"


def scaling_document(result: xr.Dataset, predicted: xr.Dataset | None = None) -> Any:
    """Bokeh layout: speedup and split side by side above a table of the figures."""
    from bokeh.layouts import column, row
    from bokeh.models.widgets import Div

    title = html.escape(problem_title(result))
    heading = f"<h2 style='font-family:sans-serif'>daskgd scaling: {title}</h2>"
    return column(
        Div(text=heading, name="daskgd-scaling-title"),
        row(speedup_figure(result, predicted), split_figure(result)),
        Div(text=_table_html(result), name="daskgd-scaling-table"),
    )


def write_scaling_report(result: xr.Dataset, path: Any, predicted: xr.Dataset | None = None):
    """Write the scaling plots and table as one self-contained HTML file; returns the path."""
    from pathlib import Path

    from bokeh.embed import file_html
    from bokeh.resources import INLINE

    path = Path(path)
    title = f"daskgd scaling: {problem_title(result)}"
    page = file_html(scaling_document(result, predicted), INLINE, title)
    path.write_text(page, encoding="utf-8")
    return path


def format_scaling(result: xr.Dataset) -> str:
    """A plain-text table: m, T(m), speedup, efficiency and the split shares."""
    head, rows = _table_cells(result)
    lines = ["  ".join(f"{h:>13}" for h in head)]
    for cells in rows:
        lines.append("  ".join(f"{c:>13}" for c in cells))
    return "\n".join(lines)
