"""Command line: ``daskgd demo``, ``run``, ``report``, ``scaling``, ``compare``, ``predict``.

One module per command (fit.py: demo and run; report.py; scaling.py; compare.py), their shared
options in options.py and the cluster they run on in connection.py. Errors are one line
on stderr (``daskgd: error: ...``) and exit status 2, whatever failed: bad input, a
scheduler that does not answer, workers all lost, or a bug (``--debug`` prints the
traceback as well).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import traceback
from collections.abc import Iterator, Sequence
from typing import Any

from daskgd.cli.cluster_options import jobqueue_options, print_job_script
from daskgd.cli.compare import add_compare_command
from daskgd.cli.fit import add_demo_command, add_run_command
from daskgd.cli.help_text import fill_all
from daskgd.cli.predict import add_predict_command
from daskgd.cli.report import add_report_command
from daskgd.cli.scaling import add_scaling_command
from daskgd.data.waits import ClusterTimeoutError, NoWorkersError

#: Errors whose message is all a user needs; any other error is printed with its type.
USER_ERRORS = (
    ValueError,
    TypeError,
    FileNotFoundError,
    ConnectionError,
    FloatingPointError,
    ClusterTimeoutError,
    NoWorkersError,
)

DEBUG_HELP = "on an error, print its traceback too"


class _WithParents:
    """``add_subparsers()`` whose every ``add_parser`` gets the given parent parsers."""

    def __init__(self, commands: Any, parents: list):
        self._commands, self._parents = commands, parents

    def add_parser(self, name: str, **options: Any) -> argparse.ArgumentParser:
        return self._commands.add_parser(name, parents=self._parents, **options)


def build_parser() -> argparse.ArgumentParser:
    """The ``daskgd`` argument parser with its sub-commands."""
    parser = argparse.ArgumentParser(
        prog="daskgd",
        description="Data-parallel gradient descent on a Dask cluster, measured.",
    )
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    commands: Any = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # --debug also after the command (daskgd run ... --debug), without resetting it there
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    commands = _WithParents(commands, [debug])

    add_demo_command(commands)
    add_run_command(commands)
    add_report_command(commands)
    add_scaling_command(commands)
    add_compare_command(commands)
    add_predict_command(commands)
    fill_all(parser)
    return parser


def _version() -> str:
    from daskgd import __version__

    return f"daskgd {__version__}"


def _one_line(error: BaseException) -> str:
    """The error as one line: its message, with its type unless it is a user error."""
    text = " ".join(str(error).split()) or repr(error)
    if isinstance(error, USER_ERRORS):
        return text
    return f"{type(error).__name__}: {text} (run with --debug for the traceback)"


@contextlib.contextmanager
def _quiet_distributed(debug: bool) -> Iterator[None]:
    """distributed's warnings and errors, not its INFO lines (--debug: all of them): a
    scheduler killed during a batched write logged its CommClosedError traceback at INFO,
    beside the command's one-line error. The level is restored after the command."""
    logger = logging.getLogger("distributed")
    level = logger.level
    if not debug:
        logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``daskgd`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _quiet_distributed(getattr(args, "debug", False)):
            # every option is checked before a cluster starts or a job is submitted
            args.jobqueue = jobqueue_options(args)
            if args.jobqueue is not None and args.print_job_script:
                return print_job_script(args.jobqueue)
            return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("daskgd: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the CLI's promise: one line, status 2
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"daskgd: error: {_one_line(error)}", file=sys.stderr)
        return 2
