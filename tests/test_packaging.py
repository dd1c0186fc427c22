"""Packaging, CI plumbing and the shared fixtures of conftest.py."""

from __future__ import annotations

import importlib.metadata
import operator
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"
PYPROJECT = ROOT / "pyproject.toml"


def _quickstart_block() -> list[str]:
    """Non-empty lines of the first fenced code block after '## Quickstart'."""
    text = README.read_text()
    match = re.search(r"^## Quickstart[ \t]*$", text, flags=re.M)
    assert match, "README.md has no '## Quickstart' section"
    section = text[match.end() :]
    next_heading = re.search(r"^## ", section, flags=re.M)
    if next_heading:
        section = section[: next_heading.start()]
    block = re.search(r"^```[^\n]*\n(.*?)^```", section, flags=re.M | re.S)
    assert block, "the Quickstart section has no code block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def _names(requirements: list[str]) -> set[str]:
    """Distribution names of requirement strings, lower case."""
    return {re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0].lower() for req in requirements}


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads(PYPROJECT.read_text())


# --------------------------------------------------------------------------------------
# the package
# --------------------------------------------------------------------------------------


def test_package_imports_with_version():
    import daskgd

    assert daskgd.__version__ == "0.1.0"
    assert importlib.metadata.version("daskgd") == daskgd.__version__


def test_console_script_is_declared():
    scripts = importlib.metadata.entry_points(group="console_scripts")
    (ep,) = [ep for ep in scripts if ep.name == "daskgd"]
    assert ep.value == "daskgd.cli:main"
    assert ep.dist is not None and ep.dist.name == "daskgd"


def test_pyproject_metadata():
    meta = _pyproject()
    project = meta["project"]
    assert project["name"] == "daskgd"
    # the version lives in one place, daskgd.__version__, read by setuptools
    assert "version" not in project and project["dynamic"] == ["version"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "daskgd.__version__"}
    assert project["requires-python"] == ">=3.10"
    assert project["scripts"] == {"daskgd": "daskgd.cli:main"}

    names = _names(project["dependencies"])
    for required in (
        "dask", "distributed", "numpy", "xarray", "bokeh", "scipy", "tqdm", "h5netcdf", "zarr",
    ):  # fmt: skip
        assert required in names
    assert "dask[array]>=2024.8" in project["dependencies"]

    extras = project["optional-dependencies"]
    assert {"test", "notebook", "hpc", "bench"} <= set(extras)
    assert {"pytest", "pytest-timeout", "hypothesis", "scikit-learn", "ruff"} <= _names(
        extras["test"]
    )

    pytest_opts = meta["tool"]["pytest"]["ini_options"]
    assert pytest_opts["testpaths"] == ["tests"]
    assert int(pytest_opts["timeout"]) == 300
    assert any(m.startswith("slow") for m in pytest_opts["markers"])


def _requirement(text: str) -> tuple[str, str]:
    """(name, version specifier) of a pip or conda requirement, extras dropped."""
    match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)(\[[^]]*\])?\s*(.*?)\s*(#.*)?", text)
    assert match, text
    return match.group(1).lower().replace("_", "-"), match.group(3).replace(" ", "")


def _environment_yml() -> dict[str, str]:
    yaml = pytest.importorskip("yaml")
    document = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in document["dependencies"] if isinstance(d, str)]
    return dict(_requirement(d) for d in conda if _requirement(d)[0] not in {"python", "pip"})


def test_environment_yml_lists_what_pyproject_declares():
    project = _pyproject()["project"]
    declared = [*project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        declared += extra
    wanted = dict(_requirement(r) for r in declared)
    assert _environment_yml() == wanted


def test_py_typed_is_shipped():
    import daskgd

    assert (Path(daskgd.__file__).parent / "py.typed").is_file()
    assert "py.typed" in _pyproject()["tool"]["setuptools"]["package-data"]["daskgd"]


def test_pytest_timeout_is_active(pytestconfig):
    assert pytestconfig.pluginmanager.hasplugin("timeout")
    assert float(pytestconfig.getini("timeout")) == 300


# --------------------------------------------------------------------------------------
# README and CI
# --------------------------------------------------------------------------------------


def test_readme_quickstart_has_two_commands():
    lines = _quickstart_block()
    assert len(lines) == 2, lines
    install_and_demo, install_and_test = lines
    assert install_and_demo.startswith("pip install ") and "daskgd " in install_and_demo
    assert install_and_test.startswith("pip install ") and "[test]" in install_and_test
    assert install_and_test.rstrip().endswith("pytest") or " pytest" in install_and_test
    # commands a person types: no sudo, no apt, no line continuations
    for line in lines:
        assert not re.search(r"\b(sudo|apt|apt-get)\b", line)
        assert not line.rstrip().endswith("\\")


def test_readme_has_placeholder_sections():
    text = README.read_text()
    for heading in ("## Python API", "## Command line"):
        assert re.search(rf"^{re.escape(heading)}[ \t]*$", text, flags=re.M), heading


def test_ci_run_is_executable_and_uses_readme():
    assert CI_RUN.is_file()
    assert os.access(CI_RUN, os.X_OK), ".ci/run is not executable"
    text = CI_RUN.read_text()
    assert text.startswith("#!")
    assert "set -euo pipefail" in text
    assert "README.md" in text and "## Quickstart" in text
    subprocess.run(["bash", "-n", str(CI_RUN)], check=True)


def test_ci_run_is_executable_in_git():
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(
        [git, "ls-files", "--stage", "--", ".ci/run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if not out.strip():
        pytest.skip(".ci/run is not committed yet")
    assert out.split()[0] == "100755", out


def test_ci_run_runs_the_readme_test_command():
    out = subprocess.run(
        ["bash", str(CI_RUN), "--print-test-command"],
        capture_output=True,
        text=True,
        check=True,
        stdin=subprocess.DEVNULL,
    ).stdout
    assert out.strip() == _quickstart_block()[1].strip()


# --------------------------------------------------------------------------------------
# shared fixtures
# --------------------------------------------------------------------------------------


def test_cluster_client_has_two_single_threaded_workers(cluster_client):
    nthreads = cluster_client.nthreads()
    assert len(nthreads) == 2
    assert set(nthreads.values()) == {1}
    assert cluster_client.submit(operator.add, 1, 2).result() == 3


def test_client_is_current_and_computes_on_the_cluster(client):
    import dask.array as da
    from distributed import default_client, get_worker

    assert default_client() is client
    x = da.ones((100, 3), chunks=(10, 3))
    assert float(x.sum().compute()) == 300.0
    # tasks ran on worker processes, not in the test process
    pids = client.run(os.getpid)
    assert os.getpid() not in pids.values()
    assert len(client.gather(client.map(lambda i: get_worker().address, range(8)))) == 8


def test_client_fixture_kills_a_worker(client):
    victim = sorted(client.nthreads())[0]
    pid = client.run(os.getpid, workers=[victim])[victim]
    os.kill(pid, signal.SIGKILL)
    # the fixture's teardown waits for the nanny to bring it back; the next test checks it
    deadline = time.monotonic() + 30
    while victim in client.nthreads() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert victim not in client.nthreads()


def test_client_fixture_repaired_the_cluster(client):
    assert len(client.nthreads()) == 2
    assert client.submit(operator.mul, 6, 7).result() == 42


def test_client_fixture_retires_a_worker(client):
    victim = sorted(client.nthreads())[0]
    client.retire_workers(workers=[victim], close_workers=True)
    assert victim not in client.nthreads()


def test_client_fixture_repaired_after_retire(client):
    assert len(client.nthreads()) == 2
    assert client.submit(operator.sub, 7, 2).result() == 5


def test_local_scheduler_hides_every_client(cluster_client, local_scheduler):
    import dask
    import dask.array as da
    import distributed

    assert local_scheduler is None
    with pytest.raises(ValueError):
        distributed.default_client()
    with pytest.raises(ValueError):
        distributed.get_client()
    assert not dask.config.get("scheduler", None)
    x = da.arange(100, chunks=10)
    assert int(x.sum().compute()) == 4950


def test_cluster_client_is_default_again_after_local_scheduler(cluster_client):
    import distributed

    assert distributed.default_client() is cluster_client


def test_scheduler_processes(scheduler_processes):
    import dask.array as da
    from distributed import Client

    assert scheduler_processes.startswith("tcp://127.0.0.1:")
    with Client(scheduler_processes, set_as_default=False) as c:
        nthreads = c.nthreads()
        assert len(nthreads) == 2 and set(nthreads.values()) == {1}
        assert c.submit(operator.add, 20, 22).result() == 42
        x = da.arange(1000, chunks=100)
        assert int(x.sum().compute(scheduler=c)) == 499500
        pids = c.run(os.getpid)
        assert len(set(pids.values())) == 2


def test_browser_renders_a_page(browser):
    page = browser.new_page()
    try:
        page.set_content("<html><body><p id='x'>daskgd</p></body></html>")
        assert page.inner_text("#x") == "daskgd"
    finally:
        page.close()


def test_python_is_supported():
    assert sys.version_info >= (3, 10)
