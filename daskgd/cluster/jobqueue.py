"""HPC clusters through dask-jobqueue: SLURM, PBS, SGE, LSF and HTCondor.

The cluster is built from the user's jobqueue configuration (``~/.config/dask/jobqueue.yaml``,
dask-jobqueue's own keys under ``jobqueue.<kind>``); the arguments of :class:`JobqueueOptions`
that are not None override it. Each job runs ``dask worker`` processes that connect back to a
scheduler started in this process.

Unless the configuration (``interface``, ``scheduler-options: {host: ...}``) or
``interface=`` says otherwise, the scheduler and its dashboard listen on 127.0.0.1 only, as
everything daskgd starts: workers on other nodes then cannot reach it, and the wait for
workers says so. On a real cluster set ``interface`` (e.g. ``ib0``) to the network the
compute nodes share with this node.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import re
import signal
import threading
from collections.abc import Iterator
from typing import Any

from daskgd.data import waits

#: kind -> (dask_jobqueue class, the command that shows the user's jobs)
KINDS: dict[str, tuple[str, str]] = {
    "slurm": ("SLURMCluster", "squeue -u $USER"),
    "pbs": ("PBSCluster", "qstat -u $USER"),
    "sge": ("SGECluster", "qstat -u $USER"),
    "lsf": ("LSFCluster", "bjobs"),
    "htcondor": ("HTCondorCluster", "condor_q"),
}
INSTALL_HINT = (
    "needs dask-jobqueue, which is not installed: pip install 'daskgd[hpc]' "
    "(or conda install -c conda-forge dask-jobqueue)"
)
LOOPBACK = "127.0.0.1"


class WorkersNotReadyError(ConnectionError):
    """The batch jobs did not bring up their workers in time."""


@dataclasses.dataclass(frozen=True)
class JobqueueOptions:
    """What to ask the batch system for; None keeps the jobqueue configuration's value.

    Parameters
    ----------
    kind : {"slurm", "pbs", "sge", "lsf", "htcondor"}
    jobs : int
        Number of batch jobs to submit.
    cores, memory, processes, walltime, queue, account, interface, log_directory
        dask-jobqueue's job options of the same names (``memory`` like ``"4GB"``,
        ``walltime`` like ``"01:00:00"``); ``account`` is ``project`` for SGE/LSF.
    lifetime : str, optional
        Close each worker after this long (``dask worker --lifetime``, e.g. ``"50m"``),
        staggered, and keep ``jobs`` jobs running by submitting new ones: for fits longer
        than the walltime.
    wait_seconds : float
        How long to wait for the workers of all jobs to connect.
    """

    kind: str
    jobs: int = 1
    cores: int | None = None
    memory: str | None = None
    processes: int | None = None
    walltime: str | None = None
    queue: str | None = None
    account: str | None = None
    interface: str | None = None
    log_directory: str | None = None
    lifetime: str | None = None
    wait_seconds: float = 300.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"cluster kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in ("jobs", "cores", "processes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.wait_seconds > 0:
            raise ValueError(f"wait_seconds must be > 0, got {self.wait_seconds!r}")
        from dask.utils import parse_bytes, parse_timedelta

        if self.memory is not None:
            _with_unit("memory", self.memory, parse_bytes, "4GB")
        if self.lifetime is not None:
            _with_unit("lifetime", self.lifetime, parse_timedelta, "50m")

    @property
    def check_command(self) -> str:
        return KINDS[self.kind][1]


def _with_unit(name: str, text: str, parse: Any, example: str) -> float:
    """``parse(text)``, refusing a bare number: ``--memory 4`` would be 4 bytes."""
    try:
        if not re.search(r"[a-zA-Z]", str(text)):
            raise ValueError
        return float(parse(text))
    except (ValueError, TypeError, KeyError):
        raise ValueError(f"{name} needs a unit, e.g. {example!r}; got {text!r}") from None


def cluster_class(kind: str) -> Any:
    """The dask-jobqueue cluster class of ``kind``; ImportError with the install hint."""
    if kind not in KINDS:
        raise ValueError(f"cluster kind must be one of {', '.join(KINDS)}, got {kind!r}")
    before = signal.getsignal(signal.SIGINT)
    try:
        module = importlib.import_module("dask_jobqueue")
    except ImportError:
        raise ImportError(f"--cluster {kind} {INSTALL_HINT}") from None
    finally:
        # dask_jobqueue.runner (0.9) replaces the SIGINT handler at import by one that calls
        # sys.exit(): Ctrl-C then ended the fit with status 0 and no word. Put back ours.
        if threading.current_thread() is threading.main_thread() and before is not None:
            signal.signal(signal.SIGINT, before)
    return getattr(module, KINDS[kind][0])


def _configured(kind: str, key: str) -> Any:
    import dask

    return dask.config.get(f"jobqueue.{kind}.{key}", None)


def cluster_kwargs(options: JobqueueOptions) -> dict[str, Any]:
    """Keyword arguments of the dask-jobqueue class: the overrides and daskgd's defaults."""
    kwargs: dict[str, Any] = {}
    for name in ("cores", "memory", "processes", "walltime", "queue", "interface"):
        if getattr(options, name) is not None:
            kwargs[name] = getattr(options, name)
    if options.log_directory is not None:
        kwargs["log_directory"] = options.log_directory
    if options.account is not None:
        # SLURM, PBS and HTCondor call it account; SGE and LSF still call it project
        kwargs["project" if options.kind in ("sge", "lsf") else "account"] = options.account
    extra = list(_configured(options.kind, "worker-extra-args") or [])
    scheduler = dict(_configured(options.kind, "scheduler-options") or {})
    if _listens_on_loopback(options, scheduler):
        scheduler.setdefault("host", LOOPBACK)
        scheduler.setdefault("dashboard_address", f"{LOOPBACK}:0")
        extra += ["--host", LOOPBACK]
    scheduler.setdefault("dashboard_address", ":0")  # never the fixed 8787 of a shared node
    kwargs["scheduler_options"] = scheduler
    if options.lifetime is not None:
        # staggered by 5% so that the jobs do not all end in the same second
        from dask.utils import parse_timedelta

        stagger = max(1.0, 0.05 * float(parse_timedelta(options.lifetime)))
        extra += ["--lifetime", options.lifetime, "--lifetime-stagger", f"{stagger:g}s"]
    kwargs["worker_extra_args"] = extra
    return kwargs


def _listens_on_loopback(options: JobqueueOptions, scheduler: dict) -> bool:
    configured = options.interface or _configured(options.kind, "interface")
    return not configured and "host" not in scheduler and "interface" not in scheduler


def make_jobqueue_cluster(options: JobqueueOptions) -> Any:
    """A dask-jobqueue cluster with no job submitted yet (see :func:`jobqueue_client`)."""
    cls = cluster_class(options.kind)
    try:
        return cls(**cluster_kwargs(options))
    except ValueError as error:
        # dask-jobqueue's own message names its keyword; say where users set it
        message = " ".join(str(error).split())  # one line: dask-jobqueue's spans several
        raise ValueError(
            f"--cluster {options.kind}: {message} (set it in ~/.config/dask/jobqueue.yaml "
            f"under jobqueue.{options.kind}, or pass --cores / --memory)"
        ) from None


def job_script(options: JobqueueOptions) -> str:
    """The batch script one job would run, without submitting anything."""
    cluster = make_jobqueue_cluster(options)
    try:
        return cluster.job_script()
    finally:
        cluster.close(timeout=30)


def workers_per_job(cluster: Any) -> int:
    return int(cluster._dummy_job.worker_processes)


def wait_for_workers(client: Any, n_workers: int, options: JobqueueOptions) -> None:
    """Wait at most ``options.wait_seconds`` for ``n_workers``; WorkersNotReadyError names the way
    to check the jobs."""
    try:
        client.wait_for_workers(n_workers, timeout=options.wait_seconds)
    except TimeoutError:
        arrived = len(waits.scheduler_workers(client, what="counting the workers"))
        hint = ""
        address = client.scheduler.address
        if f"//{LOOPBACK}:" in address:
            hint = (
                f"; the scheduler listens on {address}, which workers on other nodes cannot "
                f"reach: set interface in jobqueue.yaml or pass --interface"
            )
        raise WorkersNotReadyError(
            f"{arrived} of {n_workers} workers connected within {options.wait_seconds:g} s; "
            f"check the jobs with `{options.check_command}` (still queued? failed? their "
            f"logs are in log_directory){hint}"
        ) from None


@contextlib.contextmanager
def jobqueue_client(options: JobqueueOptions) -> Iterator[Any]:
    """A Client on a dask-jobqueue cluster of ``options.jobs`` jobs, workers waited for.

    The jobs are cancelled and the scheduler closed when the block ends, also on an error
    or Ctrl-C. The cluster adapts between ``jobs`` and ``jobs`` jobs, so a job that ends
    (its walltime, ``lifetime``, a node lost) is replaced by a new one; the fit recomputes
    the lost chunks from their lineage, on the new workers when every job ended at once
    (:mod:`daskgd.data.restrictions`), waiting for them as long as its ``timeout``.
    """
    from distributed import Client

    from daskgd.data.restrictions import ensure_registered

    cluster = make_jobqueue_cluster(options)
    try:
        cluster.adapt(minimum_jobs=options.jobs, maximum_jobs=options.jobs)
        with Client(cluster) as client:
            ensure_registered(client, waits.DEFAULT_TIMEOUT_SECONDS)
            wait_for_workers(client, options.jobs * workers_per_job(cluster), options)
            yield client
    finally:
        _shut_down(cluster)


def _shut_down(cluster: Any) -> None:
    # A stopped fit must not leave jobs burning an allocation: cancel them first, after
    # stopping the adaptivity that would submit new ones.
    with contextlib.suppress(Exception):
        if getattr(cluster, "_adaptive", None) is not None:
            cluster._adaptive.stop()
    with contextlib.suppress(Exception):
        cluster.scale(0)
    with contextlib.suppress(Exception):
        cluster.close(timeout=30)
