"""The figures of the dashboard, one component each.

Like distributed's dashboard components, each has a ``root`` (the Bokeh model to
place in a layout) and ``update(frame)``, which rewrites its data sources and titles
from a :class:`Frame`: the trace, its split, the workers' memory and the iterations
whose measurements are pending. The data sources are made by the caller
(:class:`daskgd.viz.plots.TraceDashboard`) so that two figures can share one, as the
loss against iteration and against time do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

# Annotations and widgets from their own modules: bokeh.models re-exports them with a
# star import that mypy does not follow.
from bokeh.models import ColumnDataSource, FactorRange, HoverTool, LogColorMapper, Range1d
from bokeh.models.annotations import BoxAnnotation, ColorBar, Label, Span
from bokeh.models.widgets import DataTable, Div, NumberFormatter, TableColumn
from bokeh.palettes import Viridis256
from bokeh.plotting import figure

from daskgd.observe.summary import PART_LABELS, PARTS, has_workers
from daskgd.viz.columns import PART_COLORS, Memory, header_html, tolerance, worker_labels

BYTES_COLORS = {
    "broadcast": "#55a868",
    "reduce": "#c44e52",
    "other": "#8172b3",
    "total": "#333333",
}
STRAGGLER_COLOR = "#e8000b"
NO_WORKERS = "(no per-worker data)"
TOOLS = "pan,wheel_zoom,box_zoom,reset,save"
NOT_MEASURED = " (not measured in this trace)"


@dataclass
class Frame:
    """What one redraw shows: a trace, its split, memory, pending iterations."""

    trace: xr.Dataset
    parts: xr.Dataset
    memory: Memory | None = None
    pending: tuple[int, int] | None = None
    columns: dict | None = None  # the sources' new data, by source name


def _legend_above(fig: Any, small: bool = False) -> None:
    """Move the legend out of the plot area, in one row under the title."""
    legend = fig.legend[0]
    if small:  # the compact layout's narrow plots
        legend.label_text_font_size = "10px"
        legend.spacing = legend.glyph_width = 8
    fig.center = [item for item in fig.center if item is not legend]
    legend.orientation = "horizontal"
    legend.location = "top_left"
    legend.padding = legend.margin = 2
    legend.label_height = legend.glyph_height = 12
    legend.border_line_color = None
    fig.add_layout(legend, "above")


def make_figure(name: str, title: str, size: dict, **options: Any) -> Any:
    fig = figure(name=f"daskgd-{name}-plot", title=title, tools=TOOLS, **size, **options)
    fig.toolbar.logo = None
    if name != "loss-elapsed":
        ticker: Any = fig.xaxis.ticker
        ticker.min_interval = 1  # iterations are whole numbers
    return fig


class PendingMark:
    """A hatched band over the iterations whose per-worker measurements are pending."""

    def __init__(self, fig: Any, name: str) -> None:
        self.box = BoxAnnotation(
            left=0, right=0, fill_color="#dddddd", fill_alpha=0.35, hatch_pattern="/",
            hatch_color="#999999", hatch_alpha=0.5, line_color=None, visible=False,
            name=f"daskgd-{name}-pending",
        )  # fmt: skip
        self.label = Label(
            x=0, y=4, y_units="screen", text="measuring...", text_font_size="10px",
            text_color="#666666", visible=False,
        )  # fmt: skip
        fig.add_layout(self.box)
        fig.add_layout(self.label)

    def show(self, pending: tuple[int, int] | None) -> None:
        if pending is None:
            self.box.visible = self.label.visible = False
            return
        first, last = pending
        self.box.update(left=first - 0.5, right=last + 0.5, visible=True)
        self.label.update(x=first - 0.5, visible=True)


class Header:
    """The title line: what was fitted, its size, and the time split of the run."""

    def __init__(self) -> None:
        self.root = Div(text="daskgd: waiting for the first iteration", name="daskgd-header")

    def update(self, frame: Frame) -> None:
        self.root.text = header_html(frame.trace, frame.parts)


class LossFigure:
    """The loss against the iteration or against elapsed time, log scale."""

    def __init__(self, x: str, source: ColumnDataSource, size: dict, iteration_range: Any):
        title = "loss against iteration" if x == "iteration" else "loss against elapsed time"
        options = {"x_range": iteration_range} if x == "iteration" else {}
        fig = make_figure(f"loss-{x}", title, size, y_axis_type="log", **options)
        fig.line(x, "loss", source=source, line_width=2, color="#1f77b4")
        fig.scatter(x, "loss", source=source, size=3, color="#1f77b4")
        fig.xaxis.axis_label = "iteration" if x == "iteration" else "elapsed (s)"
        fig.yaxis.axis_label = "loss F(w) (log scale)"
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
        self.root = fig

    def update(self, frame: Frame) -> None:
        """Nothing beyond the shared source."""


class GradientFigure:
    """What ``tol`` stops on (the gradient's inf-norm; sgd: the relative change of w)
    against the iteration, log scale, with ``tol`` as a dashed line."""

    def __init__(self, source: ColumnDataSource, size: dict, iteration_range: Any) -> None:
        self.title = "gradient norm: what tol stops on"
        fig = make_figure("gradient", self.title, size, y_axis_type="log", x_range=iteration_range)
        fig.line("iteration", "optimality", source=source, line_width=2, color="#8172b3",
                 legend_label="optimality (|grad|_inf; sgd: change of w)")  # fmt: skip
        fig.scatter("iteration", "optimality", source=source, size=3, color="#8172b3")
        self.tol = Span(dimension="width", location=1.0, line_dash="dashed", line_color="#333333",
                        visible=False, name="daskgd-gradient-tol")  # fmt: skip
        fig.add_layout(self.tol)
        fig.xaxis.axis_label = "iteration"
        fig.yaxis.axis_label = "optimality (log scale)"
        _legend_above(fig)
        fig.add_tools(HoverTool(tooltips=[("iteration", "@iteration"),
                      ("optimality", "@optimality{0.00e0}"), ("|grad|_inf", "@grad_norm{0.00e0}")],
                      mode="vline"))  # fmt: skip
        self.root = fig

    def update(self, frame: Frame) -> None:
        tol = tolerance(frame.trace)
        self.tol.visible = tol is not None
        if tol is not None:
            self.tol.location = tol
        suffix = f" (dashed: tol = {tol:g})" if tol is not None else " (tol = 0: never stops)"
        self.root.title.text = self.title + (suffix if "tol" in frame.trace.attrs else "")


class SplitFigure:
    """Compute / communication / sync / overhead per iteration (mean over workers), stacked."""

    def __init__(self, source: ColumnDataSource, size: dict, iteration_range: Any,
                 short: bool = False) -> None:  # fmt: skip
        # Short titles for the compact layout, whose plots share a notebook cell's width.
        self.title = "time per iteration" if short else "time per iteration (mean over workers)"
        self.not_measured = " (not measured)" if short else NOT_MEASURED
        fig = make_figure("split", self.title, size, x_range=iteration_range)
        fig.vbar_stack(
            list(PARTS), x="iteration", width=0.9, color=[PART_COLORS[p] for p in PARTS],
            source=source, legend_label=list(PARTS), line_color=None,
        )  # fmt: skip
        fig.y_range.start = 0
        fig.xaxis.axis_label = "iteration"
        fig.yaxis.axis_label = "ms"
        _legend_above(fig, short)
        tooltips = [("iteration", "@iteration")]
        tooltips += [(PART_LABELS[p], f"@{p}{{0.00}} ms") for p in PARTS]
        fig.add_tools(HoverTool(tooltips=tooltips, mode="vline"))
        self.pending = PendingMark(fig, "split")
        self.root = fig

    def update(self, frame: Frame) -> None:
        measured = frame.parts.attrs["measured_iterations"] > 0 or frame.pending is not None
        self.root.title.text = self.title + ("" if measured else self.not_measured)
        self.pending.show(frame.pending)


class StragglerFigure:
    """A worker x iteration heatmap of compute time (log colours), stragglers circled."""

    def __init__(self, cells: ColumnDataSource, marks: ColumnDataSource, size: dict,
                 iteration_range: Any, short: bool = False) -> None:  # fmt: skip
        self.title = "compute per worker" if short else "compute time per worker and iteration"
        self.short = short
        fig = make_figure(
            "stragglers", self.title, size,
            x_range=iteration_range, y_range=FactorRange(factors=[NO_WORKERS]),
        )  # fmt: skip
        # Log colours: compute times of one run span orders of magnitude (stragglers).
        self.color_mapper = LogColorMapper(palette=Viridis256, low=1, high=10, nan_color="white")
        rects = fig.rect(
            "iteration", "worker", width=1, height=0.95, source=cells, line_color=None,
            fill_color={"field": "compute_ms", "transform": self.color_mapper},
        )  # fmt: skip
        fig.scatter(
            "iteration", "worker", source=marks, marker="circle", size=9, fill_color=None,
            line_color=STRAGGLER_COLOR, line_width=2, legend_label="straggler",
        )  # fmt: skip
        colour_bar = ColorBar(
            color_mapper=self.color_mapper, title="compute ms (log colours)", width=10
        )
        fig.add_layout(colour_bar, "right")
        fig.xaxis.axis_label = "iteration"
        _legend_above(fig, short)
        if short:
            fig.xaxis.ticker.desired_num_ticks = 4
        fig.grid.visible = False
        tooltips = [("worker", "@worker"), ("iteration", "@iteration"),
                    ("compute", "@compute_ms{0.00} ms"), ("straggler", "@straggler")]  # fmt: skip
        fig.add_tools(HoverTool(renderers=[rects], tooltips=tooltips))
        self.pending = PendingMark(fig, "stragglers")
        self.root = fig

    def update(self, frame: Frame) -> None:
        trace = frame.trace
        measured = "compute_seconds" in trace.data_vars and has_workers(trace)
        labels = worker_labels(trace, self.short) if measured else []
        self.root.y_range.factors = labels or [NO_WORKERS]
        values = frame.columns["heatmap"]["compute_ms"] if frame.columns else np.array([])
        values = values[np.isfinite(values) & (values > 0)]
        if values.size:
            low, high = float(values.min()), float(values.max())
            self.color_mapper.update(low=low, high=max(high, low * 1.01))
        if measured:
            n = int(frame.parts["straggler_count"].sum()) if "straggler_count" in frame.parts else 0
            circled = "1 straggler" if n == 1 else f"{n} stragglers"
            title = f"compute, {circled}" if self.short else f"{self.title} ({circled} circled)"
        elif frame.pending is not None:
            title = f"{self.title} (measuring...)"
        else:
            title = self.title + (" (not measured)" if self.short else NOT_MEASURED)
        self.root.title.text = title
        self.pending.show(frame.pending)


class BytesFigure:
    """Bytes per iteration: broadcast, reduce and other (data chunks), stacked."""

    def __init__(self, source: ColumnDataSource, size: dict, iteration_range: Any) -> None:
        fig = make_figure(
            "bytes",
            "bytes per iteration",
            size,
            x_range=iteration_range,
            y_range=Range1d(start=0, end=1),
        )
        names = ["broadcast", "reduce", "other"]
        fig.vbar_stack(
            names, x="iteration", width=0.9, color=[BYTES_COLORS[n] for n in names],
            source=source, legend_label=names, line_color=None,
        )  # fmt: skip
        fig.xaxis.axis_label = "iteration"
        _legend_above(fig)
        tooltips = [("iteration", "@iteration"), ("broadcast", "@broadcast_text"),
                    ("reduce", "@reduce_text"), ("other (data chunks)", "@other_text"),
                    ("total", "@total_text")]  # fmt: skip
        fig.add_tools(HoverTool(tooltips=tooltips, mode="vline"))
        self.pending = PendingMark(fig, "bytes")
        self.root = fig

    def update(self, frame: Frame) -> None:
        """Fit the typical iterations; a rare large one (chunks moved) is cut off."""
        assert frame.columns is not None, "TraceDashboard fills the columns before update"
        columns, unit = frame.columns["bytes"], frame.columns["bytes_unit"]
        self.root.yaxis.axis_label = unit
        total = columns["total"][np.isfinite(columns["total"])]
        suffix = ""
        if total.size:
            known = np.nan_to_num(columns["broadcast"]) + np.nan_to_num(columns["reduce"])
            top = float(total.max())
            end = max(float(np.percentile(total, 90)) * 1.5, float(known.max()) * 1.15)
            if top > end > 0:
                largest = columns["total_text"][int(np.nanargmax(columns["total"]))]
                suffix = f" ({int((total > end).sum())} cut off, largest {largest})"
            else:
                end = top * 1.1 if top > 0 else 1.0
            self.root.y_range.update(start=0, end=end, reset_start=0, reset_end=end)
        self.root.title.text = "bytes per iteration" + suffix
        self.pending.show(frame.pending)


class CumulativeBytesFigure:
    """Running totals of the bytes moved, log scale; they stop where measurements do."""

    def __init__(self, source: ColumnDataSource, size: dict, iteration_range: Any) -> None:
        fig = make_figure(
            "bytes-cumulative", "bytes moved, running total", size, y_axis_type="log",
            x_range=iteration_range,
        )  # fmt: skip
        for name in ("broadcast", "reduce", "total"):
            fig.line(
                "iteration", f"{name}_cumulative", source=source, color=BYTES_COLORS[name],
                line_width=2, legend_label=name,
            )  # fmt: skip
        fig.xaxis.axis_label = "iteration"
        _legend_above(fig)
        tooltips = [("iteration", "@iteration"), ("running total", "@total_cumulative")]
        fig.add_tools(HoverTool(tooltips=tooltips, mode="vline"))
        self.pending = PendingMark(fig, "bytes-cumulative")
        self.root = fig

    def update(self, frame: Frame) -> None:
        assert frame.columns is not None, "TraceDashboard fills the columns before update"
        unit = frame.columns["bytes_cumulative_unit"]
        self.root.yaxis.axis_label = f"{unit} (log scale)"
        measured = "bytes_total" in frame.parts or frame.pending is not None
        self.root.title.text = "bytes moved, running total" + ("" if measured else NOT_MEASURED)
        self.pending.show(frame.pending)


class WorkersTable:
    """One row per worker: address, chunks and rows held, compute, stragglers, memory."""

    def __init__(self, source: ColumnDataSource, size: dict) -> None:
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
        self.root = DataTable(
            source=source, columns=columns, index_position=None, reorderable=False,
            name="daskgd-workers-table", **size,
        )  # fmt: skip
        self._redraws = 0

    def update(self, frame: Frame) -> None:
        # BokehJS redraws a DataTable on new data only when its number of rows
        # changes; a change to the table model itself makes it redraw.
        self.root.tags = [self._redraws]
        self._redraws += 1
