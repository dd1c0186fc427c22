"""``daskgd compare``: several strategies on the same data and conditions, one report.

    daskgd compare --strategies mapreduce direct allreduce direct:backup_workers=1 \\
        --latency 5ms --straggler 1:3x -o report.html

A strategy is ``NAME`` or ``NAME:OPTION=VALUE[,OPTION=VALUE...]``, the options of
``daskgd.strategies.get_strategy(NAME, ...)`` (``parameter-server:staleness=2``,
``gossip:topology=ring``, ``local-sgd:local_steps=8``); values are read as integers,
numbers, ``none``, ``true``/``false`` or else text. Every strategy, its options and the
optimizer it must run are checked before a cluster starts.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Any

from daskgd.cli.cluster_options import add_hpc_options
from daskgd.cli.connection import client_for
from daskgd.cli.options import (
    add_cluster_options,
    add_emulation_options,
    emulation_from,
    learning_rate_value,
    nonnegative_number,
    number,
    positive_int,
)

#: The generated problem by default: a few seconds per strategy on 2 workers.
COMPARE_SAMPLES = 100_000
COMPARE_FEATURES = 20
COMPARE_CHUNKS = 8
COMPARE_MAX_ITER = 50

_OPTION = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _value(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def strategy_spec(text: str) -> tuple[str, dict]:
    """``NAME[:OPTION=VALUE,...]`` -> (name, options); an argparse ``type``."""
    from daskgd.strategies import STRATEGIES

    name, _, rest = text.partition(":")
    if name not in STRATEGIES:
        raise argparse.ArgumentTypeError(
            f"unknown strategy {name!r} in {text!r}; choose one of {list(STRATEGIES)}"
        )
    options: dict = {}
    for item in filter(None, rest.split(",")):
        key, equals, value = item.partition("=")
        key = key.strip()
        if not equals or not _OPTION.fullmatch(key):
            raise argparse.ArgumentTypeError(
                f"strategy option {item!r} in {text!r} is not OPTION=VALUE "
                "(e.g. direct:backup_workers=1)"
            )
        options[key.replace("-", "_")] = _value(value)
    return name, options


def add_compare_command(commands: Any) -> None:
    from daskgd.optim.registry import OPTIMIZERS

    parser = commands.add_parser(
        "compare",
        help="run several strategies on the same data and conditions; one HTML report",
        description="Fit the same model on the same data with each strategy, one after the "
        "other on one cluster under the same emulated conditions, and write one HTML report "
        "with them side by side: loss against time and against bytes, the busiest node's "
        "traffic, staleness and consensus distance when recorded, and a summary table.",
    )
    parser.add_argument(
        "--strategies",
        nargs="+",
        required=True,
        type=strategy_spec,
        metavar="NAME[:OPTION=VALUE,...]",
        help="the strategies, e.g. mapreduce direct allreduce direct:backup_workers=1",
    )
    parser.add_argument(
        "--labels", nargs="+", metavar="LABEL", help="one per strategy (default: the specs)"
    )
    _add_data_options(parser)
    _add_fit_options(parser, sorted(OPTIMIZERS))
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("compare.html"),
        metavar="HTML",
        help="where to write the report (default: compare.html)",
    )
    parser.add_argument(
        "--traces-out",
        type=Path,
        metavar="FOLDER",
        help="also save each run's trace there, as LABEL.nc (default: not saved)",
    )
    parser.add_argument("--no-progress", action="store_true", help="print no line per run")
    add_cluster_options(parser)
    add_hpc_options(parser)
    add_emulation_options(parser)
    parser.set_defaults(handler=_compare)


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "data (default: a generated problem, as daskgd demo; or --data as daskgd run)"
    )
    group.add_argument("--samples", type=positive_int, default=COMPARE_SAMPLES, metavar="N")
    group.add_argument("--features", type=positive_int, default=COMPARE_FEATURES, metavar="D")
    group.add_argument(
        "--chunks",
        type=positive_int,
        default=COMPARE_CHUNKS,
        metavar="K",
        help=f"number of row chunks (default: {COMPARE_CHUNKS})",
    )
    group.add_argument("--seed", type=int, default=0)
    group.add_argument(
        "--data",
        type=Path,
        metavar="PATH",
        help="X as .npy, or a zarr store / netCDF / CSV / Parquet holding features and target "
        "(default: the generated problem)",
    )
    group.add_argument(
        "--target", help="with --data: y as .npy, or its name in DATA (default: none)"
    )
    group.add_argument(
        "--columns",
        nargs="+",
        metavar="NAME",
        help="with --data: the feature names (default: all but the target)",
    )


def _add_fit_options(parser: argparse.ArgumentParser, solvers: list[str]) -> None:
    group = parser.add_argument_group("fit (the same for every strategy)")
    group.add_argument(
        "--model",
        default="logistic",
        choices=["logistic", "linear", "ridge"],
        help="the estimator every strategy fits (default: logistic)",
    )
    group.add_argument(
        "--solver",
        default="gd",
        choices=solvers,
        help="optimizer (default: gd, which every strategy can run)",
    )
    group.add_argument(
        "--learning-rate",
        type=learning_rate_value,
        default=1.0,
        help="step size (default: 1.0, a fixed step: asynchronous strategies cannot search lines)",
    )
    group.add_argument(
        "--max-iter",
        type=positive_int,
        default=COMPARE_MAX_ITER,
        metavar="N",
        help=f"updates of every run (default: {COMPARE_MAX_ITER})",
    )
    group.add_argument(
        "--tol",
        type=nonnegative_number,
        default=0.0,
        help="stop a run at this gradient inf-norm (default: 0, all --max-iter updates)",
    )
    group.add_argument(
        "--target-loss",
        type=number,
        default=None,
        metavar="LOSS",
        help="the summary's target (default: the largest of the runs' best losses)",
    )


def _check_paths(args: argparse.Namespace) -> None:
    output: Path = args.output
    if output.is_dir():
        raise ValueError(f"output {str(output)!r} is a folder; give a file name")
    if not output.parent.is_dir():
        raise FileNotFoundError(f"output folder {str(output.parent)!r} does not exist")
    if args.traces_out is not None and not args.traces_out.is_dir():
        raise FileNotFoundError(f"--traces-out folder {str(args.traces_out)!r} does not exist")
    if (args.target is None) != (args.data is None):
        raise ValueError("--data and --target go together")
    if args.columns and args.data is None:
        raise ValueError("--columns applies with --data only")
    if args.target_loss is not None and not math.isfinite(args.target_loss):
        raise ValueError(f"--target-loss must be finite, got {args.target_loss}")


def _check_emulation(args: argparse.Namespace, emulation: Any) -> None:
    """Straggler and failure indices against the LocalCluster's worker count."""
    if emulation is None or args.scheduler or getattr(args, "jobqueue", None) is not None:
        return
    emulation.resolve([f"tcp://127.0.0.1:{port}" for port in range(10000, 10000 + args.workers)])


def _load_data(args: argparse.Namespace) -> tuple[Any, Any]:
    if args.data is None:
        from daskgd.data.synthetic import make_classification, make_regression

        make = make_classification if args.model == "logistic" else make_regression
        rows = -(-args.samples // args.chunks)
        return make(args.samples, args.features, chunks=rows, random_state=args.seed)
    from daskgd.cli.run_data import load_run_data
    from daskgd.data import as_dask_arrays, frames

    request = argparse.Namespace(data=args.data, target=args.target, features=args.columns)
    X, y = load_run_data(request)
    if frames.is_frame(X):
        X, y = frames.frame_to_array(X)[1], frames.series_to_array(y)
    return as_dask_arrays(X, y)


def _compare(args: argparse.Namespace) -> int:
    from daskgd.lab.compare import compare, prepare_runs

    _check_paths(args)
    emulation = emulation_from(args)
    _check_emulation(args, emulation)
    setup = {
        "model": args.model,
        "solver": args.solver,
        "learning_rate": args.learning_rate,
        "max_iter": args.max_iter,
        "tol": args.tol,
        "transfer_dtype": args.transfer_dtype,
        "timeout": args.timeout,
        "emulation": emulation,
        "labels": args.labels,
    }
    prepare_runs(args.strategies, **setup)  # every run checked before a cluster starts
    X, y = _load_data(args)
    with client_for(args) as client:
        runs = compare(
            args.strategies,
            X,
            y,
            client=client,
            target_loss=args.target_loss,
            progress=not args.no_progress,
            **setup,
        )
        report = runs.write_report(args.output)
    print(runs.format())
    if args.traces_out is not None:
        from daskgd.observe.trace import save_trace

        for label, trace in runs.items():
            save_trace(trace, args.traces_out / f"{_file_name(label)}.nc")
        print(f"traces saved in {args.traces_out.resolve()}")
    print(f"report written to {report.resolve()}")
    return 0


def _file_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", label)
