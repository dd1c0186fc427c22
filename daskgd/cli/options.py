"""The command line's shared options: value parsers and option groups."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def positive_number(text: str) -> float:
    value = number(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def nonnegative_number(text: str) -> float:
    value = number(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def learning_rate_value(text: str) -> Any:
    return text if text == "auto" else number(text)


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    from daskgd.cluster.local import LOCALHOST
    from daskgd.data.waits import DEFAULT_TIMEOUT_SECONDS

    group = parser.add_argument_group("cluster")
    group.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="address of a running Dask scheduler (default: start a LocalCluster)",
    )
    group.add_argument(
        "--workers",
        type=positive_int,
        default=2,
        metavar="N",
        help="worker processes of the embedded LocalCluster (default: 2)",
    )
    group.add_argument(
        "--host",
        default=LOCALHOST,
        metavar="ADDRESS",
        help=f"interface the embedded LocalCluster and its Dask dashboard listen on "
        f"(default: {LOCALHOST}, this machine only; 0.0.0.0 opens them to the network)",
    )
    add_wait_options(group, DEFAULT_TIMEOUT_SECONDS)


def add_wait_options(group: Any, default_timeout: float) -> None:
    group.add_argument(
        "--timeout",
        type=positive_number,
        default=default_timeout,
        metavar="SECONDS",
        help="the longest the scheduler may leave a request unanswered (connecting, and "
        "every request of the fit), and the longest a fit waits for workers when all "
        f"were lost, before daskgd stops with an error (default: {default_timeout:g})",
    )
    group.add_argument(
        "--wait-for-workers",
        type=nonnegative_number,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for a first worker when the cluster has none (default: 0)",
    )


def add_fit_options(
    parser: argparse.ArgumentParser, *, solver: str, max_iter: int, tol: float = 1e-5
) -> None:
    group = parser.add_argument_group("fit")
    group.add_argument(
        "--solver",
        default=solver,
        choices=["gd", "nesterov", "lbfgs", "sgd"],
        help=f"optimizer (default: {solver})",
    )
    group.add_argument(
        "--max-iter",
        type=positive_int,
        default=max_iter,
        metavar="N",
        help=f"maximum number of iterations (default: {max_iter})",
    )
    group.add_argument(
        "--tol",
        type=number,
        default=tol,
        help=f"stop when the inf-norm of the gradient is <= TOL (default: {tol:g})",
    )
    group.add_argument(
        "--learning-rate",
        type=learning_rate_value,
        default="auto",
        help="step size of gd/nesterov/sgd, or 'auto' (default)",
    )
    group.add_argument(
        "--trace-out",
        type=Path,
        metavar="PATH",
        help="where to save the trace (.nc netCDF or .zarr)",
    )
    group.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    group.add_argument(
        "--dashboard",
        action="store_true",
        help="serve a live dashboard of the fit (Bokeh) and print its URL",
    )
    group.add_argument(
        "--dashboard-address",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="where the live dashboard listens (default: 127.0.0.1, free port)",
    )
    group.add_argument(
        "--keep-open",
        action="store_true",
        help="with --dashboard: keep serving after the fit until Ctrl-C",
    )


def checked(parse: Any) -> Any:
    """An argparse ``type`` from an emulation parser (its ValueError as usage error)."""

    def check(text: str) -> str:
        try:
            parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return text

    return check


def add_emulation_options(parser: argparse.ArgumentParser) -> None:
    from daskgd.runtime import codecs as compression
    from daskgd.runtime import emulation

    group = parser.add_argument_group("emulation and compression (docs/emulation.md)")
    group.add_argument(
        "--latency",
        type=checked(emulation.parse_duration),
        metavar="TIME",
        help="latency added to every transfer of w or a partial sum, e.g. 5ms",
    )
    group.add_argument(
        "--bandwidth",
        type=checked(emulation.parse_bandwidth),
        metavar="RATE",
        help="emulated link bandwidth, e.g. 100MB/s or 1Gbit/s",
    )
    group.add_argument(
        "--straggler",
        action="append",
        type=checked(emulation.parse_straggler),
        metavar="SPEC",
        help="slow worker: INDEX:FACTORx (e.g. 1:3x), or exp:MEAN / lognormal:MEAN[:seed=N] "
        "random delays per chunk (repeatable)",
    )
    group.add_argument(
        "--fail",
        action="append",
        type=checked(emulation.parse_failure),
        metavar="SPEC",
        help="kill worker INDEX after iteration T (INDEX@T), or each worker with "
        "probability p per iteration (p=0.01[,seed=N]) (repeatable)",
    )
    group.add_argument(
        "--transfer-dtype",
        type=checked(compression.get_codec),
        default="float64",
        metavar="CODEC",
        help="codec of w and partial gradients: float64 (default), float32, float16, "
        "bfloat16, int8, topk:F",
    )


def emulation_from(args: argparse.Namespace) -> Any:
    """The Emulation the flags ask for, or None."""
    if not (args.latency or args.bandwidth or args.straggler or args.fail):
        return None
    from daskgd.runtime.emulation import Emulation

    return Emulation.from_strings(args.latency, args.bandwidth, args.straggler, args.fail)
