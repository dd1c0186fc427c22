"""``daskgd scaling``: the same fit on 1, 2, 4, ... workers, and its report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from daskgd.cli.cluster_options import add_hpc_options
from daskgd.cli.connection import connected
from daskgd.cli.options import add_emulation_options, add_wait_options, emulation_from, positive_int


def add_scaling_command(commands: Any) -> None:
    from daskgd.data.waits import DEFAULT_TIMEOUT_SECONDS
    from daskgd.optim.registry import OPTIMIZERS
    from daskgd.strategies import STRATEGIES

    scaling = commands.add_parser(
        "scaling",
        help="measure speedup and the time split on 1, 2, 4, ... worker processes",
        description="Run the same generated logistic fit on a LocalCluster of each number of "
        "worker processes (or on the first M workers of --scheduler); save T(m), speedup, "
        "efficiency and the compute / communication / sync / overhead split per m, and write "
        "an HTML report next to it.",
    )
    scaling.add_argument("--workers", type=positive_int, nargs="+", default=[1, 2], metavar="M")
    scaling.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="a running Dask scheduler: use the first M of its workers for each M "
        "(default: a LocalCluster of M processes)",
    )
    add_wait_options(scaling, DEFAULT_TIMEOUT_SECONDS)
    scaling.add_argument("--samples", type=positive_int, default=200_000, metavar="N")
    scaling.add_argument("--features", type=positive_int, default=50, metavar="D")
    scaling.add_argument("--solver", default="gd", choices=sorted(OPTIMIZERS))
    scaling.add_argument(
        "--strategy",
        default="mapreduce",
        choices=list(STRATEGIES),
        help="how the partial sums are gathered (default: mapreduce)",
    )
    scaling.add_argument("--max-iter", type=positive_int, default=20, metavar="K")
    scaling.add_argument(
        "--chunks",
        type=positive_int,
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
    result: Any  # a Dataset: return_traces is not asked for
    if args.jobqueue is not None:
        from daskgd.cli.cluster_options import jobqueue_client

        with jobqueue_client(args.jobqueue) as client:
            result = scaling(args.workers, client=client, **options)
    elif args.scheduler:
        with connected(args) as client:
            result = scaling(args.workers, client=client, **options)
    else:
        result = scaling(args.workers, **options)
    result.to_netcdf(args.out, engine="h5netcdf")
    report = write_scaling_report(result, args.report or args.out.with_suffix(".html"))
    print(format_scaling(result))
    print(f"scaling written to {args.out.resolve()}, report to {report.resolve()}")
    return 0
