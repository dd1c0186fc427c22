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

from daskgd.cli.cluster_options import (
    add_hpc_options,
    jobqueue_client,
    jobqueue_options,
    print_job_script,
)
from daskgd.cli.emulation_options import add_emulation_options, emulation_from
from daskgd.cli.help_text import fill_all
from daskgd.cli.predict import add_predict_command
from daskgd.cli.results import (
    add_model_options,
    check_model_out,
    check_visible_to_workers,
    result_table,
    save_fitted_model,
)
from daskgd.cli.run_data import data_paths, load_run_data

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
    parser: argparse.ArgumentParser, *, solver: str, max_iter: Any, tol: Any
) -> None:
    """``max_iter``/``tol`` None: the Python API's default of the model (shown as text)."""
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
        default=None if isinstance(max_iter, str) else max_iter,
        metavar="N",
        help=f"maximum number of iterations (default: {max_iter})",
    )
    group.add_argument(
        "--tol",
        type=_float,
        default=None if isinstance(tol, str) else tol,
        help=f"stop when the inf-norm of the gradient is <= TOL (default: {tol})",
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
    # gd, not the API's lbfgs: the demo shows the lecture's method and its time split
    _add_fit_options(demo, solver="gd", max_iter=DEMO_MAX_ITER, tol=DEMO_TOL)
    _add_cluster_options(demo)
    add_hpc_options(demo)
    add_emulation_options(demo)
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
        default=0.0,
        help="elastic-net mixing with --penalty elasticnet (default: 0, as the Python API)",
    )
    run.add_argument("--no-intercept", action="store_true", help="fit without an intercept")
    add_model_options(run)
    _add_fit_options(
        run,
        solver="lbfgs",
        max_iter="the Python API's: 100 for logistic, 1000 for linear and ridge",
        tol="the Python API's: 1e-4 for logistic, 1e-6 for linear and ridge",
    )
    _add_cluster_options(run)
    add_hpc_options(run)
    add_emulation_options(run)
    run.set_defaults(handler=_run)
    _add_report_command(commands)
    _add_scaling_command(commands)
    add_predict_command(commands)
    fill_all(parser)
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
    scaling.add_argument(
        "--chunks",
        type=_positive_int,
        default=None,
        metavar="K",
        help="number of row chunks, as in demo (default: a multiple of every M, at most 64)",
    )
    scaling.add_argument("--seed", type=int, default=0)
    scaling.add_argument(
        "--out", type=Path, default=Path("scaling.nc"), help="netCDF file (default scaling.nc)"
    )
    scaling.add_argument(
        "--report", type=Path, default=None, help="HTML report (default: OUT with .html)"
    )
    add_hpc_options(scaling)
    add_emulation_options(scaling)
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
        "chunks": None if args.chunks is None else -(-args.samples // args.chunks),
        "random_state": args.seed,
        "estimator_options": {
            "emulation": emulation_from(args),
            "transfer_dtype": args.transfer_dtype,
            "strategy": args.strategy,
        },
    }
    if args.jobqueue is not None:
        with jobqueue_client(args.jobqueue) as client:
            result = scaling(args.workers, client=client, **options)
    elif args.scheduler:
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

    if args.jobqueue is not None:
        with jobqueue_client(args.jobqueue) as client:
            yield client
        return
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


def _progress(args: argparse.Namespace) -> bool:
    # a bar redrawn into a log file is thousands of lines: only on a terminal
    return not args.no_progress and sys.stderr.isatty()


def _demo_trace_path() -> str:
    """Where the demo's trace goes without --trace-out: a fresh temporary folder."""
    import tempfile

    return str(Path(tempfile.mkdtemp(prefix="daskgd-demo-")) / "trace.nc")


def _demo(args: argparse.Namespace) -> int:
    from daskgd.data.synthetic import make_classification
    from daskgd.estimators.linear import LogisticRegression

    emulation = emulation_from(args)
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
            verbose=_progress(args),
            transfer_dtype=args.transfer_dtype,
            emulation=emulation,
        )
        default_trace = None if args.trace_out else _demo_trace_path()
        _fit_and_report(model, X, y, args, default_trace=default_trace)
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
    n_iter = int(trace.iteration[-1])
    print(f"iterations: {n_iter} ({outcome} with tol={model.tol:g})")
    print(
        f"final loss: {float(trace.loss[-1]):.10g}   gradient inf-norm: "
        f"{float(trace.grad_norm[-1]):.3g}"
    )
    # the iterations' seconds are the summary's below; the rest is placing the data, start-up
    iterating = float(trace.wall_seconds.sum())
    print(
        f"time: {total:.2f} s in all = {total - iterating:.2f} s placing the data and "
        f"starting + {iterating:.2f} s in the {n_iter} iterations "
        f"({median_ms:.1f} ms per iteration, median)"
    )
    print()
    print(format_summary(trace))
    path = args.trace_out or (Path(default_trace) if default_trace else None)
    if path is not None:
        saved = save_trace(trace, path)
        print(f"trace saved to {saved.resolve()} (open with daskgd.load_trace)")


def _run(args: argparse.Namespace) -> int:
    from daskgd.data import as_dask_arrays, frames
    from daskgd.estimators.linear import LinearRegression, LogisticRegression, Ridge

    model_out = check_model_out(args.model_out)
    X, y = load_run_data(args)
    if frames.is_frame(X):  # a CSV or Parquet table: columns checked and named
        X, y = frames.frame_to_array(X)[1], frames.series_to_array(y)
    X, y = as_dask_arrays(X, y)
    common = {
        "fit_intercept": not args.no_intercept,
        "solver": args.solver,
        "learning_rate": args.learning_rate,
        "strategy": args.strategy,
        "verbose": _progress(args),
        "transfer_dtype": args.transfer_dtype,
        "emulation": emulation_from(args),
    }
    # unset: the Python API's default of the model
    common.update(
        {k: v for k, v in (("tol", args.tol), ("max_iter", args.max_iter)) if v is not None}
    )
    if args.model == "logistic":
        penalty = None if args.penalty == "none" else args.penalty
        model = LogisticRegression(penalty, C=args.C, l1_ratio=args.l1_ratio, **common)
    elif args.model == "ridge":
        model = Ridge(args.alpha, **common)
    else:
        model = LinearRegression(**common)
    with _client(args) as client:
        check_visible_to_workers(client, data_paths(args))
        model.set_params(client=client)
        _fit_and_report(model, X, y, args, default_trace=None)
        names = args.features if args.features and len(args.features) > 1 else None
        print()
        print(result_table(model, X, y, names))
        if model_out is not None:
            save_fitted_model(model, model_out, names)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``daskgd`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        # every option is checked before a cluster starts or a job is submitted
        args.jobqueue = jobqueue_options(args)
        if args.jobqueue is not None and args.print_job_script:
            return print_job_script(args.jobqueue)
        return int(args.handler(args) or 0)
    except USER_ERRORS as error:
        print(f"daskgd: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("daskgd: interrupted", file=sys.stderr)
        return 130
