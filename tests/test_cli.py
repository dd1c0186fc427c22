"""The daskgd command line: as a user runs it (a subprocess) where the process matters
(the entry point, exit statuses, a fit, a server), else in this process (``main(argv)``,
the same code, without the seconds a fresh interpreter takes to import the stack)."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_main

from daskgd.observe.trace import load_trace

CLI = [sys.executable, "-m", "daskgd.cli"]


def run_cli(*arguments, timeout=240, cwd=None):
    return subprocess.run(
        [*CLI, *map(str, arguments)], capture_output=True, text=True, timeout=timeout, cwd=cwd
    )


def test_help_from_the_command_line():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "usage: daskgd" in result.stdout


@pytest.mark.parametrize("command", [["demo"], ["run"], ["scaling"], ["report"], ["predict"]])
def test_help_everywhere(capsys, command):
    status, out, _ = run_main(capsys, *command, "--help")
    assert status == 0
    assert "usage: daskgd" in out


def test_demo_fits_and_saves_a_trace(tmp_path):
    trace_path = tmp_path / "demo.nc"
    result = run_cli(
        "demo",
        "--samples",
        20_000,
        "--features",
        10,
        "--max-iter",
        25,
        "--trace-out",
        trace_path,
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    assert "LocalCluster: 2 workers" in result.stdout
    assert "iterations:" in result.stdout and "ms per iteration" in result.stdout
    assert f"trace saved to {trace_path.resolve()}" in result.stdout
    trace = load_trace(trace_path)
    assert trace.attrs["solver"] == "gd"
    assert trace.sizes["iteration"] >= 2


def test_demo_keeps_the_cwd_clean_and_reports_one_time_and_count(tmp_path):
    result = run_cli("demo", "--samples", 5_000, "--features", 5, "--max-iter", 3, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []  # the trace went to a temporary folder
    (saved,) = [line for line in result.stdout.splitlines() if line.startswith("trace saved to")]
    path = Path(saved.split("trace saved to ")[1].split(" (")[0])
    assert path.is_file() and path.parent.name.startswith("daskgd-demo-")
    assert path.parent.parent == Path(tempfile.gettempdir())
    # one iteration count and one iteration time, the same in the header and the summary
    (time_line,) = [line for line in result.stdout.splitlines() if line.startswith("time: ")]
    iterating = time_line.split(" s in the ")[0].rsplit("+ ", 1)[1]
    assert " s in the 3 iterations" in time_line
    assert f"daskgd gd: 3 iterations, 2 workers, {iterating} s" in result.stdout
    # stdout is a pipe here: no progress bar redrawn into it
    assert "it/s" not in result.stderr and "\r" not in result.stderr


def _options(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                for option in sub._actions:
                    if option.option_strings and option.help != argparse.SUPPRESS:
                        yield command, option


def test_every_option_has_help_with_its_default():
    from daskgd.cli.app import build_parser

    missing = []
    for command, option in _options(build_parser()):
        name = f"{command} {max(option.option_strings, key=len)}"
        if option.option_strings == ["-h", "--help"]:
            continue
        if not option.help:
            missing.append(f"{name}: no help")
        elif option.nargs != 0 and not option.required and "default" not in option.help:
            missing.append(f"{name}: no default in {option.help!r}")
    assert missing == []


def test_defaults_are_the_python_apis():
    import inspect

    from daskgd.cli.app import build_parser
    from daskgd.cli.options import model_from
    from daskgd.estimators.linear import LogisticRegression

    run = build_parser().parse_args(["run", "X.npy", "--target", "y.npy"])
    api = inspect.signature(LogisticRegression).parameters
    # --solver and --l1-ratio are left unset (None): the model given by --model decides
    model = model_from(run, {"solver": run.solver})
    assert model.solver == api["solver"].default
    assert model.l1_ratio == api["l1_ratio"].default and model.C == api["C"].default
    assert run.tol is None and run.max_iter is None  # left to the model's own defaults


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["demo", "--latency", "5"], "'5' needs a unit, e.g. 5ms"),
        (["demo", "--bandwidth", "100"], "'100' needs a unit"),
        (["demo", "--queue", "short"], "--queue only apply with --cluster"),
        (["demo", "--cluster", "slurm", "--scheduler", "127.0.0.1:9"], "either --scheduler"),
    ],
)
def test_options_are_checked_before_a_cluster_starts(capsys, no_cluster, arguments, message):
    status, out, err = run_main(capsys, *arguments)
    assert status == 2
    assert message in err, err
    assert "LocalCluster" not in out


@pytest.fixture(scope="module")
def npy_problem(tmp_path_factory):
    folder = tmp_path_factory.mktemp("npy")
    rng = np.random.default_rng(5)
    X = rng.standard_normal((3000, 4))
    y = (X @ [1.0, -2.0, 0.5, 0.0] + 0.1 * rng.standard_normal(3000) > 0).astype(np.int64)
    np.save(folder / "X.npy", X)
    np.save(folder / "y.npy", y)
    return folder


def test_run_against_scheduler_and_worker_processes(scheduler_processes, npy_problem, tmp_path):
    trace_path = tmp_path / "run.nc"
    result = run_cli(
        "run",
        npy_problem / "X.npy",
        "--target",
        npy_problem / "y.npy",
        "--scheduler",
        scheduler_processes,
        "--trace-out",
        trace_path,
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    trace = load_trace(trace_path)
    assert trace.attrs["scheduler"] == scheduler_processes
    assert trace.attrs["n_workers"] == 2
    assert trace.attrs["model"] == "logistic"
    assert "converged" in result.stdout


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["run", "missing.npy", "--target", "y.npy"], "data path 'missing.npy' does not exist"),
        (
            [
                "run",
                "{folder}/X.npy",
                "--target",
                "{folder}/y.npy",
                "--scheduler",
                "127.0.0.1:9",
                "--timeout",
                "2",
            ],
            "cannot reach the Dask scheduler at '127.0.0.1:9'",
        ),
        (["run", "{folder}/X.npy", "--target", "{folder}/X.npy"], "y must be 1-D"),
    ],
)
def test_run_errors_are_one_clear_line(capsys, npy_problem, arguments, message):
    arguments = [a.format(folder=npy_problem) for a in arguments]
    status, _, err = run_main(capsys, *arguments, "--no-progress")
    assert status == 2
    lines = [line for line in err.splitlines() if line.startswith("daskgd: error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


def test_an_error_is_one_line_and_status_two_from_the_command_line(tmp_path):
    result = run_cli("run", tmp_path / "missing.npy", "--target", "y.npy", timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("daskgd: error: data path"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""


def test_model_options_are_checked_before_a_cluster_starts(capsys, no_cluster, npy_problem):
    """Options the estimator refuses (scikit-learn's parameter validation, a solver that
    cannot take the penalty) fail before any cluster starts: they used to start a
    LocalCluster first (a minute on a loaded machine) and fail in the fit."""
    data = [f"{npy_problem}/X.npy", "--target", f"{npy_problem}/y.npy"]
    for options, message in [
        (["--C", "-1"], "'C' parameter of LogisticRegression must be"),
        (["--solver", "lbfgs", "--penalty", "l1"], "lbfgs"),
    ]:
        status, _, err = run_main(capsys, "run", *data, *options, "--no-progress")
        assert status == 2 and message in err, err
        assert "a cluster was started" not in err, err


def test_bad_option_values_are_refused_by_the_parser(capsys):
    status, _, err = run_main(capsys, "demo", "--samples", "-3")
    assert status == 2
    assert "expected a positive integer" in err


def _listening(pid):
    """(host, port) of the listening TCP sockets of a process and its children."""
    import psutil

    root = psutil.Process(pid)
    sockets = set()
    for proc in [root, *root.children(recursive=True)]:
        for connection in proc.net_connections(kind="inet"):
            if connection.status == psutil.CONN_LISTEN:
                sockets.add((connection.laddr.ip, connection.laddr.port))
    return sockets


def test_demo_serves_a_live_dashboard(tmp_path):
    import urllib.request

    process = subprocess.Popen(
        [
            *map(
                str,
                [*CLI, "demo", "--samples", 20_000, "--features", 10, "--max-iter", 20, "--tol", 0],
            ),
            "--no-progress",
            "--dashboard",
            "--keep-open",
            "--trace-out",
            str(tmp_path / "t.nc"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        url = None
        for line in process.stdout:
            if line.startswith("live dashboard: "):
                url = line.split(": ", 1)[1].strip()
            if "press Ctrl-C to stop" in line:
                break
        assert url is not None and url.startswith("http://127.0.0.1:")
        # After the fit, the page is still served (--keep-open).
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200
            assert "bokeh" in response.read().decode().lower()
        # Secure by default: the CLI, its LocalCluster's scheduler, Dask dashboard and
        # worker processes listen on 127.0.0.1 only (the Dask dashboard was on 0.0.0.0).
        listening = _listening(process.pid)
        assert len(listening) >= 5, listening  # scheduler, 2 dashboards, 2 workers, ...
        assert {host for host, _ in listening} == {"127.0.0.1"}, listening
    finally:
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends: the CLI closes its cluster
        assert process.wait(timeout=60) == 0
