"""Never hang: a frozen scheduler, a cluster without workers, workers all lost, a
scheduler gone. Real ``dask scheduler`` / ``dask worker`` processes; every wait bounded;
the processes are cleaned up (SIGCONT, then killed) whatever the outcome."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import STARTUP_TIMEOUT, _kill_group, _subprocess_env, _tail

import daskgd
from daskgd.data.waits import NoWorkersError

CLI = [sys.executable, "-m", "daskgd.cli"]
#: The bound given to the fits here (--timeout): small, so the tests are quick.
TIMEOUT = 3
#: How long a test waits for the CLI to stop once it should: the bound, its clean-up
#: (a few requests of 0.5 s, closing the client within 5 s) and a loaded machine's slack.
STOP_WITHIN = 60


class DaskProcesses:
    """A ``dask scheduler`` and ``dask worker`` subprocesses on 127.0.0.1."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.env = _subprocess_env()
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.address = ""

    def _spawn(self, name: str, module: str, *args: str) -> subprocess.Popen:
        with open(self.folder / f"{name}.log", "wb") as log:
            return subprocess.Popen(
                [sys.executable, "-m", module, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                env=self.env,
                start_new_session=True,
            )

    def start_scheduler(self) -> str:
        scheduler_file = self.folder / "scheduler.json"
        self.scheduler = self._spawn(
            "scheduler", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
            "--port", "0", "--no-dashboard", "--scheduler-file", str(scheduler_file),
        )  # fmt: skip
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self.address:
            assert self.scheduler.poll() is None, _tail(self.folder / "scheduler.log")
            assert time.monotonic() < deadline, "no scheduler file"
            try:
                self.address = json.loads(scheduler_file.read_text())["address"]
            except (OSError, ValueError, KeyError):
                time.sleep(0.1)
        return self.address

    def start_workers(self, n: int, *, nanny: bool = False) -> None:
        for i in range(len(self.workers), len(self.workers) + n):
            self.workers.append(
                self._spawn(
                    f"worker-{i}",
                    "distributed.cli.dask_worker",
                    self.address,
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                    "--host",
                    "127.0.0.1",
                    "--nanny" if nanny else "--no-nanny",
                    "--local-directory",
                    str(self.folder / f"worker-{i}"),
                )  # fmt: skip
            )

    def wait_for_workers(self, n: int) -> None:
        from distributed import Client

        with Client(self.address, set_as_default=False, timeout=STARTUP_TIMEOUT) as probe:
            probe.wait_for_workers(n, timeout=STARTUP_TIMEOUT)

    def wait_for_fit(self, cli: subprocess.Popen) -> None:
        """Wait (bounded) until the CLI's fit is in its iterations: placing the small
        problem takes a few dozen task transitions, each iteration about ten."""
        from distributed import Client

        def transitions(dask_scheduler=None):
            return dask_scheduler.transition_counter

        deadline = time.monotonic() + 2 * STARTUP_TIMEOUT  # a CLI start on a loaded host
        with Client(self.address, set_as_default=False, timeout=STARTUP_TIMEOUT) as probe:
            while probe.run_on_scheduler(transitions) < 400:
                if cli.poll() is not None or time.monotonic() > deadline:
                    err = _tail(self.folder / "cli.err")
                    pytest.fail(
                        f"the fit never reached its iterations (status {cli.poll()}):\n{err}"
                    )
                time.sleep(0.1)

    def close(self) -> None:
        procs = [proc for proc in [*self.workers, self.scheduler] if proc is not None]
        for proc in procs:  # a frozen (SIGSTOPped) process would not act on SIGTERM
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        for proc in procs:
            _kill_group(proc, timeout=5)


@pytest.fixture
def dask_processes(tmp_path):
    processes = DaskProcesses(tmp_path)
    try:
        yield processes
    finally:
        processes.close()


@pytest.fixture(scope="module")
def npy_problem(tmp_path_factory):
    folder = tmp_path_factory.mktemp("npy")
    rng = np.random.default_rng(5)
    X = rng.standard_normal((2000, 4))
    y = (X @ [1.0, -2.0, 0.5, 0.0] + 0.5 * rng.standard_normal(2000) > 0).astype(np.int64)
    np.save(folder / "X.npy", X)
    np.save(folder / "y.npy", y)
    return folder


def _start_long_fit(address: str, problem: Path, folder: Path) -> subprocess.Popen:
    """``daskgd run`` with more iterations than it will ever reach, --timeout 3."""
    with open(folder / "cli.out", "wb") as out, open(folder / "cli.err", "wb") as err:
        return subprocess.Popen(
            [*CLI, "run", str(problem / "X.npy"), "--target", str(problem / "y.npy"),
             "--scheduler", address, "--timeout", str(TIMEOUT), "--solver", "gd",
             "--max-iter", "1000000", "--tol", "0", "--no-progress"],
            stdout=out, stderr=err, env=_subprocess_env(), start_new_session=True,
        )  # fmt: skip


def _stopped(cli: subprocess.Popen, folder: Path) -> tuple[int, str, float]:
    """(exit status, stderr, seconds to stop) of the CLI, waited for at most STOP_WITHIN."""
    start = time.monotonic()
    try:
        status = cli.wait(timeout=STOP_WITHIN)
    except subprocess.TimeoutExpired:
        _kill_group(cli, timeout=1)
        err = _tail(folder / "cli.err")
        pytest.fail(f"daskgd run still running {STOP_WITHIN} s later: it hangs\n{err}")
    return status, (folder / "cli.err").read_text(errors="replace"), time.monotonic() - start


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("daskgd: error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


def test_a_frozen_scheduler_stops_the_cli_with_one_line(dask_processes, npy_problem, tmp_path):
    """SIGSTOP: alive, connections open, answering nothing (a long GC pause, a saturated
    host). It used to hang `daskgd run` for good (> 240 s seen)."""
    address = dask_processes.start_scheduler()
    dask_processes.start_workers(2)
    dask_processes.wait_for_workers(2)
    cli = _start_long_fit(address, npy_problem, tmp_path)
    try:
        dask_processes.wait_for_fit(cli)
        os.killpg(dask_processes.scheduler.pid, signal.SIGSTOP)
        status, stderr, seconds = _stopped(cli, tmp_path)
    finally:
        _kill_group(cli, timeout=1)
    print(f"stopped {seconds:.1f} s after the scheduler froze (bound {TIMEOUT} s)")
    assert status == 2, stderr
    line = _one_error_line(stderr)
    assert f"the Dask scheduler at {address} did not answer within {TIMEOUT} s" in line


def test_a_frozen_worker_stops_the_cli_with_one_line(dask_processes, npy_problem, tmp_path):
    """SIGSTOP on a worker: its connections stay open, so distributed waits for it until
    its worker-ttl (5 minutes by default); the fit stops once its heartbeats have been
    missing for the fit's bound."""
    address = dask_processes.start_scheduler()
    dask_processes.start_workers(2)
    dask_processes.wait_for_workers(2)
    cli = _start_long_fit(address, npy_problem, tmp_path)
    try:
        dask_processes.wait_for_fit(cli)
        os.killpg(dask_processes.workers[0].pid, signal.SIGSTOP)
        status, stderr, seconds = _stopped(cli, tmp_path)
    finally:
        _kill_group(cli, timeout=1)
    print(f"stopped {seconds:.1f} s after a worker froze (bound {TIMEOUT} s)")
    assert status == 2, stderr
    line = _one_error_line(stderr)
    assert "sent no heartbeat" in line and "frozen" in line, line


def _bounded(function, *args, **kwargs) -> BaseException | None:
    """Run ``function`` in a daemon thread; its exception, or fail if it is still running
    STOP_WITHIN seconds later (a hang must not keep the test process)."""
    outcome: dict = {}

    def run():
        try:
            function(*args, **kwargs)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(STOP_WITHIN)
    if thread.is_alive():
        pytest.fail(f"{function.__name__} still waiting {STOP_WITHIN} s later: it hangs")
    return outcome.get("error")


def test_emulation_requests_are_bounded_by_a_frozen_worker(dask_processes):
    """Registering the emulation plugin and killing a worker wait for a worker's answer:
    a frozen worker gave neither a bound."""
    from distributed import Client

    from daskgd.data.waits import ClusterTimeoutError
    from daskgd.runtime.emulation import Emulation, kill_worker, register

    address = dask_processes.start_scheduler()
    dask_processes.start_workers(1, nanny=False)
    dask_processes.wait_for_workers(1)
    with Client(address, set_as_default=False, timeout=STARTUP_TIMEOUT) as client:
        (worker,) = client.ncores()
        os.killpg(dask_processes.workers[0].pid, signal.SIGSTOP)
        try:
            slow = Emulation(latency_seconds=0.001)
            error = _bounded(register, client, slow, timeout=TIMEOUT)
            assert isinstance(error, ClusterTimeoutError), error
            assert "registering the emulation plugin" in str(error)
            error = _bounded(kill_worker, client, worker, timeout=TIMEOUT)
            assert isinstance(error, ClusterTimeoutError), error
            assert worker in str(error)
        finally:
            os.killpg(dask_processes.workers[0].pid, signal.SIGCONT)


def test_a_frozen_worker_is_left_out_of_requests_to_every_worker_until_it_beats(
    dask_processes,
):
    """Once a wait has found a worker frozen, requests to every worker (the clean-up after
    the error: the instrumentation's logs, restoring the workers' settings) leave it out
    instead of each waiting the bound for it and failing; when its heartbeat moves
    again it is asked again."""
    from daskgd.data import waits

    with _two_workers(dask_processes) as (client, _, frozen, other, pids, process):
        future = client.submit(time.sleep, 60, workers=[frozen], pure=False)
        os.killpg(process.pid, signal.SIGSTOP)
        try:
            with pytest.raises(waits.ClusterTimeoutError, match="sent no heartbeat"):
                waits.result(client, future, what="a task on the frozen worker", timeout=TIMEOUT)
            assert waits.frozen_workers(client) == {frozen}
            answered = waits.run_on_workers(client, os.getpid, what="pids", timeout=TIMEOUT)
            assert answered == {other: pids[other]}  # not a ClusterTimeoutError
        finally:
            os.killpg(process.pid, signal.SIGCONT)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while waits.responsive_workers(client, what="workers", timeout=TIMEOUT) is not None:
            assert time.monotonic() < deadline, "the thawed worker's heartbeat never moved"
            time.sleep(0.2)
        assert waits.run_on_workers(client, os.getpid, what="pids", timeout=TIMEOUT) == pids
        future.cancel()


def test_a_request_a_frozen_worker_leaves_unanswered_blames_the_workers(dask_processes):
    """A request to every worker goes through the scheduler: when a worker not yet found
    frozen leaves it unanswered, the error names the workers asked, says the scheduler
    answers, and later requests to the scheduler keep their full bound."""
    from daskgd.data import waits

    with _two_workers(dask_processes) as (client, address, frozen, other, _, process):
        os.killpg(process.pid, signal.SIGSTOP)
        try:
            error = _bounded(waits.run_on_workers, client, os.getpid, what="pids", timeout=TIMEOUT)
            assert isinstance(error, waits.ClusterTimeoutError), error
            message = str(error)
            assert f"the Dask workers {sorted([frozen, other])} did not all answer" in message
            assert f"within {TIMEOUT} s (pids; the scheduler at {address} does)" in message
            assert not waits.unanswered(client)
        finally:
            os.killpg(process.pid, signal.SIGCONT)


@contextlib.contextmanager
def _two_workers(dask_processes):
    """A client of a scheduler and two worker processes: ``(client, scheduler address,
    the worker to freeze, the other, {worker: pid}, the process to freeze)``."""
    from distributed import Client

    address = dask_processes.start_scheduler()
    dask_processes.start_workers(2)
    dask_processes.wait_for_workers(2)
    with Client(address, set_as_default=False, timeout=STARTUP_TIMEOUT) as client:
        frozen, other = sorted(client.ncores())
        pids = client.run(os.getpid)
        process = next(p for p in dask_processes.workers if _has_child(p.pid, pids[frozen]))
        yield client, address, frozen, other, pids, process


def _has_child(parent: int, pid: int) -> bool:
    """Whether ``pid`` is ``parent`` or one of its descendants (a nanny's worker)."""
    while pid > 1:
        if pid == parent:
            return True
        with open(f"/proc/{pid}/stat") as stat:
            pid = int(stat.read().rsplit(")", 1)[1].split()[1])
    return False


def test_losing_every_worker_says_so(dask_processes, npy_problem, tmp_path):
    """Workers without a nanny, all killed mid-fit: nothing comes back. It used to end
    with a raw `TimeoutError: No valid workers found` traceback after 31 s."""
    address = dask_processes.start_scheduler()
    dask_processes.start_workers(2, nanny=False)
    dask_processes.wait_for_workers(2)
    cli = _start_long_fit(address, npy_problem, tmp_path)
    try:
        dask_processes.wait_for_fit(cli)
        for worker in dask_processes.workers:
            os.killpg(worker.pid, signal.SIGKILL)
        status, stderr, _ = _stopped(cli, tmp_path)
    finally:
        _kill_group(cli, timeout=1)
    assert status == 2, stderr
    line = _one_error_line(stderr)
    assert f"all workers of the Dask cluster at {address} were lost" in line, line


def test_a_scheduler_gone_is_one_line_too(dask_processes, npy_problem, tmp_path):
    dask_processes.start_scheduler()
    dask_processes.start_workers(1)
    dask_processes.wait_for_workers(1)
    cli = _start_long_fit(dask_processes.address, npy_problem, tmp_path)
    try:
        dask_processes.wait_for_fit(cli)
        os.killpg(dask_processes.scheduler.pid, signal.SIGKILL)
        status, stderr, _ = _stopped(cli, tmp_path)
    finally:
        _kill_group(cli, timeout=1)
    assert status == 2, stderr
    _one_error_line(stderr)


def _fit_in_thread(model, X, y) -> dict:
    """Run ``model.fit`` in a daemon thread (a hang must not keep the test process)."""
    outcome: dict = {}

    def fit():
        try:
            outcome["model"] = model.fit(X, y)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            outcome["error"] = error

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    outcome["thread"] = thread
    return outcome


@pytest.mark.parametrize("estimator", [daskgd.LogisticRegression, daskgd.Ridge])
def test_no_workers_fails_at_once_for_every_estimator(dask_processes, estimator):
    """``LogisticRegression().fit`` on the active client of a cluster without workers used
    to wait forever: its labels were encoded on the cluster before any worker check."""
    from distributed import Client

    address = dask_processes.start_scheduler()
    X = np.random.default_rng(0).standard_normal((100, 3))
    y = (X[:, 0] > 0).astype(int)
    with Client(address, timeout=STARTUP_TIMEOUT):  # the active client, found by fit
        outcome = _fit_in_thread(estimator(), X, y)
        outcome["thread"].join(timeout=STOP_WITHIN)
        assert not outcome["thread"].is_alive(), "the fit hangs on a cluster without workers"
    assert isinstance(outcome.get("error"), NoWorkersError), outcome
    assert f"the Dask cluster at {address} has no workers running" in str(outcome["error"])


def test_wait_for_workers_waits_for_a_late_worker(dask_processes):
    from distributed import Client

    address = dask_processes.start_scheduler()
    X = np.random.default_rng(0).standard_normal((100, 3))
    y = (X[:, 0] > 0).astype(int)
    with Client(address, set_as_default=False, timeout=STARTUP_TIMEOUT) as client:
        model = daskgd.LogisticRegression(client=client, wait_for_workers=STARTUP_TIMEOUT)
        outcome = _fit_in_thread(model, X, y)
        dask_processes.start_workers(1)  # a process start: well after the fit's first check
        outcome["thread"].join(timeout=STARTUP_TIMEOUT + STOP_WITHIN)
        assert not outcome["thread"].is_alive()
    assert "error" not in outcome, outcome
    assert outcome["model"].coef_.shape == (1, 3)


def test_the_cli_checks_for_workers_first(dask_processes, npy_problem):
    dask_processes.start_scheduler()
    result = subprocess.run(
        [*CLI, "run", str(npy_problem / "X.npy"), "--target", str(npy_problem / "y.npy"),
         "--scheduler", dask_processes.address, "--timeout", str(TIMEOUT), "--no-progress"],
        capture_output=True, text=True, timeout=STOP_WITHIN, env=_subprocess_env(),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "has no workers running" in _one_error_line(result.stderr)


def test_debug_shows_the_traceback(npy_problem):
    result = subprocess.run(
        [*CLI, "run", str(npy_problem / "X.npy"), "--target", str(npy_problem / "X.npy"),
         "--debug"],
        capture_output=True, text=True, timeout=STOP_WITHIN,
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("daskgd: error: y must be 1-D")
