"""``daskgd demo`` and ``daskgd run``: a fit on an embedded LocalCluster or a scheduler."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from daskgd.cli.cluster_options import add_hpc_options
from daskgd.cli.connection import client_for
from daskgd.cli.options import (
    add_cluster_options,
    add_emulation_options,
    add_fit_options,
    add_model_choice,
    model_from,
    positive_int,
)
from daskgd.cli.results import (
    add_model_options,
    check_model_out,
    check_visible_to_workers,
    result_table,
    save_fitted_model,
)
from daskgd.cli.run_data import add_data_options, data_paths, load_run_data
from daskgd.cli.strategy_options import strategy_parameters

#: Problem of ``daskgd demo``: about half a minute of gd on a 2-core laptop.
DEMO_SAMPLES = 1_000_000
DEMO_FEATURES = 100
DEMO_CHUNKS = 8
DEMO_MAX_ITER = 300
DEMO_TOL = 1e-8


def add_demo_command(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="fit a generated logistic problem on an embedded LocalCluster",
        description="Generate a logistic-regression problem on the workers of a LocalCluster "
        "(or --scheduler), fit it with gradient descent and print where the time went.",
    )
    demo.add_argument("--samples", type=positive_int, default=DEMO_SAMPLES, metavar="N")
    demo.add_argument("--features", type=positive_int, default=DEMO_FEATURES, metavar="D")
    demo.add_argument(
        "--chunks",
        type=positive_int,
        default=DEMO_CHUNKS,
        metavar="K",
        help=f"number of row chunks (default: {DEMO_CHUNKS})",
    )
    demo.add_argument("--seed", type=int, default=0)
    # gd, not the API's lbfgs: the demo shows the lecture's method and its time split
    add_fit_options(demo, solver="gd", max_iter=DEMO_MAX_ITER, tol=DEMO_TOL)
    add_cluster_options(demo)
    add_hpc_options(demo)
    add_emulation_options(demo)
    demo.set_defaults(handler=_demo)


def add_run_command(commands: Any) -> None:
    run = commands.add_parser(
        "run",
        help="fit a model on your data",
        description="Fit a model on data from .npy files, a zarr store, a netCDF file, a CSV "
        "or Parquet table, or a LIBSVM file (sparse).",
    )
    add_data_options(run)
    add_model_choice(run)
    run.add_argument("--no-intercept", action="store_true", help="fit without an intercept")
    add_model_options(run)
    add_fit_options(
        run,
        solver="lbfgs; nesterov for --model lasso and elasticnet (their L1 term needs a "
        "proximal solver)",
        max_iter="the Python API's: 100 for logistic, 1000 for the others",
        tol="the Python API's: 1e-4 for logistic, 1e-6 for the others",
    )
    add_cluster_options(run)
    add_hpc_options(run)
    add_emulation_options(run)
    run.set_defaults(handler=_run)


def _demo(args: argparse.Namespace) -> int:
    from daskgd.data.synthetic import make_classification
    from daskgd.estimators.linear import LogisticRegression

    strategy = strategy_parameters(args)  # checked before a cluster starts
    model = LogisticRegression(
        solver=args.solver,
        max_iter=args.max_iter,
        tol=args.tol,
        learning_rate=args.learning_rate,
        verbose=_progress(args),
        **strategy,
        timeout=args.timeout,
        wait_for_workers=args.wait_for_workers,
    )
    model.check_options()  # before a cluster starts
    with client_for(args) as client:
        model.set_params(client=client)
        chunk_rows = -(-args.samples // args.chunks)
        X, y = make_classification(
            args.samples, args.features, chunks=chunk_rows, random_state=args.seed
        )
        print(
            f"data: {args.samples:,} x {args.features} float64 "
            f"({args.samples * args.features * 8 / 1e6:,.0f} MB) in {X.numblocks[0]} chunks, "
            "generated on the workers"
        )
        default_trace = None if args.trace_out else _demo_trace_path()
        _fit_and_report(model, X, y, args, default_trace=default_trace)
    return 0


def _progress(args: argparse.Namespace) -> bool:
    # a bar redrawn into a log file is thousands of lines: only on a terminal
    return not args.no_progress and sys.stderr.isatty()


def _demo_trace_path() -> str:
    """Where the demo's trace goes without --trace-out: a fresh temporary folder."""
    import tempfile

    return str(Path(tempfile.mkdtemp(prefix="daskgd-demo-")) / "trace.nc")


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

    model_out = check_model_out(args.model_out)
    X, y = load_run_data(args)
    if frames.is_frame(X):  # a CSV or Parquet table: columns checked and named
        X, y = frames.frame_to_array(X)[1], frames.series_to_array(y)
    X, y = as_dask_arrays(X, y)
    common = {
        "fit_intercept": not args.no_intercept,
        "solver": args.solver,
        "learning_rate": args.learning_rate,
        "verbose": _progress(args),
        **strategy_parameters(args),
        "timeout": args.timeout,
        "wait_for_workers": args.wait_for_workers,
    }
    # unset: the Python API's default of the model
    common.update(
        {k: v for k, v in (("tol", args.tol), ("max_iter", args.max_iter)) if v is not None}
    )
    model = model_from(args, common)
    model.check_options()  # before a cluster starts
    with client_for(args) as client:
        check_visible_to_workers(client, data_paths(args))
        model.set_params(client=client)
        _fit_and_report(model, X, y, args, default_trace=None)
        names = args.features if args.features and len(args.features) > 1 else None
        print()
        print(result_table(model, X, y, names))
        if model_out is not None:
            save_fitted_model(model, model_out, names)
    return 0
