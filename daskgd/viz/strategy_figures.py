"""The dashboard's figures of what only some strategies record.

- :class:`StalenessFigure`: the histogram of the ``staleness`` of the applied gradients
  (parameter server, backup workers; NaN cells, gradients not applied, are left out);
- :class:`ConsensusFigure`: the ``consensus_distance`` of the workers' w against the
  iteration (gossip, local SGD), log scale.

Each is hidden until its variable is in the trace, so a fit that records neither
shows the dashboard it always had, and a live view shows the figure once the first
value arrives.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from bokeh.models import ColumnDataSource, HoverTool

from daskgd.viz.figures import Frame, make_figure

__all__ = ["ConsensusFigure", "StalenessFigure", "consensus_columns", "staleness_columns"]

STALENESS_COLOR = "#8c564b"
CONSENSUS_COLOR = "#2ca02c"


def staleness_columns(trace: xr.Dataset) -> dict[str, np.ndarray]:
    """Per staleness value 0..max: how many applied gradients had it (empty: none)."""
    if "staleness" not in trace.data_vars:
        return {"staleness": np.array([], np.int64), "count": np.array([], np.int64)}
    values = trace["staleness"].values.astype(np.float64).ravel()
    values = values[np.isfinite(values)]
    counts = np.bincount(np.rint(values).astype(np.int64).clip(0), minlength=0)
    counts = counts.astype(np.int64)
    return {"staleness": np.arange(counts.size, dtype=np.int64), "count": counts}


def consensus_columns(trace: xr.Dataset) -> dict[str, np.ndarray]:
    """Consensus distance per iteration; values <= 0 NaN (a log axis cannot show them)."""
    if "consensus_distance" not in trace.data_vars:
        return {"iteration": np.array([], np.int64), "consensus": np.array([])}
    values = trace["consensus_distance"].values.astype(np.float64)
    return {
        "iteration": trace["iteration"].values.astype(np.int64),
        "consensus": np.where(values > 0, values, np.nan),
    }


class StalenessFigure:
    """Histogram of the staleness of the applied gradients; hidden without it."""

    def __init__(self, source: ColumnDataSource, size: dict) -> None:
        fig = make_figure("staleness", "staleness of the applied gradients", size)
        fig.vbar(x="staleness", top="count", width=0.8, source=source, color=STALENESS_COLOR)
        fig.y_range.start = 0
        fig.xaxis.axis_label = "staleness (updates since the gradient's w)"
        fig.yaxis.axis_label = "applied gradients"
        fig.add_tools(HoverTool(tooltips=[("staleness", "@staleness"), ("count", "@count")]))
        fig.visible = False
        self.root = fig

    def update(self, frame: Frame) -> None:
        counts = frame.columns["staleness"]["count"] if frame.columns else np.array([])
        self.root.visible = "staleness" in frame.trace.data_vars
        if len(counts):
            top = int(np.flatnonzero(counts)[-1]) if counts.any() else 0
            mean = float(np.average(np.arange(len(counts)), weights=counts)) if counts.sum() else 0
            self.root.title.text = (
                f"staleness of the applied gradients (max {top}, mean {mean:.2f})"
            )


class ConsensusFigure:
    """Consensus distance against the iteration, log scale; hidden without it."""

    def __init__(self, source: ColumnDataSource, size: dict, iteration_range: Any) -> None:
        fig = make_figure(
            "consensus", "consensus distance of the workers' w", size,
            x_range=iteration_range, y_axis_type="log",
        )  # fmt: skip
        fig.line("iteration", "consensus", source=source, line_width=2, color=CONSENSUS_COLOR)
        fig.scatter("iteration", "consensus", source=source, size=3, color=CONSENSUS_COLOR)
        fig.xaxis.axis_label = "iteration"
        fig.yaxis.axis_label = "sqrt(mean ||w_i - w_mean||^2) (log scale)"
        fig.add_tools(
            HoverTool(tooltips=[("iteration", "@iteration"), ("distance", "@consensus{0.00e0}")],
                      mode="vline")
        )  # fmt: skip
        fig.visible = False
        self.root = fig

    def update(self, frame: Frame) -> None:
        self.root.visible = "consensus_distance" in frame.trace.data_vars
