"""The figures and the HTML report of several runs side by side (``daskgd compare``).

One colour per run, the same in every figure:

- loss against wall time, and against the cumulative bytes moved (log axes), with the
  target loss of the summary as a dashed line;
- the traffic of the busiest node per round (max over workers of bytes sent plus
  received; dashed: the client's, w out and sums in);
- staleness histograms, when a run records ``staleness`` (parameter server, backup
  workers);
- consensus distance against the iteration, when a run records it (gossip, local SGD);
- the summary table (:func:`daskgd.viz.compare_columns.summary_dataset`).

A figure whose variable no run has is left out of the layout, not drawn empty.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from bokeh.models import (
    ColumnDataSource,
    HoverTool,
    NumeralTickFormatter,
    SingleIntervalTicker,
)
from bokeh.models.annotations import Span
from bokeh.models.widgets import Div
from bokeh.palettes import Category10_10

from daskgd.viz.compare_columns import (
    busiest_node_bytes,
    client_bytes,
    cumulative_bytes,
    staleness_values,
    summary_cells,
    summary_dataset,
)
from daskgd.viz.figures import TOOLS

__all__ = ["comparison_document", "comparison_figures", "write_comparison_report"]

SIZE = {"width": 560, "height": 320}


def make_figure(name: str, title: str, size: dict, **options: Any) -> Any:
    from bokeh.plotting import figure

    fig = figure(name=f"daskgd-{name}-plot", title=title, tools=TOOLS, **size, **options)
    fig.toolbar.logo = None
    return fig


def _positive(values: np.ndarray) -> np.ndarray:
    """Values a log axis can show; the rest NaN (a gap in the line)."""
    values = np.asarray(values, dtype=np.float64)
    return np.where(values > 0, values, np.nan)


def _colors(labels: list[str]) -> dict[str, str]:
    return {label: Category10_10[i % len(Category10_10)] for i, label in enumerate(labels)}


def _run_source(label: str, trace: xr.Dataset) -> ColumnDataSource:
    n = trace.sizes.get("iteration", 0)

    def values(name: str) -> np.ndarray:
        return trace[name].values.astype(np.float64) if name in trace else np.full(n, np.nan)

    return ColumnDataSource(
        {
            "iteration": trace["iteration"].values.astype(np.int64),
            "elapsed": values("elapsed_seconds"),
            "loss": _positive(values("loss")),
            "bytes": _positive(cumulative_bytes(trace)),
            "busiest": _positive(busiest_node_bytes(trace)),
            "client": _positive(client_bytes(trace)),
            "consensus": _positive(values("consensus_distance")),
        },
        name=f"daskgd-compare-{label}-data",
    )


def _legend(fig: Any) -> None:
    fig.legend.location = "top_right"
    fig.legend.click_policy = "hide"
    fig.legend.label_text_font_size = "10px"


def _target_line(fig: Any, target: float) -> None:
    if np.isfinite(target) and target > 0:
        fig.add_layout(Span(location=target, dimension="width", line_dash="dashed",
                            line_color="#555555", line_width=1))  # fmt: skip


def _loss_figures(sources: dict, colors: dict, target: float) -> list[Any]:
    by_time = make_figure("compare-loss-time", "loss against wall time", SIZE,
                          y_axis_type="log")  # fmt: skip
    by_bytes = make_figure("compare-loss-bytes", "loss against bytes moved", SIZE,
                           x_axis_type="log", y_axis_type="log")  # fmt: skip
    for label, source in sources.items():
        by_time.line("elapsed", "loss", source=source, color=colors[label], line_width=2,
                     legend_label=label)  # fmt: skip
        by_bytes.line("bytes", "loss", source=source, color=colors[label], line_width=2,
                      legend_label=label)  # fmt: skip
    by_time.xaxis.axis_label = "elapsed wall time (s)"
    by_bytes.xaxis.axis_label = "bytes moved, cumulative (log scale)"
    # within a decade a log axis falls back to plain numbers; "120k" stays legible
    by_bytes.xaxis.formatter = NumeralTickFormatter(format="0.[0]a")
    for fig in (by_time, by_bytes):
        fig.yaxis.axis_label = "loss F(w) (log scale)"
        _target_line(fig, target)
        fig.add_tools(HoverTool(tooltips=[("iteration", "@iteration"), ("loss", "@loss{0.000000}"),
                                          ("elapsed", "@elapsed{0.000} s"),
                                          ("bytes", "@bytes{0.0a}")]))  # fmt: skip
        _legend(fig)
    return [by_time, by_bytes]


def _busiest_figure(sources: dict, colors: dict) -> Any:
    fig = make_figure("compare-busiest", "traffic of the busiest node per round", SIZE,
                      y_axis_type="log")  # fmt: skip
    for label, source in sources.items():
        fig.line("iteration", "busiest", source=source, color=colors[label], line_width=2,
                 legend_label=label)  # fmt: skip
        if np.isfinite(np.asarray(source.data["client"], dtype=np.float64)).any():
            fig.line("iteration", "client", source=source, color=colors[label], line_width=1,
                     line_dash="dashed", legend_label=f"{label} (client)")  # fmt: skip
    fig.xaxis.axis_label = "iteration"
    fig.yaxis.axis_label = "bytes sent + received (log scale)"
    fig.add_tools(HoverTool(tooltips=[("iteration", "@iteration"), ("busiest", "@busiest{0.0a}"),
                                      ("client", "@client{0.0a}")]))  # fmt: skip
    _legend(fig)
    return fig


def _staleness_figure(traces: Mapping[str, xr.Dataset], colors: dict) -> Any | None:
    values = {label: staleness_values(trace) for label, trace in traces.items()}
    values = {label: v for label, v in values.items() if v.size}
    if not values:
        return None
    top = int(max(v.max() for v in values.values()))
    width = 0.8 / len(values)
    fig = make_figure("compare-staleness", "staleness of the applied gradients", SIZE)
    for i, (label, v) in enumerate(values.items()):
        counts = np.bincount(np.rint(v).astype(np.int64).clip(0), minlength=top + 1)
        x = np.arange(top + 1) - 0.4 + width * (i + 0.5)
        fig.vbar(x=x, top=counts / counts.sum(), width=width * 0.95, color=colors[label],
                 legend_label=label)  # fmt: skip
    fig.y_range.start = 0
    fig.xaxis.ticker = SingleIntervalTicker(interval=1)  # staleness is a whole number
    fig.xaxis.axis_label = "staleness (updates since the gradient's w)"
    fig.yaxis.axis_label = "share of the applied gradients"
    _legend(fig)
    return fig


def _consensus_figure(sources: dict, colors: dict, traces: Mapping) -> Any | None:
    having = [label for label, trace in traces.items() if "consensus_distance" in trace]
    if not having:
        return None
    fig = make_figure("compare-consensus", "consensus distance", SIZE, y_axis_type="log")
    for label in having:
        fig.line("iteration", "consensus", source=sources[label], color=colors[label],
                 line_width=2, legend_label=label)  # fmt: skip
    fig.xaxis.axis_label = "iteration"
    fig.yaxis.axis_label = "sqrt(mean ||w_i - w_mean||^2) (log scale)"
    _legend(fig)
    return fig


def comparison_figures(traces: Mapping[str, xr.Dataset], target_loss: float) -> list[Any]:
    """The figures, in the report's order; those of variables no run has are left out."""
    labels = list(traces)
    colors = _colors(labels)
    sources = {label: _run_source(label, trace) for label, trace in traces.items()}
    figures = [*_loss_figures(sources, colors, target_loss), _busiest_figure(sources, colors)]
    figures.append(_staleness_figure(traces, colors))
    figures.append(_consensus_figure(sources, colors, traces))
    return [fig for fig in figures if fig is not None]


def _table_html(summary: xr.Dataset) -> str:
    head, rows = summary_cells(summary)
    header = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in rows
    )
    target = f"{summary.attrs['target_loss']:.8g} ({summary.attrs['target_rule']})"
    return (
        f'<div style="font-family:sans-serif;font-size:12px"><p>target loss {target}</p>'
        f"<table border=1 cellpadding=4 style='border-collapse:collapse'>{header}{body}"
        "</table></div>"
    )


def comparison_document(traces: Mapping[str, xr.Dataset], target_loss: float | None = None):
    """Bokeh layout: the title, the figures two by two, the summary table."""
    from bokeh.layouts import column, row

    summary = summary_dataset(traces, target_loss)
    figures = comparison_figures(traces, float(summary.attrs["target_loss"]))
    rows = [row(*figures[i : i + 2]) for i in range(0, len(figures), 2)]
    title = Div(text=_title_html(traces), name="daskgd-compare-header")
    table = Div(text=_table_html(summary), name="daskgd-compare-table")
    return column(title, *rows, table, name="daskgd-compare")


def _title_html(traces: Mapping[str, xr.Dataset]) -> str:
    first = next(iter(traces.values()))
    keys = ("model", "solver")
    what = " ".join(str(first.attrs[k]) for k in keys if k in first.attrs)
    size = ""
    if "n_samples" in first.attrs and "n_features" in first.attrs:
        size = f", {int(first.attrs['n_samples']):,} x {int(first.attrs['n_features'])}"
    emulation = str(first.attrs.get("emulation", "None"))
    conditions = "" if emulation == "None" else f"<br>emulated: {html.escape(emulation)}"
    return (
        f'<div style="font-family:sans-serif"><b style="font-size:1.2em">daskgd compare '
        f"{html.escape(what)}</b> &nbsp; {len(traces)} runs{html.escape(size)}{conditions}</div>"
    )


def write_comparison_report(
    traces: Mapping[str, xr.Dataset],
    path: str | os.PathLike,
    target_loss: float | None = None,
    title: str = "daskgd compare",
) -> Path:
    """Write the runs side by side as one self-contained HTML file; returns the path."""
    from bokeh.embed import file_html
    from bokeh.resources import INLINE

    path = Path(path)
    page = file_html(comparison_document(traces, target_loss), INLINE, title)
    path.write_text(page, encoding="utf-8")
    return path
