"""Bokeh plots of a trace: one component, shared by the live dashboard and the report.

:class:`TraceDashboard` follows distributed's dashboard components: a set of
``ColumnDataSource`` objects, a ``layout``, and ``update(trace)`` which rewrites the
sources from a trace (``docs/trace.md``). It shows

- the loss against the iteration and against elapsed time (log scale);
- compute / communication / wait per iteration, stacked (see :mod:`daskgd.observe.summary`);
- a worker x iteration heatmap of compute time with the stragglers circled;
- bytes per iteration (broadcast and reduce, stacked) and their running total;
- a table of the workers: address, chunks and rows held, compute, stragglers, memory.

The functions ``*_columns`` turn a trace into plain dicts of columns, so they can be
tested without a browser.
"""

from __future__ import annotations

import html
import json
from typing import Any

import numpy as np
import xarray as xr
from bokeh.layouts import column, row
from bokeh.models import (
    ColorBar,
    ColumnDataSource,
    DataRange1d,
    DataTable,
    Div,
    FactorRange,
    HoverTool,
    LogColorMapper,
    NumberFormatter,
    Range1d,
    TableColumn,
)
from bokeh.palettes import Viridis256
from bokeh.plotting import figure

from daskgd.observe.summary import PARTS, format_bytes, has_workers, split, worker_rows

#: One colour per part of an iteration, used by every plot and the header.
PART_COLORS = {"compute": "#4c72b0", "communication": "#dd8452", "wait": "#b8b8b8"}
BYTES_COLORS = {
    "broadcast": "#55a868",
    "reduce": "#c44e52",
    "other": "#8172b3",
    "total": "#333333",
}
STRAGGLER_COLOR = "#e8000b"
NO_WORKERS = "(no per-worker data)"
TOOLS = "pan,wheel_zoom,box_zoom,reset,save"

#: Memory of a worker: address -> (bytes in use, limit in bytes); either may be None.
Memory = dict[str, tuple[Any, Any]]


# ----------------------------------------------------------------------------------
# Trace -> columns
# ----------------------------------------------------------------------------------


def _values(trace: xr.Dataset, name: str) -> np.ndarray:
    if name in trace.data_vars:
        return trace[name].values.astype(np.float64)
    return np.full(trace.sizes.get("iteration", 0), np.nan)


def loss_columns(trace: xr.Dataset) -> dict[str, np.ndarray]:
    """Loss per iteration; values <= 0 become NaN (they have no place on a log axis)."""
    loss = _values(trace, "loss")
    return {
        "iteration": trace["iteration"].values.astype(np.int64),
        "elapsed": _values(trace, "elapsed_seconds"),
        "loss": np.where(loss > 0, loss, np.nan),
        "grad_norm": _values(trace, "grad_norm"),
    }


def split_columns(parts: xr.Dataset) -> dict[str, np.ndarray]:
    """Milliseconds per part and iteration (from :func:`daskgd.observe.summary.split`)."""
    columns = {"iteration": parts["iteration"].values.astype(np.int64)}
    for part in PARTS:
        columns[part] = parts["seconds"].sel(part=part).values * 1e3
    return columns


def worker_labels(trace: xr.Dataset) -> list[str]:
    """Short worker labels: ``name host:port`` (the name only when it says more)."""
    if not has_workers(trace):
        return []
    addresses = [str(a).split("://", 1)[-1] for a in trace["worker"].values]
    if "worker_name" not in trace.coords:
        return addresses
    names = [str(n) for n in trace["worker_name"].values]
    return [a if n in ("", a) else f"{n} {a}" for n, a in zip(names, addresses, strict=True)]


def heatmap_columns(trace: xr.Dataset) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(cells, stragglers): compute ms per (iteration, worker), and the flagged cells."""
    labels = worker_labels(trace)
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


def bytes_columns(parts: xr.Dataset) -> tuple[dict[str, Any], str, str]:
    """(columns, unit per iteration, unit of the running totals).

    Per iteration: broadcast, reduce, other (the total's remainder: data chunks moved
    between workers) and total, in the unit; ``*_text`` for hovers; running totals
    ``*_cumulative`` in their own unit, NaN where 0 (they go on a log axis).
    """
    n = parts.sizes.get("iteration", 0)

    def get(name: str) -> np.ndarray:
        return parts[name].values.astype(np.float64) if name in parts else np.full(n, np.nan)

    values = {"broadcast": get("bytes_broadcast"), "reduce": get("bytes_reduce")}
    values["total"] = get("bytes_total")
    known = np.nan_to_num(values["broadcast"]) + np.nan_to_num(values["reduce"])
    values["other"] = np.clip(values["total"] - known, 0, None)
    unit, scale = byte_unit(values["total"])
    cumulative = {name: np.cumsum(np.nan_to_num(v)) for name, v in values.items()}
    cumulative_unit, cumulative_scale = byte_unit(cumulative["total"][-1:])
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


def header_html(trace: xr.Dataset, parts: xr.Dataset) -> str:
    """Title line, the run's configuration and the run's time split, as HTML."""
    attrs = trace.attrs
    n_iterations = max(trace.sizes.get("iteration", 0) - 1, 0)
    facts = [f"{n_iterations} iterations"]
    if "n_samples" in attrs and "n_features" in attrs:
        facts.append(f"{int(attrs['n_samples']):,} x {int(attrs['n_features'])}")
    n_workers = trace.sizes.get("worker") or attrs.get("n_workers")
    if n_workers:
        facts.append(f"{n_workers} workers")
    wall = parts.attrs.get("run_wall_seconds", np.nan)
    if np.isfinite(wall):
        facts.append(f"{wall:.2f} s")
    what = " ".join(str(attrs[k]) for k in ("model", "solver", "strategy") if k in attrs)
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
    title = html.escape(f"daskgd {what}".strip())
    return (
        f'<div style="font-family:sans-serif"><b style="font-size:1.2em">{title}</b> '
        f"&nbsp; {html.escape(', '.join(facts))}<br>time: {' &nbsp; '.join(shares)}</div>"
    )


def fingerprint(trace: xr.Dataset | None) -> tuple:
    """A cheap summary that changes when a growing trace gets new data."""
    if trace is None:
        return ()
    last = float(trace["elapsed_seconds"].values[-1]) if trace.sizes.get("iteration") else 0.0
    measured = (
        float(np.nansum(trace["compute_seconds"].values)) if "compute_seconds" in trace else 0
    )
    return (tuple(sorted(trace.sizes.items())), last, measured, len(trace.data_vars))


def _legend_above(fig: Any) -> None:
    """Move the legend out of the plot area, in one row under the title."""
    legend = fig.legend[0]
    fig.center = [item for item in fig.center if item is not legend]
    legend.orientation = "horizontal"
    legend.location = "top_left"
    legend.padding = legend.margin = 2
    legend.label_height = legend.glyph_height = 12
    legend.border_line_color = None
    fig.add_layout(legend, "above")


# ----------------------------------------------------------------------------------
# The component
# ----------------------------------------------------------------------------------


class TraceDashboard:
    """Bokeh plots of a trace: ``sources``, ``figures``, ``layout`` and ``update(trace)``.

    Parameters
    ----------
    width, height : int
        Size of each plot in pixels (ignored with ``sizing_mode``).
    sizing_mode : str, optional
        Bokeh sizing mode given to every plot, e.g. ``"stretch_both"`` to fill a pane.
    """

    def __init__(self, width: int = 560, height: int = 260, sizing_mode: str | None = None):
        self._size = {"width": width, "height": height}
        if sizing_mode:
            self._size = {"sizing_mode": sizing_mode}
        self.sources = {
            name: ColumnDataSource(name=f"daskgd-{name}-data")
            for name in ("loss", "split", "heatmap", "stragglers", "bytes", "workers")
        }
        self._redraws = 0
        self.update_empty()
        self.iteration_range = DataRange1d(name="daskgd-iteration-range")
        self.header = Div(text="daskgd: waiting for the first iteration", name="daskgd-header")
        self.figures = {
            "loss": self._loss_figure("iteration", "loss against iteration"),
            "loss_time": self._loss_figure("elapsed", "loss against elapsed time"),
            "split": self._split_figure(),
            "stragglers": self._heatmap_figure(),
            "bytes": self._bytes_figure(),
            "bytes_cumulative": self._cumulative_figure(),
        }
        self.workers_table = self._workers_table()
        figures = self.figures
        self.layout = column(
            self.header,
            row(figures["loss"], figures["loss_time"]),
            row(figures["split"], figures["stragglers"]),
            row(figures["bytes"], figures["bytes_cumulative"]),
            self.workers_table,
            name="daskgd-dashboard",
        )
        self._last: tuple | None = None

    # -- update ----------------------------------------------------------------------
    def update_empty(self) -> None:
        empty = xr.Dataset(coords={"iteration": np.array([], dtype=np.int64)})
        self._write(empty, split(empty), None)

    def update(self, trace: xr.Dataset | None, memory: Memory | None = None) -> bool:
        """Show ``trace`` (None shows nothing); returns whether anything was redrawn."""
        key = (fingerprint(trace), tuple(sorted((memory or {}).items())))
        if key == self._last:
            return False
        self._last = key
        if trace is None:
            self.update_empty()
            return True
        parts = split(trace)
        self._write(trace, parts, memory)
        self.header.text = header_html(trace, parts)
        self._update_titles(trace, parts)
        return True

    def _write(self, trace: xr.Dataset, parts: xr.Dataset, memory: Memory | None) -> None:
        cells, marks = heatmap_columns(trace)
        bytes_data, unit, cumulative_unit = bytes_columns(parts)
        new = {
            "loss": loss_columns(trace),
            "split": split_columns(parts),
            "heatmap": cells,
            "stragglers": marks,
            "bytes": bytes_data,
            "workers": worker_columns(trace, parts, memory),
        }
        for name, data in new.items():
            self.sources[name].data = dict(data)
        if hasattr(self, "figures"):
            self._update_heatmap_scale(trace, cells)
            self._update_bytes_scale(bytes_data, unit, cumulative_unit)
            # BokehJS redraws a DataTable on new data only when its number of rows
            # changes; a change to the table model itself makes it redraw.
            self.workers_table.tags = [self._redraws]
            self._redraws += 1

    def _update_heatmap_scale(self, trace: xr.Dataset, cells: dict) -> None:
        figure_ = self.figures["stragglers"]
        labels = worker_labels(trace) if "compute_seconds" in trace.data_vars else []
        figure_.y_range.factors = labels or [NO_WORKERS]
        values = cells["compute_ms"]
        values = values[np.isfinite(values) & (values > 0)]
        if values.size:
            low, high = float(values.min()), float(values.max())
            self.color_mapper.update(low=low, high=max(high, low * 1.01))

    def _update_bytes_scale(self, columns: dict, unit: str, cumulative_unit: str) -> None:
        """Fit the typical iterations; a rare large one (chunks moved) is cut off."""
        self.figures["bytes"].yaxis.axis_label = unit
        self.figures["bytes_cumulative"].yaxis.axis_label = f"{cumulative_unit} (log scale)"
        total = columns["total"][np.isfinite(columns["total"])]
        self._bytes_cut = (0, "")
        if not total.size:
            return
        known = np.nan_to_num(columns["broadcast"]) + np.nan_to_num(columns["reduce"])
        top = float(total.max())
        end = max(float(np.percentile(total, 90)) * 1.5, float(known.max()) * 1.15)
        if top > end > 0:
            cut = columns["total_text"][int(np.nanargmax(columns["total"]))]
            self._bytes_cut = (int((total > end).sum()), cut)
        else:
            end = top * 1.1 if top > 0 else 1.0
        self.figures["bytes"].y_range.update(start=0, end=end, reset_start=0, reset_end=end)

    def _update_titles(self, trace: xr.Dataset, parts: xr.Dataset) -> None:
        measured = parts.attrs["measured_iterations"] > 0
        suffix = "" if measured else " (not measured in this trace)"
        self.figures["split"].title.text = "time per iteration (mean over workers)" + suffix
        has_bytes = "bytes_total" in parts
        suffix = "" if has_bytes else " (not measured in this trace)"
        self.figures["bytes_cumulative"].title.text = "bytes moved, running total" + suffix
        n_cut, largest = getattr(self, "_bytes_cut", (0, ""))
        if n_cut:
            suffix = f" ({n_cut} cut off, largest {largest})"
        self.figures["bytes"].title.text = "bytes per iteration" + suffix
        n = int(parts["straggler_count"].sum()) if "straggler_count" in parts else 0
        if "compute_seconds" in trace.data_vars and has_workers(trace):
            circled = "1 straggler" if n == 1 else f"{n} stragglers"
            title = f"compute time per worker and iteration ({circled} circled)"
        else:
            title = "compute time per worker and iteration (not measured in this trace)"
        self.figures["stragglers"].title.text = title

    # -- figures ---------------------------------------------------------------------
    def _figure(self, name: str, title: str, **options: Any) -> Any:
        fig = figure(name=f"daskgd-{name}-plot", title=title, tools=TOOLS, **self._size, **options)
        fig.toolbar.logo = None
        if name != "loss-elapsed":
            fig.xaxis.ticker.min_interval = 1  # iterations are whole numbers
        return fig

    def _loss_figure(self, x: str, title: str) -> Any:
        options = {"x_range": self.iteration_range} if x == "iteration" else {}
        fig = self._figure(f"loss-{x}", title, y_axis_type="log", **options)
        fig.line(x, "loss", source=self.sources["loss"], line_width=2, color="#1f77b4")
        fig.scatter(x, "loss", source=self.sources["loss"], size=3, color="#1f77b4")
        fig.xaxis.axis_label = "iteration" if x == "iteration" else "elapsed (s)"
        fig.yaxis.axis_label = "loss F(w)"
        fig.add_tools(
            HoverTool(
                tooltips=[
                    ("iteration", "@iteration"),
                    ("elapsed", "@elapsed{0.000} s"),
                    ("loss", "@loss{0.000000}"),
                    ("gradient inf-norm", "@grad_norm{0.00e0}"),
                ],
                mode="vline" if x == "iteration" else "mouse",
            )
        )
        return fig

    def _split_figure(self) -> Any:
        fig = self._figure(
            "split", "time per iteration (mean over workers)", x_range=self.iteration_range
        )
        fig.vbar_stack(
            list(PARTS),
            x="iteration",
            width=0.9,
            color=[PART_COLORS[p] for p in PARTS],
            source=self.sources["split"],
            legend_label=list(PARTS),
            line_color=None,
        )
        fig.y_range.start = 0
        fig.xaxis.axis_label = "iteration"
        fig.yaxis.axis_label = "ms"
        _legend_above(fig)
        fig.add_tools(
            HoverTool(
                tooltips=[("iteration", "@iteration")] + [(p, f"@{p}{{0.00}} ms") for p in PARTS],
                mode="vline",
            )
        )
        return fig

    def _heatmap_figure(self) -> Any:
        fig = self._figure(
            "stragglers",
            "compute time per worker and iteration",
            x_range=self.iteration_range,
            y_range=FactorRange(factors=[NO_WORKERS]),
        )
        # Log colours: compute times of one run span orders of magnitude (stragglers).
        self.color_mapper = LogColorMapper(palette=Viridis256, low=1, high=10, nan_color="white")
        cells = fig.rect(
            "iteration",
            "worker",
            width=1,
            height=0.95,
            source=self.sources["heatmap"],
            fill_color={"field": "compute_ms", "transform": self.color_mapper},
            line_color=None,
        )
        fig.scatter(
            "iteration",
            "worker",
            source=self.sources["stragglers"],
            marker="circle",
            size=9,
            fill_color=None,
            line_color=STRAGGLER_COLOR,
            line_width=2,
            legend_label="straggler",
        )
        fig.add_layout(
            ColorBar(color_mapper=self.color_mapper, title="compute ms", width=10), "right"
        )
        fig.xaxis.axis_label = "iteration"
        _legend_above(fig)
        fig.grid.visible = False
        fig.add_tools(
            HoverTool(
                renderers=[cells],
                tooltips=[
                    ("worker", "@worker"),
                    ("iteration", "@iteration"),
                    ("compute", "@compute_ms{0.00} ms"),
                    ("straggler", "@straggler"),
                ],
            )
        )
        return fig

    def _bytes_figure(self) -> Any:
        fig = self._figure(
            "bytes", "bytes per iteration", x_range=self.iteration_range, y_range=Range1d(0, 1)
        )
        names = ["broadcast", "reduce", "other"]
        fig.vbar_stack(
            names,
            x="iteration",
            width=0.9,
            color=[BYTES_COLORS[n] for n in names],
            source=self.sources["bytes"],
            legend_label=names,
            line_color=None,
        )
        fig.xaxis.axis_label = "iteration"
        _legend_above(fig)
        fig.add_tools(
            HoverTool(
                tooltips=[
                    ("iteration", "@iteration"),
                    ("broadcast", "@broadcast_text"),
                    ("reduce", "@reduce_text"),
                    ("other (data chunks)", "@other_text"),
                    ("total", "@total_text"),
                ],
                mode="vline",
            )
        )
        return fig

    def _cumulative_figure(self) -> Any:
        fig = self._figure("bytes-cumulative", "bytes moved, running total", y_axis_type="log")
        for name in ("broadcast", "reduce", "total"):
            fig.line(
                "iteration",
                f"{name}_cumulative",
                source=self.sources["bytes"],
                color=BYTES_COLORS[name],
                line_width=2,
                legend_label=name,
            )
        fig.xaxis.axis_label = "iteration"
        _legend_above(fig)
        fig.add_tools(
            HoverTool(
                tooltips=[("iteration", "@iteration"), ("running total", "@total_cumulative")],
                mode="vline",
            )
        )
        return fig

    def _workers_table(self) -> DataTable:
        integer, seconds = NumberFormatter(format="0,0"), NumberFormatter(format="0.000")
        columns = [
            TableColumn(field="address", title="worker", width=200),
            TableColumn(field="name", title="name", width=60),
            TableColumn(field="chunks", title="chunks", formatter=integer, width=60),
            TableColumn(field="rows", title="rows", formatter=integer, width=90),
            TableColumn(field="compute_seconds", title="compute s", formatter=seconds, width=80),
            TableColumn(field="straggler_count", title="straggler", formatter=integer, width=70),
            TableColumn(field="slowest_count", title="slowest", formatter=integer, width=70),
            TableColumn(field="memory", title="memory", width=140),
        ]
        size = {"sizing_mode": "stretch_both"} if "sizing_mode" in self._size else {}
        size = size or {"width": 2 * self._size["width"], "height": 160}
        return DataTable(
            source=self.sources["workers"],
            columns=columns,
            index_position=None,
            reorderable=False,
            name="daskgd-workers-table",
            **size,
        )
