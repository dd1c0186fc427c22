"""HPC through dask-jobqueue: job scripts, and real fits through its job machinery.

No batch system here: ``tests/fake_slurm`` holds sbatch/squeue/scancel stand-ins that start
the job script dask-jobqueue generates as a local process (its pid as the job id) and
kill its process group on scancel. Everything else, SLURMCluster, its jobs, the
``dask worker`` command line in the script, is dask-jobqueue's own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask
import numpy as np
import pytest

_sigint = signal.getsignal(signal.SIGINT)
pytest.importorskip("dask_jobqueue")
# its import replaces the SIGINT handler by one calling sys.exit() (daskgd's own import of
# it puts the handler back, cluster_class): the other modules' tests keep Python's
signal.signal(signal.SIGINT, _sigint)
sklearn_linear = pytest.importorskip("sklearn.linear_model")

from daskgd.cluster.jobqueue import (  # noqa: E402
    JobqueueOptions,
    WorkersNotReadyError,
    cluster_kwargs,
    job_script,
    jobqueue_client,
)
from daskgd.engine.driver import Callback  # noqa: E402

# A job cluster submits a replacement for a lost job only after distributed's lost-worker
# timeout: these tests use a short one, not the session cluster's long one (conftest).
pytestmark = pytest.mark.usefixtures("job_lost_worker_timeout")

FAKE_SLURM = Path(__file__).parent / "fake_slurm"
CLI = [sys.executable, "-m", "daskgd.cli"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of a stand-in counts as gone
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setenv("PATH", f"{FAKE_SLURM}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_SPOOL", str(spool))
    yield spool
    for pid in _job_ids(spool, "submitted"):  # never leave a worker behind a failed test
        if _alive(pid):
            os.killpg(pid, 9) if os.getpgid(pid) == pid else os.kill(pid, 9)


def _job_ids(spool: Path, name: str) -> list[int]:
    path = spool / name
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def _wait_gone(pids: list[int], timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while (alive := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive


# --------------------------------------------------------------------------------------
# job scripts
# --------------------------------------------------------------------------------------


def test_slurm_job_script_carries_config_and_overrides():
    config = {"jobqueue.slurm.queue": "long", "jobqueue.slurm.walltime": "02:00:00"}
    with dask.config.set(config):
        script = job_script(
            JobqueueOptions("slurm", cores=4, memory="8GB", account="geo42", walltime="00:20:00")
        )
    lines = script.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    for directive in (
        "#SBATCH -p long",  # from the configuration
        "#SBATCH -A geo42",  # overrides
        "#SBATCH -t 00:20:00",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=8G",
    ):
        assert directive in lines, script
    assert "#SBATCH -t 02:00:00" not in lines
    (command,) = [line for line in lines if "distributed.cli.dask_worker" in line]
    assert " --host 127.0.0.1" in command  # loopback unless an interface is configured


def test_pbs_job_script_carries_directives():
    script = job_script(
        JobqueueOptions(
            "pbs", cores=2, memory="4GB", queue="workq", account="p1", walltime="00:30:00"
        )
    )
    lines = script.splitlines()
    for directive in (
        "#PBS -q workq",
        "#PBS -A p1",
        "#PBS -l walltime=00:30:00",
    ):
        assert directive in lines, script
    (select,) = [line for line in lines if line.startswith("#PBS -l select=")]
    assert "ncpus=2" in select and "mem=" in select


def test_an_interface_lets_the_scheduler_listen_beyond_loopback():
    options = JobqueueOptions("slurm", cores=1, memory="1GB", interface="lo")
    kwargs = cluster_kwargs(options)
    assert "host" not in kwargs["scheduler_options"]
    assert "--host" not in kwargs["worker_extra_args"]
    assert cluster_kwargs(JobqueueOptions("slurm"))["scheduler_options"]["host"] == "127.0.0.1"


def test_lifetime_goes_to_the_workers_staggered():
    extra = cluster_kwargs(JobqueueOptions("slurm", lifetime="40m"))["worker_extra_args"]
    assert extra[-4:] == ["--lifetime", "40m", "--lifetime-stagger", "120s"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kind": "torque"}, "cluster kind must be one of slurm, pbs"),
        ({"kind": "slurm", "jobs": 0}, "jobs must be a positive integer"),
        ({"kind": "slurm", "memory": "4"}, "memory needs a unit, e.g. '4GB'"),
        ({"kind": "slurm", "lifetime": "30"}, "lifetime needs a unit"),
    ],
)
def test_bad_options_name_the_option(options, message):
    with pytest.raises(ValueError, match=message):
        JobqueueOptions(**options)


def test_cli_reads_jobqueue_yaml_and_flags_override_it(tmp_path):
    (tmp_path / "jobqueue.yaml").write_text(
        "jobqueue:\n  slurm:\n    cores: 3\n    memory: 6GB\n    queue: fromconfig\n"
        "    account: acct\n"
    )
    env = {**os.environ, "DASK_CONFIG": str(tmp_path)}
    result = subprocess.run(
        [*CLI, "run", "X.npy", "--target", "y.npy", "--cluster", "slurm", "--queue", "debug"]
        + ["--print-job-script"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "#SBATCH -p debug" in lines and "#SBATCH -A acct" in lines
    assert "#SBATCH --cpus-per-task=3" in lines


def test_cli_without_dask_jobqueue_says_how_to_install(tmp_path):
    # a dask_jobqueue that cannot be imported, as in an install without daskgd[hpc]
    (tmp_path / "dask_jobqueue.py").write_text("raise ImportError('not installed')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    result = subprocess.run(
        [*CLI, "demo", "--cluster", "slurm", "--cores", "1", "--memory", "1GB"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "daskgd: error: --cluster slurm needs dask-jobqueue, which is not installed: "
        "pip install 'daskgd[hpc]' (or conda install -c conda-forge dask-jobqueue)"
    ]


# --------------------------------------------------------------------------------------
# fits through SLURMCluster and the stand-ins
# --------------------------------------------------------------------------------------


def _problem(n=4000, d=5, seed=3):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = (X @ rng.standard_normal(d) + 0.3 * rng.standard_normal(n) > 0).astype(np.int64)
    return X, y


def _small_jobs(**changes) -> JobqueueOptions:
    base = {"kind": "slurm", "jobs": 2, "cores": 1, "memory": "1GB", "processes": 1}
    return JobqueueOptions(**{**base, "wait_seconds": 90, **changes})


def test_fit_through_slurm_jobs_matches_scikit_learn_and_cancels_them(fake_slurm):
    import dask.array as da

    from daskgd.estimators.linear import LogisticRegression

    X, y = _problem()
    with jobqueue_client(_small_jobs()) as client:
        workers = client.ncores()
        assert len(workers) == 2
        job_pids = _job_ids(fake_slurm, "submitted")
        assert len(job_pids) == 2 and all(_alive(p) for p in job_pids)
        model = LogisticRegression(tol=1e-8, max_iter=500, client=client)
        model.fit(da.from_array(X, chunks=1000), da.from_array(y, chunks=1000))
        ran_on = set(model.trace_.worker.values)
    reference = sklearn_linear.LogisticRegression(tol=1e-10, max_iter=10_000).fit(X, y)
    np.testing.assert_allclose(model.coef_, reference.coef_, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(model.intercept_, reference.intercept_, rtol=1e-4, atol=1e-6)
    assert ran_on == set(workers)  # both jobs' workers computed gradients
    assert sorted(_job_ids(fake_slurm, "cancelled")) == sorted(job_pids)
    assert _wait_gone(job_pids) == []


def test_jobs_that_never_start_fail_naming_squeue_and_are_cancelled(fake_slurm, monkeypatch):
    monkeypatch.setenv("FAKE_SLURM_HOLD", "1")
    start = time.monotonic()
    with pytest.raises(WorkersNotReadyError) as caught:
        with jobqueue_client(_small_jobs(wait_seconds=3)):
            pytest.fail("the block must not run without workers")
    assert time.monotonic() - start < 60
    message = str(caught.value)
    assert "0 of 2 workers connected within 3 s" in message
    assert "squeue -u $USER" in message
    assert len(_job_ids(fake_slurm, "submitted")) == 2
    assert sorted(_job_ids(fake_slurm, "cancelled")) == sorted(_job_ids(fake_slurm, "submitted"))


def test_error_inside_the_block_cancels_the_jobs(fake_slurm):
    with pytest.raises(RuntimeError, match="boom"):
        with jobqueue_client(_small_jobs(jobs=1)):
            raise RuntimeError("boom")
    (job,) = _job_ids(fake_slurm, "submitted")
    assert _job_ids(fake_slurm, "cancelled") == [job]
    assert _wait_gone([job]) == []


class EndJobAt(Callback):
    """Ends one batch job after an iteration, as its walltime would: ``scancel`` sends its
    processes SIGTERM and they go."""

    def __init__(self, job: int, iteration: int):
        self.job, self.iteration, self.ended = job, iteration, False

    def on_iteration_end(self, record):
        if record.iteration == self.iteration:
            subprocess.run(["scancel", str(self.job)], check=True, timeout=30)
            assert _wait_gone([self.job]) == []
            self.ended = True


@pytest.mark.slow
def test_fit_goes_on_when_a_job_ends(fake_slurm):
    """A job ending mid-fit takes its worker and chunks along; the fit goes on with the other
    job's worker (and the replacement job's, once it joins), the lost chunks recomputed
    from their lineage, and ends where an undisturbed run ends."""
    from daskgd.data.synthetic import make_classification
    from daskgd.estimators.linear import LogisticRegression

    # generated where it is used: a lost chunk's lineage is its generator task
    X, y = make_classification(20_000, 5, chunks=2_500, random_state=11)
    options = {"solver": "gd", "tol": 0.0, "max_iter": 30, "learning_rate": 0.5}
    undisturbed = LogisticRegression(**options).fit(X, y)
    with jobqueue_client(_small_jobs()) as client:
        first_job = _job_ids(fake_slurm, "submitted")[0]
        ender = EndJobAt(first_job, iteration=10)
        model = LogisticRegression(**options, client=client, verbose=False)
        model.fit(X, y, callbacks=[ender])
        remaining = len(client.ncores())
    # the cluster keeps `jobs` jobs: a replacement is submitted, and may have joined
    assert ender.ended and remaining in (1, 2)
    assert int(model.trace_.iteration[-1]) == options["max_iter"]
    np.testing.assert_allclose(model.coef_, undisturbed.coef_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.intercept_, undisturbed.intercept_, rtol=1e-9, atol=1e-12)


def test_cli_run_through_slurm_jobs_gives_back_the_model(fake_slurm, tmp_path):
    X, y = _problem(n=3000, d=4, seed=8)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    result = subprocess.run(
        [*CLI, "run", "X.npy", "--target", "y.npy", "--cluster", "slurm", "--jobs", "2"]
        + ["--cores", "1", "--processes", "1", "--memory", "1GB", "--walltime", "00:05:00"]
        + ["--model-out", "m.json", "--no-progress", "--wait-timeout", "120", "--tol", "1e-8"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "slurm cluster: 2 jobs, 2 workers, scheduler tcp://127.0.0.1:" in result.stdout
    jobs = _job_ids(fake_slurm, "submitted")
    assert len(jobs) == 2 and sorted(_job_ids(fake_slurm, "cancelled")) == sorted(jobs)
    assert _wait_gone(jobs) == []
    scripts = sorted(fake_slurm.glob("job-*.sh"))
    assert "#SBATCH -t 00:05:00" in scripts[0].read_text().splitlines()

    from daskgd.estimators.persist import load_model

    saved = load_model(tmp_path / "m.json")
    reference = sklearn_linear.LogisticRegression(tol=1e-10, max_iter=10_000).fit(X, y)
    np.testing.assert_allclose(saved.coef, reference.coef_, rtol=1e-3, atol=1e-4)


def test_lifetime_replaces_a_job_that_ends(fake_slurm):
    with jobqueue_client(_small_jobs(jobs=1, lifetime="3s")) as client:
        first = _job_ids(fake_slurm, "submitted")
        deadline = time.monotonic() + 90
        while len(_job_ids(fake_slurm, "submitted")) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _wait_gone(first) == []  # the first job ended with its worker
        client.wait_for_workers(1, timeout=60)  # and a new job's worker took its place
        assert len(_job_ids(fake_slurm, "submitted")) >= 2
    assert _wait_gone(_job_ids(fake_slurm, "submitted")) == []


def test_ctrl_c_cancels_the_jobs(fake_slurm, tmp_path):
    process = subprocess.Popen(
        [*CLI, "demo", "--cluster", "slurm", "--jobs", "2", "--cores", "1", "--processes", "1"]
        + ["--memory", "1GB", "--samples", "20000", "--features", "5", "--max-iter", "100000"]
        + ["--tol", "0", "--no-progress", "--trace-out", str(tmp_path / "t.nc")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        for line in process.stdout:
            if line.startswith("data: "):  # the fit is starting
                break
        jobs = _job_ids(fake_slurm, "submitted")
        assert len(jobs) == 2
        time.sleep(2)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=90) == 130  # not dask_jobqueue's silent sys.exit()
    finally:
        if process.poll() is None:
            process.kill()
    assert "daskgd: interrupted" in process.stdout.read()
    assert sorted(_job_ids(fake_slurm, "cancelled")) == sorted(jobs)
    assert _wait_gone(jobs) == []


class EndEveryJobAt(Callback):
    """Ends every batch job at once after an iteration, as a common walltime would."""

    def __init__(self, spool: Path, iteration: int):
        self.spool, self.iteration, self.ended = spool, iteration, []

    def on_iteration_end(self, record):
        if record.iteration == self.iteration:
            self.ended = _job_ids(self.spool, "submitted")
            subprocess.run(["scancel", *map(str, self.ended)], check=True, timeout=30)
            assert _wait_gone(self.ended) == []


@pytest.mark.slow
def test_fit_waits_for_new_jobs_when_every_job_ends(fake_slurm):
    """Every job ends at once (their walltime): the cluster (adaptive, jobs..jobs) submits
    new jobs, the fit waits for their workers (bounded by its timeout), recomputes the data
    from its lineage on them and ends where an undisturbed run ends. Before, the lost
    chunks stayed in the scheduler's no-worker state and the fit waited for ever."""
    from daskgd.data.synthetic import make_classification
    from daskgd.estimators.linear import LogisticRegression

    X, y = make_classification(20_000, 5, chunks=2_500, random_state=11)
    options = {"solver": "gd", "tol": 0.0, "max_iter": 20, "learning_rate": 0.5}
    undisturbed = LogisticRegression(**options).fit(X, y)
    with jobqueue_client(_small_jobs()) as client:
        first = set(client.ncores())
        ender = EndEveryJobAt(fake_slurm, iteration=8)
        # New jobs come after the lost-worker timeout (15 s by default) and their workers
        # start a Python process each: more than the fit's default 30 s on a loaded machine.
        model = LogisticRegression(**options, client=client, verbose=False, timeout=120)
        model.fit(X, y, callbacks=[ender])
        last = set(client.ncores())
    assert len(ender.ended) == 2
    assert len(_job_ids(fake_slurm, "submitted")) >= 4  # new jobs replaced them
    assert last and not last & first  # the fit ended on the new jobs' workers
    assert int(model.trace_.iteration[-1]) == options["max_iter"]
    np.testing.assert_allclose(model.coef_, undisturbed.coef_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.intercept_, undisturbed.intercept_, rtol=1e-9, atol=1e-12)
    assert _wait_gone(_job_ids(fake_slurm, "submitted")) == []  # and were cancelled
