"""The parameter server (staleness 0, s, None) on a real LocalCluster.

Oracles: ``mapreduce`` gd with the same fixed step (the synchronous server must take the
very same steps), scikit-learn's lbfgs to a tight tol (the optimum the asynchronous and
SSP servers must reach), an undisturbed fit (a killed worker), and the recorded
staleness itself (replayed to check the SSP bound).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest
from cli_helpers import run_main
from sklearn.linear_model import LogisticRegression as SkLogisticRegression

import daskgd
from daskgd.data.synthetic import make_classification
from daskgd.runtime.emulation import Emulation, KillAt
from daskgd.runtime.server import ServerLostError
from daskgd.strategies import get_strategy

STRAGGLER = Emulation(stragglers={1: 3.0})
#: F(w) - F(w*) reached by the SSP and asynchronous servers in 400 updates at step 2
#: (measured 1e-9 to 1e-8 here; the synchronous server's gd is at ~1e-9 after 100).
OPTIMUM_GAP = 1e-6


def _fit(strategy, X, y, **options):
    settings = {"solver": "gd", "learning_rate": 2.0, "max_iter": 20, "tol": 0.0, **options}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", daskgd.ConvergenceWarning)
        return daskgd.LogisticRegression(strategy=strategy, **settings).fit(X, y)


@pytest.fixture(scope="module")
def data(session_client):
    return make_classification(8_000, 6, chunks=1_000, random_state=5)


def test_synchronous_server_takes_the_same_steps_as_mapreduce(cluster_client, data):
    X, y = data
    reference = _fit("mapreduce", X, y)
    server = _fit(get_strategy("parameter-server", staleness=0), X, y)
    np.testing.assert_allclose(server.coef_, reference.coef_, rtol=0, atol=1e-10)
    np.testing.assert_allclose(server.trace_.loss, reference.trace_.loss, rtol=1e-10)
    trace = server.trace_
    assert trace.attrs["strategy"] == "parameter-server"
    assert trace.attrs["staleness"] == 0
    assert trace.attrs["server"] in trace.worker.values
    assert (trace.staleness.isel(iteration=slice(1, None)) == 0).all()
    # The server's worker moves the pulls and pushes of everyone: it is the busiest node.
    sent = trace.bytes_sent.sum("iteration") + trace.bytes_received.sum("iteration")
    assert str(sent.idxmax("worker").values) == trace.attrs["server"]


def test_emulated_latency_and_stragglers_act_on_pulls_pushes_and_compute(cluster_client, data):
    X, y = data
    latency = 0.02
    strategy = get_strategy("parameter-server", emulation=Emulation(latency_seconds=latency))
    trace = _fit(strategy, X, y, max_iter=5).trace_.isel(iteration=slice(1, None))
    blocked = trace.communication_seconds + trace.wait_seconds
    # every worker waits for one delayed message per round: its pull, or the server a push
    assert (blocked >= latency).all(), blocked.values
    slow = Emulation(stragglers={1: 10.0})  # worker index 1 of the sorted workers
    trace = _fit(get_strategy("parameter-server", staleness=None, emulation=slow), X, y,
                 max_iter=40).trace_  # fmt: skip
    straggler, other = sorted(trace.worker.values)[1], sorted(trace.worker.values)[0]
    compute = trace.compute_seconds.where(~np.isnan(trace.staleness))
    ratio = float(compute.sel(worker=straggler).median() / compute.sel(worker=other).median())
    assert ratio > 3  # 10x by construction; far above 1 however loaded the machine is
    staleness = trace.staleness.mean("iteration")
    assert float(staleness.sel(worker=straggler)) > float(staleness.sel(worker=other))


def _clocks_ahead(trace) -> list[int]:
    """Replay the applied pushes: how far ahead of the slowest each pusher was."""
    clocks = dict.fromkeys(trace.worker.values, 0)
    ahead = []
    for iteration in trace.iteration.values[1:]:
        staleness = trace.staleness.sel(iteration=iteration)
        pushed = [str(w) for w, s in zip(trace.worker.values, staleness.values, strict=True)
                  if not np.isnan(s)]  # fmt: skip
        ahead += [clocks[w] - min(clocks.values()) for w in pushed]
        for worker in pushed:
            clocks[worker] += 1
    return ahead


def test_ssp_keeps_every_worker_within_s_steps_of_the_slowest(cluster_client, data):
    X, y = data
    for s in (1, 2):
        strategy = get_strategy("parameter-server", staleness=s, emulation=STRAGGLER)
        trace = _fit(strategy, X, y, max_iter=60).trace_
        ahead = _clocks_ahead(trace)
        assert max(ahead) == s, (s, ahead)  # the bound is reached, never passed
        applied = trace.staleness.values[~np.isnan(trace.staleness.values)]
        assert applied.size == 60 + len(trace.worker) - 1  # one per update, m in the first
    # Without a bound the fast worker runs further ahead: the replay can tell.
    unbounded = get_strategy("parameter-server", staleness=None, emulation=STRAGGLER)
    assert max(_clocks_ahead(_fit(unbounded, X, y, max_iter=60).trace_)) > 2


def test_async_and_ssp_reach_the_optimum_under_a_straggler(cluster_client, data):
    X, y = data
    X_np, y_np = np.asarray(X), np.asarray(y)
    oracle = SkLogisticRegression(C=1.0, tol=1e-12, max_iter=10_000).fit(X_np, y_np)
    w_star = np.append(oracle.coef_.ravel(), oracle.intercept_)
    best = _objective(X_np, y_np, w_star)
    for staleness in (2, None):
        strategy = get_strategy("parameter-server", staleness=staleness, emulation=STRAGGLER)
        model = _fit(strategy, X, y, max_iter=400, tol=1e-7)
        w = np.append(model.coef_, model.intercept_)
        assert _objective(X_np, y_np, w) - best <= OPTIMUM_GAP, staleness
        # The trace's loss is the full-data objective at the kept w (checked with numpy).
        assert float(model.trace_.loss[-1]) == pytest.approx(_objective(X_np, y_np, w), 1e-9)
        assert model.trace_.attrs["stopped_by"] in ("tol", "max_iter")


def _rises(trace) -> float:
    """The largest rise of the full-data loss above the best loss before it."""
    loss = trace.loss.dropna("iteration").values
    return float(np.max(loss[1:] - np.minimum.accumulate(loss)[:-1]))


def test_the_default_step_rule_keeps_the_asynchronous_loss_monotone(cluster_client, data):
    """The server's own worker pushes ~10x as often as the other (whose messages carry
    the latency): the other's sum ages while w moves. With steps lr / (1 + mean age) the
    full-data loss rose by ~1e-2 within 80 updates (measured 9.9e-3 and 1.0e-2); the
    default rule ('secant') shrinks the step with the distance w moved since each sum's
    w and the loss never rises (beyond rounding)."""
    X, y = data
    latency = Emulation(latency_seconds=0.01)
    default = get_strategy("parameter-server", staleness=None, emulation=latency)
    trace = _fit(default, X, y, max_iter=80).trace_
    assert trace.attrs["step_rule"] == "secant"
    assert _rises(trace) <= 1e-12 * float(trace.loss[0])
    assert float(trace.loss[-1]) < float(trace.loss[0])
    mean_age = get_strategy("parameter-server", staleness=None, emulation=latency,
                            step_rule="mean-age")  # fmt: skip
    contrast = _fit(mean_age, X, y, max_iter=80).trace_
    # The rule matters here, when the premise holds: the other worker's sums aged 19-34
    # updates (it pushed 3-6 of 80 times; rises 7e-3 to 1.8e-2). On a loaded machine the
    # pushes came closer to even once and mean-age rose by 2e-6 only: then not asserted.
    if float(contrast.staleness.max()) >= 10:
        assert _rises(contrast) > 1e-4
    else:
        print(f"the premise did not hold (max staleness {float(contrast.staleness.max())})")


class _QuadraticShards:
    """f(w) = sum_i ||A_i w - b_i||^2 / (2 n) over equal shards i, with numpy."""

    def __init__(self, rng, n_shards, d, rows=30):
        self.A = [rng.normal(size=(rows, d)) for _ in range(n_shards)]
        self.b = [rng.normal(size=rows) for _ in range(n_shards)]
        self.n = rows * n_shards
        # L of every shard's gradient scaled to the whole (m x its share): bounds both
        # the error of a stale shard gradient and the curvature of f
        self.lipschitz = max(float(np.linalg.eigvalsh(A.T @ A)[-1]) for A in self.A)
        self.lipschitz *= n_shards / self.n

    def f(self, w):
        return sum(float(np.sum((A @ w - b) ** 2)) for A, b in self.shards()) / (2 * self.n)

    def shard_grad(self, i, w):
        return self.A[i].T @ (self.A[i] @ w - self.b[i]) / self.n

    def optimum(self):
        return np.linalg.lstsq(np.vstack(self.A), np.concatenate(self.b), rcond=None)[0]

    def shards(self):
        return zip(self.A, self.b, strict=True)


def test_the_descent_rule_decreases_f_whatever_the_sums_ages():
    """The oracle is f itself (numpy): the aggregated gradient of shard gradients taken
    at random older points, the 'descent' step, and f must not rise, in 300 draws; the
    same draws with the undamped step ('constant', lr = 1/L) rise in many of them."""
    from daskgd.runtime.server import Staleness, stale_step

    rng = np.random.default_rng(0)
    rose = {"descent": 0, "constant": 0}
    for _ in range(300):
        problem = _QuadraticShards(rng, 4, 5)
        w = problem.optimum() + rng.normal(scale=0.1, size=5)  # near w*: G is small
        older = [w + rng.normal(scale=rng.uniform(0, 0.5), size=5) for _ in range(4)]
        G = sum(problem.shard_grad(i, v) for i, v in enumerate(older))
        distance = float(np.mean([np.linalg.norm(w - v) for v in older]))
        staleness = Staleness(1.0, 2.0, distance, float(np.linalg.norm(G)))
        for rule in rose:
            step = stale_step(rule, 1.0 / problem.lipschitz, staleness, problem.lipschitz)
            rose[rule] += problem.f(w - step * G) > problem.f(w) + 1e-12
    assert rose["descent"] == 0
    assert rose["constant"] >= 30, rose  # the draws are stale enough to matter


def test_step_rules_follow_their_formulas():
    from daskgd.runtime.server import STEP_RULES, Staleness, stale_step

    old = Staleness(mean_age=1.5, max_age=4.0, distance=0.1, mapping_norm=1.0)
    lr, L = 0.5, 1.0
    assert stale_step("mean-age", lr, old) == pytest.approx(0.5 / 2.5)
    assert stale_step("max-age", lr, old) == pytest.approx(0.5 / 5.0)
    assert stale_step("constant", lr, old) == lr
    assert stale_step("stable", lr, old, L) == pytest.approx(1 / 2.5)  # min(lr, 1/(L(1+tau)))
    assert stale_step("bounded", lr, old, L) == pytest.approx(0.4 + 0.1 / 2.5)
    assert stale_step("descent", lr, old, L) == pytest.approx(0.5)  # (1 - 0.1) / L > lr
    far = Staleness(1.5, 4.0, distance=0.6, mapping_norm=1.0)
    assert stale_step("descent", lr, far, L) == pytest.approx(0.4)
    assert stale_step("descent", lr, Staleness(1.5, 4.0, 2.0, 1.0), L) == 0.0
    # 'secant': the measured curvature (<= L) bounds the error, L still caps the step
    flat = Staleness(1.5, 4.0, distance=2.0, mapping_norm=1.0, curvature=0.25)
    assert stale_step("secant", lr, flat, L) == pytest.approx(0.5)  # 1 - 0.25 x 2 = 0.5
    assert stale_step("secant", 2.0, flat, L) == pytest.approx(0.5)
    assert stale_step("secant", lr, Staleness(1.5, 4.0, 0.6, 1.0), L) == pytest.approx(0.4)
    fresh = Staleness(0.0, 0.0, 0.0, 1.0)
    for rule in STEP_RULES:  # no staleness: every rule takes the learning rate (< 1/L)
        assert stale_step(rule, lr, fresh, L) == pytest.approx(lr), rule
    with pytest.raises(ValueError, match="needs the Lipschitz"):
        stale_step("descent", lr, old)
    with pytest.raises(ValueError, match="unknown step_rule 'fast'"):
        stale_step("fast", lr, old)


def test_stale_servers_reach_the_l1_optimum_through_the_prox(cluster_client, data):
    """L1 (a prox in every step, the step rule on the gradient mapping): the SSP and
    asynchronous servers under a straggler end where mapreduce's proximal gd ends."""
    X, y = data
    l1 = {"penalty": "l1", "C": 0.003, "max_iter": 400, "tol": 1e-8}
    reference = _fit("mapreduce", X, y, **l1)
    assert (reference.coef_ == 0).any() and (reference.coef_ != 0).any()  # a sparse optimum
    for staleness in (2, None):
        strategy = get_strategy("parameter-server", staleness=staleness, emulation=STRAGGLER)
        model = _fit(strategy, X, y, **l1)
        loss = float(model.trace_.loss.dropna("iteration")[-1])
        assert loss - float(reference.trace_.loss[-1]) <= 1e-7, staleness
        np.testing.assert_allclose(model.coef_, reference.coef_, atol=1e-3)
        assert ((model.coef_ == 0) == (reference.coef_ == 0)).all(), staleness


def test_loss_every_k_updates_is_the_full_data_loss_there_and_nan_between(cluster_client, data):
    X, y = data
    strategy = get_strategy("parameter-server", staleness=None, loss_every=5)
    trace = _fit(strategy, X, y, max_iter=23).trace_
    measured = ~np.isnan(trace.loss.values)
    assert trace.iteration.values[measured].tolist() == [0, 5, 10, 15, 20, 23]
    reference = _fit(get_strategy("parameter-server", staleness=None), X, y, max_iter=1).trace_
    assert float(trace.loss[0]) == pytest.approx(float(reference.loss[0]), rel=1e-12)


def _objective(X, y, w):
    """scikit-learn's objective for C=1 divided by n: mean logloss + ||coef||^2 / (2 n)."""
    z = X @ w[:-1] + w[-1]
    loss = np.mean(np.logaddexp(0.0, z) - y * z)
    return float(loss + w[:-1] @ w[:-1] / (2 * len(y)))


def _kill_when_running(client, rank, after_updates):
    """A thread killing the worker whose resident has ``rank`` (0: the server) once the
    server has made ``after_updates`` updates (read from its resident's state)."""
    pids = client.run(os.getpid)
    killed = {}

    def look(dask_worker):
        plugin = dask_worker.plugins.get("daskgd-runtime")
        found = []
        for resident in getattr(plugin, "residents", {}).values():
            progress = [v for k, v in resident.state.items() if k.endswith("-progress")]
            updates = max([getattr(p, "version", getattr(p, "iteration", 0)) for p in progress],
                          default=-1)  # fmt: skip
            found.append((resident.rank, updates))
        return found

    def kill():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            seen = client.run(look)
            server_updates = max((u for held in seen.values() for _, u in held), default=-1)
            for address, held in seen.items():
                if server_updates >= after_updates and any(r == rank for r, _ in held):
                    os.kill(pids[address], signal.SIGKILL)
                    killed["address"] = address
                    return
            time.sleep(0.02)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread, killed


@pytest.mark.slow
@pytest.mark.parametrize("staleness", [0, None])
def test_a_killed_worker_finishes_with_the_others(client, staleness):
    X, y = make_classification(8_000, 6, chunks=1_000, random_state=6)
    slow = Emulation(latency_seconds=0.01)  # a fit of a few seconds, to be killed in
    options = {"max_iter": 80, "timeout": 60}
    quiet = get_strategy("parameter-server", staleness=staleness, emulation=slow)
    undisturbed = _fit(quiet, X, y, **options)
    thread, killed = _kill_when_running(client, rank=1, after_updates=20)
    strategy = get_strategy("parameter-server", staleness=staleness, emulation=slow, timeout=20)
    disturbed = _fit(strategy, X, y, **options)
    thread.join(timeout=30)
    assert killed, "the worker was not killed during the fit"
    assert disturbed.trace_.attrs["attempts"] >= 2
    assert disturbed.trace_.attrs["server"] != killed["address"]
    if staleness == 0:  # the same rounds at the same w: the same answer
        np.testing.assert_allclose(disturbed.coef_, undisturbed.coef_, rtol=1e-8)
    else:  # asynchronous: the runs' timing differs; the ends are compared, loosely
        # The server's own worker pushes ~10x as often as the other (whose messages carry
        # the emulated latency): the 'descent' rule then takes small (or zero) steps while
        # the other's sum is old, so 80 updates end at different losses in different runs
        # (timing); the lost in-flight gradients cost a little more.
        final = float(disturbed.trace_.loss.dropna("iteration")[-1])
        assert final <= 1.05 * float(undisturbed.trace_.loss.dropna("iteration")[-1])
    assert disturbed.n_iter_[0] == 80


@pytest.mark.slow
@pytest.mark.parametrize("staleness", [0, 2, None])
def test_an_emulated_failure_kills_at_its_iteration_and_the_fit_finishes(client, staleness):
    """emulation=KillAt(worker, 10): the server sends that worker a KILL after update 10
    (it SIGKILLs itself), the runtime rebuilds, the fit ends its max_iter updates."""
    import json

    X, y = make_classification(8_000, 6, chunks=1_000, random_state=6)
    options = {"max_iter": 30, "timeout": 20}
    undisturbed = _fit(get_strategy("parameter-server", staleness=staleness), X, y, **options)
    workers = sorted(undisturbed.trace_.worker.values)
    victim = next(w for w in workers if w != undisturbed.trace_.attrs["server"])
    failing = Emulation(failures=[KillAt(workers.index(victim), 10)])
    start = time.monotonic()
    disturbed = _fit(get_strategy("parameter-server", staleness=staleness, emulation=failing,
                                  timeout=20), X, y, **options)  # fmt: skip
    assert time.monotonic() - start < 60
    trace = disturbed.trace_
    assert trace.attrs["server"] == undisturbed.trace_.attrs["server"]
    assert json.loads(trace.attrs["workers_killed"]) == [[10, victim]]
    assert trace.attrs["attempts"] >= 2 and disturbed.n_iter_[0] == 30
    client.wait_for_workers(2, timeout=60)  # its nanny restarted it (30 s missed once at load 7)
    assert victim not in client.ncores()
    if staleness == 0:  # the same rounds at the same w: the same answer
        np.testing.assert_allclose(disturbed.coef_, undisturbed.coef_, rtol=1e-8)
    else:  # the gradients in flight were lost: compared loosely
        final = float(trace.loss.dropna("iteration")[-1])
        assert final <= 1.05 * float(undisturbed.trace_.loss.dropna("iteration")[-1])


def test_the_kill_plan_names_the_workers_as_the_failure_injector_does():
    from daskgd.runtime.emulation import KillRandomly
    from daskgd.strategies.paramserver import kill_plan

    workers = ["tcp://127.0.0.1:3", "tcp://127.0.0.1:1", "tcp://127.0.0.1:2"]
    assert kill_plan(None, workers, 10) == {}
    plan = kill_plan(Emulation(failures=[KillAt(0, 4), KillAt(2, 4)]), workers, 10)
    assert plan == {4: ("tcp://127.0.0.1:1", "tcp://127.0.0.1:3")}  # sorted addresses
    every = kill_plan(Emulation(failures=[KillRandomly(1.0)]), workers, 3)
    assert sorted(every) == [0, 1, 2, 3] and all(len(v) == 2 for v in every.values())
    seeded = Emulation(failures=[KillRandomly(0.2, seed=3)])
    assert kill_plan(seeded, workers, 50) == kill_plan(seeded, workers, 50)
    assert 0 < sum(map(len, kill_plan(seeded, workers, 50).values())) < 3 * 51


@pytest.mark.slow
def test_a_killed_server_stops_with_a_clear_error(client):
    X, y = make_classification(8_000, 6, chunks=1_000, random_state=7)
    thread, killed = _kill_when_running(client, rank=0, after_updates=20)
    strategy = get_strategy("parameter-server", staleness=None, timeout=20,
                            emulation=Emulation(latency_seconds=0.01))  # fmt: skip
    start = time.monotonic()
    with pytest.raises(ServerLostError, match="parameter server's worker .* lost"):
        _fit(strategy, X, y, max_iter=500)
    thread.join(timeout=30)
    assert killed and time.monotonic() - start < 60
    # The cluster stays usable.
    assert _fit("parameter-server", X, y, max_iter=2).n_iter_[0] == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"staleness": -1}, "staleness must be >= 0"),
        ({"staleness": 1.5}, "staleness must be an integer"),
        ({"staleness": True}, "staleness must be an integer"),
        ({"staleness": "2"}, "staleness must be an integer"),
        ({"loss_every": 0}, "loss_every must be an integer >= 1"),
        ({"staleness": 2, "step_rule": "fast"}, "unknown step_rule 'fast'; choose one of"),
        ({"transfer_dtype": "float32"}, "transfer_dtype='float32' is not supported"),
    ],
)
def test_bad_options_get_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        get_strategy("parameter-server", **options)


@pytest.mark.parametrize(
    ("staleness", "solver"),
    [(0, "sgd"), (2, "sgd"), (None, "sgd"), (2, "lbfgs"), (None, "lbfgs"), (1, "nesterov"),
     (None, "nesterov")],
)  # fmt: skip
def test_other_solvers_are_rejected_before_anything_starts(local_scheduler, staleness, solver):
    strategy = get_strategy("parameter-server", staleness=staleness)
    X, y = np.zeros((10, 2)), np.arange(10) % 2
    with pytest.raises(ValueError, match=f"solver '{solver}' cannot run with strategy"):
        daskgd.LogisticRegression(solver=solver, strategy=strategy, learning_rate=1.0).fit(X, y)


def test_line_search_is_rejected_for_a_stale_server(local_scheduler):
    X, y = np.zeros((10, 2)), np.arange(10) % 2
    stale = get_strategy("parameter-server", staleness=2)
    with pytest.raises(ValueError, match="backtracks .* staleness=2 .* numeric learning_rate"):
        daskgd.LogisticRegression(solver="gd", strategy=stale).fit(X, y)


def _cli(*arguments, timeout=240):
    command = [sys.executable, "-m", "daskgd.cli", *map(str, arguments)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_the_cli_runs_a_stale_server(tmp_path):
    path = tmp_path / "ssp.nc"
    result = _cli("demo", "--samples", 6_000, "--features", 4, "--chunks", 4, "--max-iter", 30,
                  "--strategy", "parameter-server", "--staleness", 2, "--learning-rate", 1.0,
                  "--straggler", "1:3x", "--step-rule", "descent", "--emulated-compute", "5ms",
                  "--trace-out", path, "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    trace = daskgd.load_trace(path)
    assert trace.attrs["strategy"] == "parameter-server" and trace.attrs["staleness"] == 2
    assert trace.attrs["step_rule"] == "descent"
    # 4 chunks on 2 workers: every push computes 2 chunks, at least 5 ms each
    applied = trace.compute_seconds.where(~np.isnan(trace.staleness))
    assert float(applied.min()) >= 2 * 0.005 and float(trace.emulated_seconds.max()) > 0
    assert trace.sizes["iteration"] == 31 and "staleness" in trace


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--strategy", "parameter-server", "--staleness", "-1"], "staleness must be >= 0"),
        (["--strategy", "parameter-server", "--staleness", "x"], "staleness must be an integer"),
        (["--strategy", "direct", "--staleness", "2"], "--staleness is an option of"),
        (["--strategy", "parameter-server", "--staleness", "none"], "numeric learning_rate"),
        (["--strategy", "direct", "--step-rule", "descent"], "--step-rule is an option of"),
        (["--strategy", "parameter-server", "--step-rule", "fast"], "invalid choice: 'fast'"),
    ],
)
def test_the_cli_checks_staleness_before_a_cluster_starts(capsys, no_cluster, arguments, message):
    status, out, err = run_main(capsys, "demo", *arguments)
    assert status != 0
    assert message in err, err
    assert "LocalCluster" not in out
