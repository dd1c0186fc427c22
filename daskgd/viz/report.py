"""A standalone HTML report of a trace: the dashboard's plots and the summary table.

One file, with BokehJS inlined, so it opens offline and can be mailed or archived with
the trace. ``daskgd report TRACE -o report.html`` writes it from a saved trace.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import xarray as xr

from daskgd.observe.summary import format_summary
from daskgd.viz.plots import TraceDashboard


def report_document(trace: xr.Dataset):
    """The Bokeh layout of the report: the dashboard above the text summary."""
    from bokeh.layouts import column
    from bokeh.models.widgets import Div

    dashboard = TraceDashboard()
    dashboard.update(trace)
    summary = Div(
        text=f'<pre style="font-size:12px">{html.escape(format_summary(trace))}</pre>',
        name="daskgd-summary",
    )
    return column(dashboard.layout, summary)


def write_report(trace: xr.Dataset, path: str | os.PathLike, title: str | None = None) -> Path:
    """Write ``trace`` as one self-contained HTML file at ``path``; returns the path.

    Parameters
    ----------
    trace : xarray.Dataset
        A trace (``docs/trace.md``); per-worker plots stay empty without a worker dim.
    path : str or path-like
        Where to write; parent folders must exist.
    title : str, optional
        Page title; default names the solver and model.
    """
    from bokeh.embed import file_html
    from bokeh.resources import INLINE

    path = Path(path)
    if title is None:
        what = " ".join(str(trace.attrs[k]) for k in ("model", "solver") if k in trace.attrs)
        title = f"daskgd report {what}".strip()
    page = file_html(report_document(trace), INLINE, title)
    path.write_text(page, encoding="utf-8")
    return path
