"""Shared pytest fixtures for the daskgd test suite.

Dask clusters
    cluster_client (function)     a ``distributed.Client`` on a ``LocalCluster`` of 2 worker
                                  processes with 1 thread each, started once per session (a
                                  new one if a test broke that cluster beyond repair).
    session_client (module)       that Client as the module starts, for module fixtures.
    client (function)             the same kind of Client, made current for the test; after the
                                  test it checks that the cluster still has exactly 2 workers and
                                  repairs it if not (waits for nanny restarts, rescales, or as a
                                  last resort starts a new cluster). Use this one in tests that
                                  kill, retire or add workers.
    local_scheduler (function)    no distributed client active: yields ``None``; inside the test
                                  ``distributed.default_client()`` raises ``ValueError`` and dask
                                  computes with its local (threaded) scheduler.
    scheduler_processes (module)  the address (``"tcp://127.0.0.1:PORT"``) of a real
                                  ``dask scheduler`` with 2 ``dask worker`` processes
                                  (1 thread each), started as subprocesses from a scheduler file.

Running alone
    tests marked ``serial`` run while no other test runs: pytest-xdist runs the suite in
    two processes (pyproject's addopts), and a test whose assertions compare timings (an
    emulated straggler's share, a notebook's measured speedup) would measure the other
    process's test too. An autouse fixture takes a lock shared by the processes:
    exclusive for a ``serial`` test, shared for the others.

Browser
    chromium_executable (session) path of a Chromium binary (``DASKGD_CHROMIUM``, then
                                  ``chromium``/``chromium-browser``/``google-chrome`` on PATH);
                                  skips the test when there is none, fails it when ``CI`` is set.
    browser (session)             a Playwright ``Browser`` running that Chromium headless.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dask
import distributed  # noqa: F401 - loads distributed's defaults into dask.config
import pytest
from cli_helpers import no_cluster  # noqa: F401 - a fixture for every test module

N_WORKERS = 2
STARTUP_TIMEOUT = 60  # seconds to wait for a cluster or for subprocess workers to come up

# distributed's SpecCluster closes and forgets the nanny of a lost worker whose name has
# not registered again within this timeout (15 s by default): on a loaded machine a nanny
# still restarting a worker a test killed was closed so, and the cluster stayed at one
# worker ("Restarting worker", then "Closing Nanny ... nanny-close"; a CI-style run).
# Batch jobs are a different case: a job cluster replaces a lost job only after this timeout,
# so tests of jobs that end use a short one (``job_lost_worker_timeout``): a lost job's
# worker never comes back, and distributed's own 15 s is only how long the replacement waits.
dask.config.set({"distributed.deploy.lost-worker-timeout": f"{2 * STARTUP_TIMEOUT}s"})
JOB_LOST_WORKER_TIMEOUT = "2s"


@pytest.fixture
def job_lost_worker_timeout():
    """A short lost-worker timeout for one test of batch jobs (the session keeps a long one):
    a job cluster submits the replacement of a job that ended after it."""
    with dask.config.set({"distributed.deploy.lost-worker-timeout": JOB_LOST_WORKER_TIMEOUT}):
        yield JOB_LOST_WORKER_TIMEOUT


# Flags for headless Chromium on a machine with no network but loopback, running as root.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# --------------------------------------------------------------------------------------
# LocalCluster shared by the session
# --------------------------------------------------------------------------------------


_CLOSED = {"closing", "closed", "failed", "closing_gracefully"}


def _status(obj) -> str:
    status = getattr(obj, "status", None)
    return getattr(status, "name", str(status))


class _SessionCluster:
    """Owns the session's LocalCluster and Client; can check and repair them."""

    def __init__(self) -> None:
        self.cluster = None
        self.client = None

    def start(self) -> None:
        from distributed import Client, LocalCluster

        self.cluster = LocalCluster(
            n_workers=N_WORKERS,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
        )
        self.client = Client(self.cluster)
        self.client.wait_for_workers(N_WORKERS, timeout=STARTUP_TIMEOUT)

    def close(self) -> None:
        for obj in (self.client, self.cluster):
            if obj is not None:
                try:
                    obj.close()
                except Exception:  # noqa: BLE001 - best effort at teardown
                    pass
        self.client = self.cluster = None

    def n_workers(self) -> int | None:
        """Workers the scheduler knows and that are running (a nanny's restarted worker
        is known before it runs: a fit then would place its data on the other one), or
        None when the client or cluster is unusable."""
        if self.client is None or self.client.status != "running":
            return None
        try:
            n = len(self.client.ncores())
            if n == N_WORKERS:
                self.client.wait_for_workers(N_WORKERS, timeout=STARTUP_TIMEOUT)
            return n
        except Exception:  # noqa: BLE001 - any failure means: rebuild
            return None

    def _missing_workers(self) -> dict:
        """The cluster's worker (nanny) objects that the scheduler does not have."""
        from daskgd.data.waits import scheduler_workers

        known = scheduler_workers(self.client, what="listing the workers")
        live = {w.get("name") for w in known.values()}
        return {name: w for name, w in self.cluster.workers.items() if name not in live}

    def checked_client(self):
        """The Client, the cluster first brought back to N_WORKERS workers if a test left
        it otherwise (two small requests when it is as it should be)."""
        self.ensure()
        return self.client

    def ensure(self) -> None:
        """Bring the cluster back to exactly N_WORKERS running workers."""
        n = self.n_workers()
        if n == N_WORKERS:
            return
        if n is not None and self._repair():
            return
        # Last resort: a brand-new cluster. Tests holding the session's `cluster_client`
        # would then hold a closed client; tests that may break the cluster use `client`.
        import warnings

        warnings.warn(
            f"the session cluster had {n} workers and could not be repaired: a new one",
            UserWarning,
            stacklevel=2,
        )
        self.close()
        self.start()

    def _repair(self) -> bool:
        """A killed worker process is restarted by its nanny (seconds, or tens of them on a
        loaded machine); a retired worker's nanny closes and is not coming back. Wait for
        the first; replace only the second: forgetting a nanny that is still restarting
        its worker left the cluster with one worker more, or one fewer, a test later."""
        try:

            def settled() -> bool:
                return self.n_workers() == N_WORKERS or all(
                    _status(w) in _CLOSED for w in self._missing_workers().values()
                )

            _wait_until(settled, STARTUP_TIMEOUT)
            if self.n_workers() == N_WORKERS:
                return True
            for name, worker in self._missing_workers().items():
                if _status(worker) in _CLOSED:  # the cluster's spec replaces it
                    self.cluster.workers.pop(name, None)
            self.cluster.scale(N_WORKERS)
            return _wait_until(lambda: self.n_workers() == N_WORKERS, STARTUP_TIMEOUT)
        except Exception:  # noqa: BLE001 - then a new cluster
            return False


# --------------------------------------------------------------------------------------
# Tests that run alone (marker ``serial``)
# --------------------------------------------------------------------------------------


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "serial: runs while no other test runs (its assertions compare timings)"
    )


@pytest.fixture(scope="session")
def _lock_files(tmp_path_factory) -> Iterator[tuple]:
    """Two lock files shared by the xdist processes (their basetemps' common parent):
    the lock itself, and a turnstile that a waiting ``serial`` test holds so that the
    other process's next tests queue behind it instead of starving it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    with (
        open(root / "daskgd-serial.lock", "a") as lock,
        open(root / "daskgd-turn.lock", "a") as turn,
    ):
        yield lock, turn


@pytest.fixture(autouse=True)
def _serial_tests_run_alone(request, _lock_files) -> Iterator[None]:
    lock, turn = _lock_files
    alone = request.node.get_closest_marker("serial") is not None
    fcntl.flock(turn, fcntl.LOCK_EX)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
    finally:
        fcntl.flock(turn, fcntl.LOCK_UN)
    try:
        yield
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def _session_cluster() -> Iterator[_SessionCluster]:
    holder = _SessionCluster()
    holder.start()
    try:
        yield holder
    finally:
        holder.close()


@pytest.fixture(scope="module")
def session_client(_session_cluster: _SessionCluster):
    """The session's Client when the module starts, for module-scoped fixtures that place
    data on it (a cluster rebuilt by an earlier module's test gives them the new one)."""
    return _session_cluster.checked_client()


@pytest.fixture
def cluster_client(_session_cluster: _SessionCluster):
    """The session's Client on a LocalCluster with 2 worker processes, 1 thread each.

    Looked up and checked for every test: a test that broke the cluster beyond repair
    made the ``client`` fixture start a new one (seen: "Client is closed" in a later test
    that held the first client for the session), and a worker killed by a test may come
    back only after its test (seen: a later test on one worker)."""
    return _session_cluster.checked_client()


@pytest.fixture
def client(_session_cluster: _SessionCluster):
    """The session's Client, current for this test; the cluster is repaired afterwards."""
    _session_cluster.ensure()
    c = _session_cluster.client
    with c.as_current():
        yield c
    _session_cluster.ensure()


# --------------------------------------------------------------------------------------
# No client at all
# --------------------------------------------------------------------------------------


@pytest.fixture
def local_scheduler():
    """No distributed client is active during the test: yields None.

    Hides any existing client (the session's included) from ``default_client`` and from
    dask's scheduler lookup, and restores them afterwards.
    """
    import distributed.client as dclient

    hidden = dict(dclient._global_clients.items())
    for c in hidden.values():
        dclient._del_global_client(c)
    token = dclient._current_client.set(None)
    try:
        with dask.config.set(scheduler=None):
            yield None
    finally:
        dclient._current_client.reset(token)
        for key, c in hidden.items():
            if c.status != "closed":
                dclient._global_clients[key] = c


# --------------------------------------------------------------------------------------
# Real `dask scheduler` / `dask worker` subprocesses
# --------------------------------------------------------------------------------------


def _subprocess_env() -> dict[str, str]:
    """Environment for child Pythons: the same interpreter, and the test process's extra
    import paths (the tests folder, a source checkout) so that functions pickled by
    reference from test modules or from daskgd unpickle on the workers."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    extra = []
    for entry in sys.path:
        if not entry or not os.path.isdir(entry):
            continue
        real = os.path.realpath(entry)
        if any(real == p or real.startswith(p + os.sep) for p in prefixes):
            continue
        if real not in extra:
            extra.append(real)
    env = dict(os.environ)
    if env.get("PYTHONPATH"):
        extra.append(env["PYTHONPATH"])
    if extra:
        env["PYTHONPATH"] = os.pathsep.join(extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _kill_group(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM the process group, give it `timeout` seconds, then SIGKILL what is left."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _tail(path: Path, n: int = 30) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


@pytest.fixture(scope="module")
def scheduler_processes(tmp_path_factory) -> Iterator[str]:
    """Address of a `dask scheduler` subprocess with 2 `dask worker` subprocesses."""
    from distributed import Client

    tmp = tmp_path_factory.mktemp("dask-cli")
    scheduler_file = tmp / "s.json"
    env = _subprocess_env()
    procs: list[tuple[str, subprocess.Popen, Path]] = []

    def spawn(name: str, module: str, *args: str) -> None:
        log_path = tmp / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tmp,
                env=env,
                start_new_session=True,  # its own process group, killed as a whole
            )
        procs.append((name, proc, log_path))

    def diagnostics() -> str:
        parts = []
        for name, proc, log_path in procs:
            parts.append(f"--- {name} (exit code {proc.poll()}) ---\n{_tail(log_path)}")
        return "\n".join(parts)

    try:
        spawn(
            "scheduler",
            "distributed.cli.dask_scheduler",
            "--host", "127.0.0.1",
            "--port", "0",
            "--no-dashboard",
            "--scheduler-file", str(scheduler_file),
        )  # fmt: skip
        for i in range(N_WORKERS):
            spawn(
                f"worker-{i}",
                "distributed.cli.dask_worker",
                "--nthreads", "1",
                "--no-dashboard",
                "--host", "127.0.0.1",
                "--local-directory", str(tmp / f"worker-{i}"),
                "--scheduler-file", str(scheduler_file),
            )  # fmt: skip

        deadline = time.monotonic() + STARTUP_TIMEOUT
        address = None
        while address is None:
            dead = [name for name, proc, _ in procs if proc.poll() is not None]
            if dead:
                pytest.fail(f"dask processes exited early: {dead}\n{diagnostics()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no scheduler file after {STARTUP_TIMEOUT}s\n{diagnostics()}")
            try:
                address = json.loads(scheduler_file.read_text())["address"]
            except (OSError, ValueError, KeyError):
                time.sleep(0.2)

        remaining = max(1.0, deadline - time.monotonic())
        with Client(address, set_as_default=False, timeout=remaining) as probe:
            try:
                probe.wait_for_workers(N_WORKERS, timeout=max(1.0, deadline - time.monotonic()))
            except TimeoutError:
                pytest.fail(
                    f"{N_WORKERS} workers did not connect within {STARTUP_TIMEOUT}s "
                    f"(have {len(probe.ncores())})\n{diagnostics()}"
                )
        yield address
    finally:
        for _, proc, _ in reversed(procs):
            _kill_group(proc)


# --------------------------------------------------------------------------------------
# Browser
# --------------------------------------------------------------------------------------


def _find_chromium() -> str | None:
    candidates = [os.environ.get("DASKGD_CHROMIUM")]
    candidates += [shutil.which(name) for name in CHROMIUM_NAMES]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _no_browser(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI: .ci/run installs Debian's chromium)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    """Path of a Chromium binary; skip without one (fail on CI)."""
    path = _find_chromium()
    if path is None:
        _no_browser(
            "no Chromium found: install it (Debian: apt-get install chromium) "
            "or set DASKGD_CHROMIUM to its path"
        )
    return path


@pytest.fixture(scope="session")
def browser(chromium_executable: str):
    """A headless Playwright Browser on the system Chromium (session scope)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _no_browser("playwright is not installed (pip install '.[test]')")
    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=chromium_executable, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield b
        finally:
            b.close()
