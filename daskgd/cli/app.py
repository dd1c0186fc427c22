"""Command line: ``daskgd demo``, ``daskgd run``, ``daskgd report`` and ``daskgd scaling``.

Errors are one line on stderr (``daskgd: error: ...``) and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

#: Problem of ``daskgd demo``: about half a minute of gd on a 2-core laptop.
DEMO_SAMPLES = 1_000_000
DEMO_FEATURES = 100
DEMO_CHUNKS = 8
DEMO_MAX_ITER = 300
DEMO_TOL = 1e-8

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, ConnectionError, FloatingPointError)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _learning_rate(text: str) -> Any:
    return text if text == "auto" else _float(text)


def _add_cluster_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster")
    group.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="address of a running Dask scheduler (default: start a LocalCluster)",
    )
    group.add_argument(
        "--workers",
        type=_positive_int,
        default=2,
        metavar="N",
        help="worker processes of the embedded LocalCluster (default: 2)",
    )
    group.add_argument(
        "--timeout",
        type=_float,
        default=10.0,
        metavar="SECONDS",
        help="how long to try to reach --scheduler (default: 10)",
    )


def _add_fit_options(
    parser: argparse.ArgumentParser, *, solver: str, max_iter: int, tol: float = 1e-5
) -> None:
    from daskgd.optim.registry import OPTIMIZERS
    from daskgd.strategies import STRATEGIES

    group = parser.add_argument_group("fit")
    group.add_argument(
        "--solver",
        default=solver,
        choices=sorted(OPTIMIZERS),
        help=f"optimizer (default: {solver})",
    )
    group.add_argument(
        "--strategy",
        default="mapreduce",
        choices=list(STRATEGIES),
        help="how the partial sums are gathered: "
        + "; ".join(f"{name}: {STRATEGIES.summary(name)}" for name in STRATEGIES)
        + " (default: mapreduce)",
    )
    group.add_argument(
        "--max-iter",
        type=_positive_int,
        default=max_iter,
        metavar="N",
        help=f"maximum number of iterations (default: {max_iter})",
    )
    group.add_argument(
        "--tol",
        type=_float,
        default=tol,
        help=f"stop when the inf-norm of the gradient is <= TOL (default: {tol:g})",
    )
    group.add_argument(
        "--learning-rate",
        type=_learning_rate,
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


def _checked(parse: Any) -> Any:
    """An argparse ``type`` from an emulation parser (its ValueError as usage error)."""

    def check(text: str) -> str:
        try:
            parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return text

    return check


def _add_emulation_options(parser: argparse.ArgumentParser) -> None:
    from daskgd.runtime import codecs as compression
    from daskgd.runtime import emulation

    group = parser.add_argument_group("emulation and compression (docs/emulation.md)")
    group.add_argument(
        "--latency",
        type=_checked(emulation.parse_duration),
        metavar="TIME",
        help="latency added to every transfer of w or a partial sum, e.g. 5ms",
    )
    group.add_argument(
        "--bandwidth",
        type=_checked(emulation.parse_bandwidth),
        metavar="RATE",
        help="emulated link bandwidth, e.g. 100MB/s or 1Gbit/s",
    )
    group.add_argument(
        "--straggler",
        action="append",
        type=_checked(emulation.parse_straggler),
        metavar="SPEC",
        help="slow worker: INDEX:FACTORx (e.g. 1:3x), or exp:MEAN / lognormal:MEAN[:seed=N] "
        "random delays per chunk (repeatable)",
    )
    group.add_argument(
        "--fail",
        action="append",
        type=_checked(emulation.parse_failure),
        metavar="SPEC",
        help="kill worker INDEX after iteration T (INDEX@T), or each worker with "
        "probability p per iteration (p=0.01[,seed=N]) (repeatable)",
    )
    group.add_argument(
        "--transfer-dtype",
        type=_checked(compression.get_codec),
        default="float64",
        metavar="CODEC",
        help="codec of w and partial gradients: float64 (default), float32, float16, "
        "bfloat16, int8, topk:F",
    )


def _emulation(args: argparse.Namespace) -> Any:
    """The Emulation the flags ask for, or None."""
    if not (args.latency or args.bandwidth or args.straggler or args.fail):
        return None
    from daskgd.runtime.emulation import Emulation

    return Emulation.from_strings(args.latency, args.bandwidth, args.straggler, args.fail)


def build_parser() -> argparse.ArgumentParser:
    """The ``daskgd`` argument parser with its sub-commands."""
    parser = argparse.ArgumentParser(
        prog="daskgd",
        description="Data-parallel gradient descent on a Dask cluster, measured.",
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="fit a generated logistic problem on an embedded LocalCluster",
        description="Generate a logistic-regression problem on the workers of a LocalCluster "
        "(or --scheduler), fit it with gradient descent and print where the time went.",
    )
    demo.add_argument("--samples", type=_positive_int, default=DEMO_SAMPLES, metavar="N")
    demo.add_argument("--features", type=_positive_int, default=DEMO_FEATURES, metavar="D")
    demo.add_argument(
        "--chunks",
        type=_positive_int,
        default=DEMO_CHUNKS,
        metavar="K",
        help=f"number of row chunks (default: {DEMO_CHUNKS})",
    )
    demo.add_argument("--seed", type=int, default=0)
    _add_fit_options(demo, solver="gd", max_iter=DEMO_MAX_ITER, tol=DEMO_TOL)
    _add_cluster_options(demo)
    _add_emulation_options(demo)
    demo.set_defaults(handler=_demo)

    run = commands.add_parser(
        "run",
        help="fit a model on your data",
        description=(
            "Fit a model on data from .npy files, a zarr store, a netCDF file, or a CSV or "
            "Parquet table (--target COLUMN; --features COLUMN ...: default every other column)."
        ),
    )
    run.add_argument(
        "data",
        type=Path,
        help="X as .npy, a zarr store / netCDF file, or a .csv / .parquet table",
    )
    run.add_argument(
        "--target",
        required=True,
        help="y: a .npy path, or the name of the target array/variable/column in DATA",
    )
    run.add_argument(
        "--features",
        nargs="+",
        metavar="NAME",
        help="names of the feature arrays/variables/columns (default: all but the target)",
    )
    run.add_argument("--model", default="logistic", choices=["logistic", "linear", "ridge"])
    run.add_argument("--penalty", default="l2", choices=["l2", "l1", "elasticnet", "none"])
    run.add_argument(
        "--C",
        type=_float,
        default=1.0,
        dest="C",
        help="inverse regularisation strength of --model logistic (default: 1)",
    )
    run.add_argument(
        "--alpha",
        type=_float,
        default=1.0,
        help="regularisation strength of --model ridge (default: 1)",
    )
    run.add_argument(
        "--l1-ratio",
        type=_float,
        default=0.5,
        help="elastic-net mixing with --penalty elasticnet (default: 0.5)",
    )
    run.add_argument("--no-intercept", action="store_true", help="fit without an intercept")
    _add_fit_options(run, solver="lbfgs", max_iter=1000)
    _add_cluster_options(run)
    _add_emulation_options(run)
    run.set_defaults(handler=_run)
    _add_report_command(commands)
    _add_scaling_command(commands)
    return parser


def _add_report_command(commands: Any) -> None:
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


def _add_scaling_command(commands: Any) -> None:
    from daskgd.optim.registry import OPTIMIZERS
    from daskgd.strategies import STRATEGIES

    scaling = commands.add_parser(
        "scaling",
        help="measure speedup and the time split on 1, 2, 4, ... worker processes",
        description="Run the same generated logistic fit on a LocalCluster of each number of "
        "worker processes (or on the first M workers of --scheduler); save T(m), speedup, "
        "efficiency and the compute / communication / wait split per m, and write an HTML "
        "report next to it.",
    )
    scaling.add_argument("--workers", type=_positive_int, nargs="+", default=[1, 2], metavar="M")
    scaling.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="a running Dask scheduler: use the first M of its workers for each M "
        "(default: a LocalCluster of M processes)",
    )
    scaling.add_argument(
        "--timeout",
        type=_float,
        default=10.0,
        metavar="SECONDS",
        help="how long to try to reach --scheduler (default: 10)",
    )
    scaling.add_argument("--samples", type=_positive_int, default=200_000, metavar="N")
    scaling.add_argument("--features", type=_positive_int, default=50, metavar="D")
    scaling.add_argument("--solver", default="gd", choices=sorted(OPTIMIZERS))
    scaling.add_argument(
        "--strategy",
        default="mapreduce",
        choices=list(STRATEGIES),
        help="how the partial sums are gathered (default: mapreduce)",
    )
    scaling.add_argument("--max-iter", type=_positive_int, default=20, metavar="K")
    scaling.add_argument("--chunks", type=_positive_int, default=None, metavar="ROWS")
    scaling.add_argument("--seed", type=int, default=0)
    scaling.add_argument(
        "--out", type=Path, default=Path("scaling.nc"), help="netCDF file (default scaling.nc)"
    )
    scaling.add_argument(
        "--report", type=Path, default=None, help="HTML report (default: OUT with .html)"
    )
    _add_emulation_options(scaling)
    scaling.set_defaults(handler=_scaling)


def _scaling(args: argparse.Namespace) -> int:
    from daskgd.lab.scaling import format_scaling, scaling, write_scaling_report

    for path in (args.out, args.report):
        if path is not None and not path.parent.is_dir():
            raise FileNotFoundError(f"output folder {str(path.parent)!r} does not exist")
    options = {
        "n_samples": args.samples,
        "n_features": args.features,
        "solver": args.solver,
        "max_iter": args.max_iter,
        "chunks": args.chunks,
        "random_state": args.seed,
        "estimator_options": {
            "emulation": _emulation(args),
            "transfer_dtype": args.transfer_dtype,
            "strategy": args.strategy,
        },
    }
    if args.scheduler:
        from daskgd.cluster.local import connect

        with connect(args.scheduler, timeout_seconds=args.timeout) as client:
            result = scaling(args.workers, client=client, **options)
    else:
        result = scaling(args.workers, **options)
    result.to_netcdf(args.out, engine="h5netcdf")
    report = write_scaling_report(result, args.report or args.out.with_suffix(".html"))
    print(format_scaling(result))
    print(f"scaling written to {args.out.resolve()}, report to {report.resolve()}")
    return 0


def _version() -> str:
    from daskgd import __version__

    return f"daskgd {__version__}"


@contextlib.contextmanager
def _client(args: argparse.Namespace) -> Iterator[Any]:
    from daskgd.cluster.local import connect, make_local_cluster

    if args.scheduler:
        client = connect(args.scheduler, timeout_seconds=args.timeout)
        with client:
            yield client
        return
    with make_local_cluster(args.workers) as cluster:
        from distributed import Client

        with Client(cluster) as client:
            print(
                f"LocalCluster: {args.workers} workers x 1 thread, dashboard "
                f"{client.dashboard_link}"
            )
            yield client


def _demo(args: argparse.Namespace) -> int:
    from daskgd.data.synthetic import make_classification
    from daskgd.estimators.linear import LogisticRegression

    emulation = _emulation(args)
    with _client(args) as client:
        chunk_rows = -(-args.samples // args.chunks)
        X, y = make_classification(
            args.samples, args.features, chunks=chunk_rows, random_state=args.seed
        )
        print(
            f"data: {args.samples:,} x {args.features} float64 "
            f"({args.samples * args.features * 8 / 1e6:,.0f} MB) in {X.numblocks[0]} chunks, "
            "generated on the workers"
        )
        model = LogisticRegression(
            solver=args.solver,
            max_iter=args.max_iter,
            tol=args.tol,
            learning_rate=args.learning_rate,
            strategy=args.strategy,
            client=client,
            verbose=not args.no_progress,
            transfer_dtype=args.transfer_dtype,
            emulation=emulation,
        )
        _fit_and_report(model, X, y, args, default_trace="daskgd-demo-trace.nc")
    return 0


@contextlib.contextmanager
def _live_dashboard(args: argparse.Namespace, client: Any) -> Iterator[list]:
    """``[LiveTrace]`` served on a Bokeh server while the block runs, or ``[]``."""
    if not args.dashboard:
        yield []
        return
    from daskgd.viz.dashboard import LiveTrace, serve

    host, _, port = args.dashboard_address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--dashboard-address must be HOST:PORT, got {args.dashboard_address!r}")
    live = LiveTrace()
    with serve(live, host, int(port), client=client) as dashboard:
        print(f"live dashboard: {dashboard.url}")
        yield [live]


def _fit_and_report(
    model: Any, X: Any, y: Any, args: argparse.Namespace, default_trace: str | None
) -> None:
    with _live_dashboard(args, model.client) as callbacks:
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(X, y, callbacks=callbacks)
        total = time.perf_counter() - start
        _report_fit(model, args, total, caught, default_trace)
        if callbacks and args.keep_open:
            print("dashboard still open; press Ctrl-C to stop")
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(1)


def _report_fit(
    model: Any, args: argparse.Namespace, total: float, caught: list, default_trace: str | None
) -> None:
    from daskgd.observe.summary import format_summary
    from daskgd.observe.trace import save_trace

    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    trace = model.trace_
    per_iteration = trace.wall_seconds.isel(iteration=slice(1, None))
    median_ms = float(per_iteration.median()) * 1e3 if per_iteration.size else float("nan")
    outcome = "converged" if model.converged_ else "stopped before tol"
    print(f"iterations: {int(trace.iteration[-1])} ({outcome} with tol={model.tol:g})")
    print(
        f"final loss: {float(trace.loss[-1]):.10g}   gradient inf-norm: "
        f"{float(trace.grad_norm[-1]):.3g}"
    )
    print(f"time: {total:.2f} s in all, {median_ms:.1f} ms per iteration (median)")
    print()
    print(format_summary(trace))
    path = args.trace_out or (Path(default_trace) if default_trace else None)
    if path is not None:
        saved = save_trace(trace, path)
        print(f"trace saved to {saved.resolve()} (open with daskgd.load_trace)")


def _run(args: argparse.Namespace) -> int:
    from daskgd.data import as_dask_arrays, frames
    from daskgd.estimators.linear import LinearRegression, LogisticRegression, Ridge

    X, y = _load_run_data(args)
    if frames.is_frame(X):  # a CSV or Parquet table: columns checked and named
        X, y = frames.frame_to_array(X)[1], frames.series_to_array(y)
    X, y = as_dask_arrays(X, y)
    common = {
        "fit_intercept": not args.no_intercept,
        "tol": args.tol,
        "max_iter": args.max_iter,
        "solver": args.solver,
        "learning_rate": args.learning_rate,
        "strategy": args.strategy,
        "verbose": not args.no_progress,
        "transfer_dtype": args.transfer_dtype,
        "emulation": _emulation(args),
    }
    if args.model == "logistic":
        penalty = None if args.penalty == "none" else args.penalty
        model = LogisticRegression(penalty, C=args.C, l1_ratio=args.l1_ratio, **common)
    elif args.model == "ridge":
        model = Ridge(args.alpha, **common)
    else:
        model = LinearRegression(**common)
    with _client(args) as client:
        model.set_params(client=client)
        _fit_and_report(model, X, y, args, default_trace=None)
    return 0


def _load_run_data(args: argparse.Namespace) -> tuple[Any, Any]:
    data: Path = args.data
    if not data.exists():
        raise FileNotFoundError(f"data path {str(data)!r} does not exist")
    from daskgd.data import frames

    if frames.table_kind(data) is not None:
        return frames.read_table(data, args.features, args.target)
    if data.suffix == ".npy":
        target = Path(args.target)
        if target.suffix != ".npy":
            raise ValueError(f"with X as .npy, --target must be a .npy path, got {args.target!r}")
        return data, target
    if data.suffix in (".nc", ".nc4", ".netcdf"):
        import xarray as xr

        dataset = xr.open_dataset(data, engine="h5netcdf", chunks={})
        return _from_dataset(dataset, args)
    return _from_zarr(data, args)


def _from_dataset(dataset: Any, args: argparse.Namespace) -> tuple[Any, Any]:
    from daskgd.data import as_dask_arrays

    return as_dask_arrays(dataset, target=args.target, features=args.features)


def _from_zarr(path: Path, args: argparse.Namespace) -> tuple[Any, Any]:
    from daskgd.data import as_dask_arrays

    features = args.features[0] if args.features and len(args.features) == 1 else "X"
    if args.features and len(args.features) > 1:
        raise ValueError("a zarr store needs one 2-D features array: pass one --features NAME")
    return as_dask_arrays(str(path), target=args.target, features=features)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``daskgd`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except USER_ERRORS as error:
        print(f"daskgd: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("daskgd: interrupted", file=sys.stderr)
        return 130
