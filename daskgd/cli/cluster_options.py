"""Where the command line runs: a LocalCluster, ``--scheduler ADDRESS`` or ``--cluster slurm``.

``--cluster KIND`` builds a dask-jobqueue cluster from the user's jobqueue configuration
(``~/.config/dask/jobqueue.yaml``); the flags of the "HPC" group override it.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import Any

from daskgd.cluster.jobqueue import KINDS, JobqueueOptions
from daskgd.data import waits

DEFAULT_WAIT_SECONDS = 300.0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def add_hpc_options(parser: argparse.ArgumentParser) -> None:
    """``--cluster`` and the dask-jobqueue overrides (all default to the configuration)."""
    group = parser.add_argument_group(
        "HPC (dask-jobqueue; unset options come from ~/.config/dask/jobqueue.yaml)"
    )
    group.add_argument(
        "--cluster",
        choices=list(KINDS),
        help="submit batch jobs that run the workers, through dask-jobqueue "
        "(needs daskgd[hpc]; default: no batch system)",
    )
    group.add_argument(
        "--jobs", type=_positive_int, default=None, metavar="N", help="batch jobs (default: 1)"
    )
    group.add_argument(
        "--cores", type=_positive_int, metavar="N", help="cores per job (default: config)"
    )
    group.add_argument(
        "--memory", metavar="SIZE", help="memory per job, e.g. 8GB (default: config)"
    )
    group.add_argument(
        "--processes",
        type=_positive_int,
        metavar="N",
        help="worker processes per job (default: config, else dask-jobqueue's choice)",
    )
    group.add_argument(
        "--walltime", metavar="HH:MM:SS", help="walltime of each job (default: config)"
    )
    group.add_argument("--queue", metavar="NAME", help="queue / partition (default: config)")
    group.add_argument(
        "--account", metavar="NAME", help="account / project charged (default: config)"
    )
    _add_job_lifecycle_options(group)


def _add_job_lifecycle_options(group: Any) -> None:
    """Where the jobs' workers listen, how long they live, log and are waited for."""
    group.add_argument(
        "--interface",
        metavar="NAME",
        help="network interface shared with the compute nodes, e.g. ib0 (default: config, "
        "else the scheduler listens on 127.0.0.1 only)",
    )
    group.add_argument(
        "--lifetime",
        metavar="TIME",
        help="end each worker after TIME (e.g. 50m, shorter than the walltime) and submit "
        "a new job in its place (default: workers live as long as their job)",
    )
    group.add_argument(
        "--log-directory", metavar="DIR", help="where jobs write their logs (default: config)"
    )
    group.add_argument(
        "--wait-timeout",
        type=_seconds,
        default=DEFAULT_WAIT_SECONDS,
        metavar="SECONDS",
        help=f"how long to wait for the jobs' workers (default: {DEFAULT_WAIT_SECONDS:g})",
    )
    group.add_argument(
        "--print-job-script",
        action="store_true",
        help="print the batch script of one job and exit, submitting nothing",
    )


_OVERRIDES = ("cores", "memory", "processes", "walltime", "queue", "account", "interface")


def default_jobs(args: argparse.Namespace) -> int:
    """Default --jobs: 1, or for ``scaling`` one job per worker of its largest M."""
    workers = getattr(args, "workers", 1)
    return max(workers) if isinstance(workers, list) else 1


def jobqueue_options(args: argparse.Namespace) -> Any:
    """The JobqueueOptions the flags ask for, checked (None without ``--cluster``).

    Raises ValueError naming the flag, before anything is started or submitted.
    """
    kind = getattr(args, "cluster", None)
    given = [
        name for name in (*_OVERRIDES, "lifetime", "log_directory", "jobs") if _get(args, name)
    ]
    if kind is None:
        if given or getattr(args, "print_job_script", False):
            flags = (
                ", ".join("--" + name.replace("_", "-") for name in given) or "--print-job-script"
            )
            raise ValueError(f"{flags} only apply with --cluster {{{','.join(KINDS)}}}")
        return None
    if getattr(args, "scheduler", None):
        raise ValueError("give either --scheduler or --cluster, not both")
    from daskgd.cluster.jobqueue import cluster_class

    try:
        cluster_class(kind)
    except ImportError as error:
        raise ValueError(str(error)) from None
    values = {name: _get(args, name) for name in _OVERRIDES}
    return JobqueueOptions(
        kind=kind,
        jobs=_get(args, "jobs") or default_jobs(args),
        log_directory=_get(args, "log_directory"),
        lifetime=_get(args, "lifetime"),
        wait_seconds=args.wait_timeout,
        **values,
    )


def _get(args: argparse.Namespace, name: str) -> Any:
    return getattr(args, name, None)


@contextlib.contextmanager
def jobqueue_client(options: Any) -> Iterator[Any]:
    """The jobqueue client, with a line saying what was submitted."""
    from daskgd.cluster.jobqueue import jobqueue_client as open_client

    with open_client(options) as client:
        workers = len(waits.scheduler_workers(client, what="counting the workers"))
        print(
            f"{options.kind} cluster: {options.jobs} jobs, {workers} workers, scheduler "
            f"{client.scheduler.address}, dashboard {client.dashboard_link}"
        )
        yield client


def print_job_script(options: Any) -> int:
    from daskgd.cluster.jobqueue import job_script

    print(job_script(options))
    return 0
