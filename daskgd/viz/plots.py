"""Bokeh plots of a trace: one dashboard, shared by the live views and the report.

:class:`TraceDashboard` follows distributed's dashboard components: a set of
``ColumnDataSource`` objects, a ``layout``, and ``update(trace)`` which rewrites the
sources from a trace (``docs/trace.md``). Its figures (:mod:`daskgd.viz.figures`) are

- the loss against the iteration and against elapsed time (log scale);
- the gradient norm, what ``tol`` stops on, with ``tol`` dashed (log scale);
- compute / communication / sync / overhead per iteration, stacked
  (see :mod:`daskgd.observe.summary`);
- a worker x iteration heatmap of compute time with the stragglers circled;
- bytes per iteration (broadcast and reduce, stacked) and their running total;
- a table of the workers: address, chunks and rows held, compute, stragglers, memory;
- when the fit records them (:mod:`daskgd.viz.strategy_figures`): the histogram of the
  staleness of the applied gradients and the consensus distance, hidden otherwise.

Two layouts: ``"full"`` (all of them, about 1400 px tall) and ``"compact"`` (the loss,
the split and the stragglers in one row, about 320 px: a notebook's default, so that
the cell's progress bar stays on screen). The trace -> columns functions are in
:mod:`daskgd.viz.columns`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource, DataRange1d

from daskgd.observe.summary import split
from daskgd.viz.columns import (
    PART_COLORS,
    Memory,
    bytes_columns,
    fingerprint,
    header_html,
    heatmap_columns,
    loss_columns,
    pending_span,
    split_columns,
    worker_columns,
)
from daskgd.viz.figures import (
    BYTES_COLORS,
    BytesFigure,
    CumulativeBytesFigure,
    Frame,
    GradientFigure,
    Header,
    LossFigure,
    SplitFigure,
    StragglerFigure,
    WorkersTable,
)
from daskgd.viz.strategy_figures import (
    ConsensusFigure,
    StalenessFigure,
    consensus_columns,
    staleness_columns,
)

__all__ = [
    "BYTES_COLORS",
    "LAYOUTS",
    "PART_COLORS",
    "Memory",
    "TraceDashboard",
    "bytes_columns",
    "header_html",
    "heatmap_columns",
    "loss_columns",
    "split_columns",
    "worker_columns",
]

#: The layouts of :class:`TraceDashboard` and the figures each shows.
LAYOUTS = {
    "full": (
        "loss",
        "loss_time",
        "gradient",
        "split",
        "stragglers",
        "bytes",
        "bytes_cumulative",
        "staleness",
        "consensus",
        "workers",
    ),  # fmt: skip
    "compact": ("loss", "split", "stragglers"),
}
SOURCES = ("loss", "split", "heatmap", "stragglers", "bytes", "workers", "staleness", "consensus")


def _check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {list(LAYOUTS)}")
    return layout


class TraceDashboard:
    """Bokeh plots of a trace: ``sources``, ``figures``, ``layout`` and ``update(trace)``.

    Parameters
    ----------
    width, height : int
        Size of each plot in pixels (ignored with ``sizing_mode``).
    sizing_mode : str, optional
        Bokeh sizing mode given to every plot, e.g. ``"stretch_both"`` to fill a pane.
    layout : {"full", "compact"}, default "full"
        All figures and the workers table, or the loss, the split and the stragglers
        in one row (default size there: 330 x 250 each, the heatmap a bit wider).
    """

    def __init__(self, width: int | None = None, height: int | None = None,
                 sizing_mode: str | None = None, layout: str = "full") -> None:  # fmt: skip
        self.layout_name = _check_layout(layout)
        compact = layout == "compact"
        if compact and sizing_mode is None and width is None:
            # A notebook's output area is as wide as the window minus JupyterLab's side
            # panels: the row shares whatever width there is.
            sizing_mode = "stretch_width"
        width = width or (330 if compact else 560)
        height = height or (250 if compact else 260)
        size: dict[str, Any] = {"width": width, "height": height}
        if sizing_mode:
            size = {"sizing_mode": sizing_mode}
            if sizing_mode == "stretch_width":
                size["height"] = height
        wide = size if sizing_mode else {"width": int(width * 1.2), "height": height}
        self.sources = {name: ColumnDataSource(name=f"daskgd-{name}-data") for name in SOURCES}
        self.iteration_range = DataRange1d(name="daskgd-iteration-range")
        self._size = size
        self._components = self._make(LAYOUTS[layout], size, wide if compact else size)
        self._header = Header()
        self.header = self._header.root  # the Div
        self.figures = {
            name: part.root for name, part in self._components.items() if name != "workers"
        }
        self.workers_table = (
            self._components["workers"].root if "workers" in self._components else None
        )
        self.layout = self._arrange(compact)
        self._last: tuple | None = None
        self.update_empty()

    def _make(self, names: tuple[str, ...], size: dict, heatmap_size: dict) -> dict[str, Any]:
        s, x = self.sources, self.iteration_range
        short = self.layout_name == "compact"
        table: dict[str, Any] = {"sizing_mode": "stretch_both"} if "sizing_mode" in size else {}
        table = table or {"width": 2 * size["width"], "height": 160}
        makers = {
            "loss": lambda: LossFigure("iteration", s["loss"], size, x),
            "loss_time": lambda: LossFigure("elapsed", s["loss"], size, x),
            "gradient": lambda: GradientFigure(s["loss"], size, x),
            "split": lambda: SplitFigure(s["split"], size, x, short),
            "stragglers": lambda: StragglerFigure(
                s["heatmap"], s["stragglers"], heatmap_size, x, short
            ),
            "bytes": lambda: BytesFigure(s["bytes"], size, x),
            "bytes_cumulative": lambda: CumulativeBytesFigure(s["bytes"], size, x),
            "workers": lambda: WorkersTable(s["workers"], table),
            "staleness": lambda: StalenessFigure(s["staleness"], size),
            "consensus": lambda: ConsensusFigure(s["consensus"], size, x),
        }
        return {name: makers[name]() for name in names}

    def _arrange(self, compact: bool) -> Any:
        f = self.figures
        stretch: dict[str, Any] = (
            {"sizing_mode": "stretch_width"} if compact and "sizing_mode" in self._size else {}
        )
        rows: list[Any]
        if compact:
            rows = [row(f["loss"], f["split"], f["stragglers"], **stretch)]
        else:
            rows = [
                row(f["loss"], f["loss_time"]),
                row(f["gradient"], f["split"]),
                row(f["stragglers"], f["bytes"]),
                row(f["bytes_cumulative"]),
                row(f["staleness"], f["consensus"]),  # hidden unless recorded
                self.workers_table,
            ]
        return column(self.header, *rows, name="daskgd-dashboard", **stretch)

    # -- update ----------------------------------------------------------------------
    def update_empty(self) -> None:
        empty = xr.Dataset(coords={"iteration": np.array([], dtype=np.int64)})
        self._write(Frame(empty, split(empty)))

    def update(self, trace: xr.Dataset | None, memory: Memory | None = None) -> bool:
        """Show ``trace`` (None shows nothing); returns whether anything was redrawn."""
        key = (fingerprint(trace), tuple(sorted((memory or {}).items())))
        if key == self._last:
            return False
        self._last = key
        if trace is None:
            self.update_empty()
            return True
        frame = Frame(trace, split(trace), memory, pending_span(trace))
        self._write(frame)
        self._header.update(frame)
        for part in self._components.values():
            part.update(frame)
        return True

    def _write(self, frame: Frame) -> None:
        trace, parts = frame.trace, frame.parts
        cells, marks = heatmap_columns(trace, short=self.layout_name == "compact")
        bytes_data, unit, cumulative_unit = bytes_columns(parts)
        new = {
            "loss": loss_columns(trace),
            "split": split_columns(parts),
            "heatmap": cells,
            "stragglers": marks,
            "bytes": bytes_data,
            "workers": worker_columns(trace, parts, frame.memory),
            "staleness": staleness_columns(trace),
            "consensus": consensus_columns(trace),
        }
        for name, data in new.items():
            # The page redraws every plot of a source that changed: leave unchanged ones.
            # A trace that grew sends its new rows (and its last rows that changed) only.
            source = self.sources[name]
            change = _change(source.data, data) if STREAM else _REPLACE
            if change is None:
                continue
            kind, rows, patches = change
            if kind == "replace":
                source.data = dict(data)
                continue
            if patches:
                source.patch(patches)
            if rows:
                source.stream(rows)
        frame.columns = {**new, "bytes_unit": unit, "bytes_cumulative_unit": cumulative_unit}


#: Whether a grown trace's sources are streamed (False: replaced; for measurements).
STREAM = True

#: Changed old rows patched in place at most (more: the source is replaced).
_MAX_PATCHED_ROWS = 64

_REPLACE = ("replace", None, None)


def _change(old: dict, new: dict) -> tuple[str, dict | None, dict | None] | None:
    """How ``old`` columns become ``new``: None (equal; NaN = NaN), ``("append", rows,
    patches)`` (new rows appended to a prefix of the old ones, the old rows from the first
    that differs patched in place) or ``("replace", None, None)``."""
    if old.keys() != new.keys():
        return _REPLACE
    arrays = {name: (np.asarray(old[name]), np.asarray(value)) for name, value in new.items()}
    if any(a.ndim != 1 or b.ndim != 1 or a.dtype != b.dtype for a, b in arrays.values()):
        return _REPLACE
    n_old = {len(a) for a, _ in arrays.values()}
    n_new = {len(b) for _, b in arrays.values()}
    if len(n_old) > 1 or len(n_new) > 1:
        return _REPLACE
    n_old_rows, n_new_rows = min(n_old, default=0), min(n_new, default=0)
    if n_new_rows < n_old_rows:
        return _REPLACE
    first = n_old_rows  # the first old row that differs
    for a, b in arrays.values():
        same = a == b[:n_old_rows]
        if a.dtype.kind in "fc":
            same |= np.isnan(a) & np.isnan(b[:n_old_rows])
        if not same.all():
            first = min(first, int(np.argmin(same)))
    if first == n_old_rows == n_new_rows:
        return None
    if first == 0 or n_old_rows - first > _MAX_PATCHED_ROWS:
        return _REPLACE  # another trace (or an empty source): all of it
    patches = None
    if first < n_old_rows:
        patches = {
            name: [(slice(first, n_old_rows), b[first:n_old_rows])]
            for name, (_, b) in arrays.items()
        }
    rows = None
    if n_new_rows > n_old_rows:
        rows = {name: b[n_old_rows:] for name, (_, b) in arrays.items()}
    return "append", rows, patches
