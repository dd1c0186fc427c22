"""``daskgd report``: a standalone HTML page of a saved trace."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_report_command(commands: Any) -> None:
    report = commands.add_parser(
        "report",
        help="write a standalone HTML report of a saved trace",
        description="Write the plots and the time summary of a trace (.nc or .zarr, from "
        "--trace-out or daskgd.save_trace) to one HTML file that opens offline.",
    )
    report.add_argument("trace", type=Path, help="the trace file (.nc) or store (.zarr)")
    report.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="HTML",
        help="where to write the report (default: TRACE with the suffix .html)",
    )
    report.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from daskgd.observe.summary import format_summary
    from daskgd.observe.trace import load_trace
    from daskgd.viz.report import write_report

    trace = load_trace(args.trace)
    output: Path = args.output or args.trace.with_suffix(".html")
    if output.is_dir():
        raise ValueError(f"output {str(output)!r} is a folder; give a file name")
    if not output.parent.is_dir():
        raise FileNotFoundError(f"output folder {str(output.parent)!r} does not exist")
    write_report(trace, output)
    print(format_summary(trace))
    print(f"report written to {output.resolve()}")
    return 0
