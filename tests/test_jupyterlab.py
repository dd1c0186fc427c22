"""The live view in a real JupyterLab, in headless Chromium, offline.

The test starts JupyterLab (127.0.0.1, a random port, a token, a temporary root and
configuration), opens a notebook that does what the README shows (``live =
LiveTrace(); notebook_view(live)``, then ``fit(..., callbacks=[live])``) and also
``serve(live)``, whose page it opens through Jupyter's own proxy
(jupyter-server-proxy) at the path the kernel printed. While the fit runs it reads
the plotted data in both pages: they must grow, with no JavaScript error, no request
leaving this machine, and the compact view small enough to keep the fit's progress
bar on screen.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("jupyterlab")
pytest.importorskip("jupyter_bokeh")
pytest.importorskip("jupyter_server_proxy")

TESTS = Path(__file__).resolve().parent
START_TIMEOUT_SECONDS = 90
FIT_ITERATIONS = 30
FIT_TIMEOUT_SECONDS = 120

#: Length of the loss column in the first Bokeh document that has one (-1: none yet).
LENGTH_JS = """name => {
  for (const doc of (window.Bokeh ? Bokeh.documents : [])) {
    const model = doc.get_model_by_name(name);
    if (model) return model.data.iteration.length;
  }
  return -1;
}"""

#: Whether the pending band of the split is shown, in the first document that has one.
PENDING_JS = """() => {
  for (const doc of (window.Bokeh ? Bokeh.documents : [])) {
    const box = doc.get_model_by_name("daskgd-split-pending");
    if (box) return box.visible;
  }
  return null;
}"""

#: Page rectangles (top, bottom) of the daskgd view and of the progress bar widget.
BOXES_JS = """() => {
  const view = document.querySelector(".jp-OutputArea-output .bk-Column");
  const bar = document.querySelector(".jp-OutputArea-output .widget-hprogress");
  const box = el => el ? [el.getBoundingClientRect().top, el.getBoundingClientRect().bottom]
                       : null;
  return {view: box(view), bar: box(bar)};
}"""

SETUP = f"""\
import pathlib, time, warnings
from distributed import Client
import daskgd
from daskgd.cluster.local import make_local_cluster
from daskgd.data.synthetic import make_classification
from daskgd.runtime.emulation import Emulation
from daskgd.viz.dashboard import LiveTrace, notebook_view, serve

# tol=0 asks for exactly max_iter iterations: not a convergence failure.
warnings.simplefilter("ignore", daskgd.ConvergenceWarning)

def wait_for(name, seconds={START_TIMEOUT_SECONDS}):
    deadline = time.monotonic() + seconds
    while not pathlib.Path(name).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(name)
        time.sleep(0.05)

cluster = make_local_cluster(2, dashboard_address=None)
client = Client(cluster)
X, y = make_classification(20_000, 20, chunks=2_500, random_state=0)
"""

CELLS = [
    SETUP,
    "live = LiveTrace()\nnotebook_view(live)",
    'dashboard = serve(live)\nwait_for("go")',
    # 40 ms of emulated latency per message: the fit lasts seconds on any machine (with
    # 20 ms, at load 14, the page was sampled while it showed one partial trace only).
    f"model = daskgd.LogisticRegression(solver='gd', max_iter={FIT_ITERATIONS}, tol=0,\n"
    "                                  verbose=True, emulation=Emulation(latency_seconds=0.04))\n"
    "model.fit(X, y, callbacks=[live])",
    "pathlib.Path('done.json').write_text(str(model.trace_.sizes['iteration']))\n"
    "wait_for('closed')\ndashboard.stop(); client.close(); cluster.close()",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group (kernels included), SIGKILL after 15 s."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-40:])


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    """(base URL, token, root folder) of a JupyterLab on 127.0.0.1, stopped afterwards."""
    root = tmp_path_factory.mktemp("jupyterlab")
    port, token = _free_port(), secrets.token_hex(16)
    paths = os.pathsep.join([str(TESTS.parent), str(TESTS), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=paths.rstrip(os.pathsep), JUPYTER_PLATFORM_DIRS="1")
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        env[name] = str(root / f".{name.lower()}")
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
        f"--port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
        f"--LabApp.user_settings_dir={root / '.settings'}",
        f"--LabApp.workspaces_dir={root / '.workspaces'}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ] + (["--allow-root"] if os.geteuid() == 0 else [])  # fmt: skip
    # No "get notified about Jupyter news?" pop-up over the notebook.
    notification = root / ".settings" / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True)
    (notification / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    log = root / "jupyterlab.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"JupyterLab exited ({process.returncode}):\n{_tail(log)}")
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer in {START_TIMEOUT_SECONDS} s")
                time.sleep(0.25)
        yield base, token, root
    finally:
        _stop(process)


def _write_notebook(path: Path) -> None:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(notebook, path)


def _watch(page, base: str, problems: list) -> None:
    """Record JavaScript errors, failed requests and requests leaving 127.0.0.1."""
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))

    def response(r) -> None:
        if r.status >= 400:
            problems.append(f"HTTP {r.status} {r.url}")

    def request(r) -> None:
        if not r.url.startswith((base, "data:", "blob:", "ws://127.0.0.1")):
            problems.append(f"request off this machine: {r.url}")

    page.on("response", response)
    page.on("request", request)


def _wait(predicate, seconds: float, what: str, page) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {seconds} s")
        page.wait_for_timeout(200)


def _printed_proxy_path(page) -> str:
    texts = page.evaluate(
        "Array.from(document.querySelectorAll('.jp-OutputArea-output')).map(e => e.textContent)"
    )
    for text in texts:
        match = re.search(r"daskgd dashboard: (\S+) \(through Jupyter\)", text)
        if match:
            return match.group(1)
    return ""


def test_live_view_in_jupyterlab_and_through_its_proxy(browser, jupyterlab):
    base, token, root = jupyterlab
    _write_notebook(root / "live.ipynb")
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    problems: list[str] = []
    lab = context.new_page()
    try:
        _watch(lab, base, problems)
        lab.goto(f"{base}/lab/tree/live.ipynb?token={token}")
        kernel_idle = (
            "() => { const w = window.jupyterapp && jupyterapp.shell.currentWidget;"
            " const k = w && w.sessionContext && w.sessionContext.session"
            " && w.sessionContext.session.kernel; return !!k && k.status === 'idle'; }"
        )
        _wait(lambda: lab.evaluate(kernel_idle), 90, "the notebook's kernel started", lab)
        # Not awaited: the command's promise resolves only when every cell has run.
        lab.evaluate("() => { jupyterapp.commands.execute('notebook:run-all-cells'); }")
        _wait(lambda: _printed_proxy_path(lab), 90, "serve() printed the proxied URL", lab)
        path = _printed_proxy_path(lab)
        assert path.startswith("/proxy/") and path.endswith("/"), path
        assert lab.evaluate(LENGTH_JS, "daskgd-loss-data") == 0  # the view is there, empty

        proxied = context.new_page()
        _watch(proxied, base, problems)
        proxied.goto(base + path)
        _wait(lambda: proxied.evaluate(LENGTH_JS, "daskgd-loss-data") >= 0, 30,
              "the proxied page drew its plots", proxied)  # fmt: skip
        (root / "go").touch()

        seen_lab, seen_proxied, pending_seen = set(), set(), False
        deadline = time.monotonic() + FIT_TIMEOUT_SECONDS
        while not (root / "done.json").exists():
            assert time.monotonic() < deadline, f"the fit did not end in {FIT_TIMEOUT_SECONDS} s"
            seen_lab.add(lab.evaluate(LENGTH_JS, "daskgd-loss-data"))
            seen_proxied.add(proxied.evaluate(LENGTH_JS, "daskgd-loss-data"))
            pending_seen = pending_seen or bool(lab.evaluate(PENDING_JS))
            boxes = lab.evaluate(BOXES_JS)
            lab.wait_for_timeout(150)
        n = json.loads((root / "done.json").read_text())
        assert n == FIT_ITERATIONS + 1
        for page in (lab, proxied):
            _wait(lambda p=page: p.evaluate(LENGTH_JS, "daskgd-loss-data") == n, 20,
                  "every iteration drawn", page)  # fmt: skip
            _wait(lambda p=page: p.evaluate(LENGTH_JS, "daskgd-heatmap-data") > 0, 20,
                  "per-worker data drawn", page)  # fmt: skip
        # The plots grew while the fit ran (not only at its end), in both pages.
        assert len(seen_lab - {-1, 0, n}) >= 2, seen_lab
        assert len(seen_proxied - {-1, 0, n}) >= 2, seen_proxied
        assert pending_seen  # the per-worker plots marked what was not measured yet
        _wait(lambda: lab.evaluate(PENDING_JS) is False, 20, "nothing pending at the end", lab)
        memory = proxied.evaluate(
            "Bokeh.documents[0].get_model_by_name('daskgd-workers-data').data.memory"
        )
        assert memory and all(text != "unknown" for text in memory), memory
        view_top, view_bottom = boxes["view"]
        assert view_bottom - view_top < 450, boxes  # the compact layout
        assert boxes["bar"] and boxes["bar"][1] - view_top < 900, boxes  # both on screen
        outputs = lab.evaluate(
            "Array.from(document.querySelectorAll('.jp-OutputArea-output')).map(e => e.textContent)"
        )
        assert not any("javascript error" in text.lower() for text in outputs), outputs
        stderr = lab.evaluate(
            "Array.from(document.querySelectorAll("
            "'[data-mime-type=\"application/vnd.jupyter.stderr\"]')).map(e => e.textContent)"
        )
        assert stderr == [], stderr
        assert problems == [], problems
        lab.screenshot(path=str(root / "jupyterlab.png"))
        proxied.screenshot(path=str(root / "proxied.png"), full_page=True)
    except BaseException:
        _report(lab, root)
        raise
    finally:
        (root / "go").touch()
        (root / "closed").touch()
        context.close()


def _report(page, root: Path) -> None:
    """On failure: the notebook's outputs and a screenshot, printed for the log."""
    try:
        texts = page.evaluate(
            "Array.from(document.querySelectorAll('.jp-OutputArea-output')).map(e => e.textContent)"
        )
        page.screenshot(path=str(root / "failure.png"), full_page=True)
        print("outputs:", texts, "\nscreenshot:", root / "failure.png")
    except Exception as error:  # noqa: BLE001 - the original failure matters more
        print("could not report the page:", error)
