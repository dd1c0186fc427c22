"""Emulated latency, stragglers and failures on a real LocalCluster, and the parsers."""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest

import daskgd
from daskgd.data.synthetic import make_classification
from daskgd.engine.failures import FailureInjector
from daskgd.runtime.emulation import (
    Emulation,
    KillAt,
    KillRandomly,
    RandomDelay,
    parse_bandwidth,
    parse_duration,
    parse_failure,
    parse_straggler,
)

#: For the tests whose assertions compare emulated delays with measured times.
serial = pytest.mark.serial

# -- parsers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5ms", 0.005), ("0.2s", 0.2), ("150us", 150e-6), ("2", 2.0), (" 1e-3 s ", 1e-3)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "rate"),
    [("100MB/s", 1e8), ("1Gbit/s", 1.25e8), ("512KiB/s", 512 * 1024), ("10 MB", 1e7)],
)
def test_parse_bandwidth(text, rate):
    assert parse_bandwidth(text) == pytest.approx(rate)


def test_parse_straggler_and_failure():
    assert parse_straggler("1:3x") == {1: 3.0}
    assert parse_straggler("tcp://127.0.0.1:4000:2") == {"tcp://127.0.0.1:4000": 2.0}
    assert parse_straggler("exp:20ms") == RandomDelay("exponential", 0.02, 0)
    assert parse_straggler("lognormal:5ms:seed=4") == RandomDelay("lognormal", 0.005, 4)
    assert parse_failure("p=0.01") == KillRandomly(0.01, 0)
    assert parse_failure("p=0.2,seed=3") == KillRandomly(0.2, 3)
    assert parse_failure("1@20") == KillAt(1, 20)


@pytest.mark.parametrize(
    ("parse", "text"),
    [
        (parse_duration, "-5ms"),
        (parse_duration, "5 fortnights"),
        (parse_duration, "fast"),
        (parse_bandwidth, "100MB/h"),
        (parse_bandwidth, "0MB/s"),
        (parse_bandwidth, "-1MB/s"),
        (parse_straggler, "1:0.5x"),
        (parse_straggler, "slow"),
        (parse_straggler, "exp:-2ms"),
        (parse_failure, "p=1.5"),
        (parse_failure, "p=-0.1"),
        (parse_failure, "p=often"),
        (parse_failure, "x@3"),
        (parse_failure, "1@"),
    ],
)
def test_nonsense_strings_are_rejected_naming_the_input(parse, text):
    with pytest.raises(ValueError) as error:
        parse(text)
    assert repr(text) in str(error.value) or text.strip() in str(error.value)


def test_nonsense_settings_are_rejected():
    with pytest.raises(ValueError, match="latency"):
        Emulation(latency_seconds=-0.001)
    with pytest.raises(ValueError, match="bandwidth"):
        Emulation(bandwidth_bytes_per_second=0)
    with pytest.raises(ValueError, match=">= 1"):
        Emulation(stragglers={0: 0.5})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        KillRandomly(2.0)
    with pytest.raises(ValueError, match="either"):
        Emulation.from_strings(stragglers=["1:3x", "exp:1ms"])


@pytest.mark.parametrize("value", [-0.01, math.nan, math.inf, "5ms", True])
def test_bad_emulated_compute_is_rejected_naming_it(value):
    with pytest.raises(ValueError, match="chunk_compute_seconds"):
        Emulation(chunk_compute_seconds=value)


def test_emulated_compute_is_a_floor_per_chunk_that_a_straggler_multiplies():
    from daskgd.runtime.emulation import worker_slowdown

    emulation = Emulation(chunk_compute_seconds=0.01)
    assert emulation.slows_chunks and emulation.to_attrs()["chunk_compute_seconds"] == 0.01
    fast, slow = worker_slowdown(emulation, 1.0, 0), worker_slowdown(emulation, 3.0, 1)
    # 2 chunks really computed in 2 ms: sleep until 2 x 10 ms, the straggler 3 x that
    assert fast.extra_seconds(0.002, 2) == pytest.approx(0.018)
    assert slow.extra_seconds(0.002, 2) == pytest.approx(0.058)
    # real compute above the floor is kept (and multiplied), never cut
    assert fast.extra_seconds(0.05, 2) == 0.0
    assert slow.extra_seconds(0.05, 2) == pytest.approx(0.1)
    assert worker_slowdown(Emulation(), 3.0, 0).extra_seconds(0.01) == pytest.approx(0.02)


def test_unknown_worker_is_rejected_before_the_fit_starts(cluster_client):
    X, y = make_classification(2_000, 3, chunks=500, random_state=0)
    for emulation in (Emulation(stragglers={5: 2.0}), Emulation(failures=[KillAt(2, 1)])):
        model = daskgd.LogisticRegression(client=cluster_client, emulation=emulation)
        with pytest.raises(ValueError, match="unknown worker index"):
            model.fit(X, y)
        assert not hasattr(model, "trace_")
    with pytest.raises(TypeError, match="emulation"):
        daskgd.LogisticRegression(client=cluster_client, emulation="5ms").fit(X, y)


# -- on the cluster ------------------------------------------------------------------------

GD = {"solver": "gd", "learning_rate": 2.0, "tol": 0.0}


def _fit(client, X, y, emulation=None, max_iter=8, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", daskgd.ConvergenceWarning)
        model = daskgd.LogisticRegression(
            client=client, emulation=emulation, max_iter=max_iter, **GD, **options
        )
        return model.fit(X, y)


def _median_iteration(model) -> float:
    return float(model.trace_.wall_seconds.isel(iteration=slice(1, None)).median())


#: Messages on an iteration's critical path with one evaluation per iteration: w to the
#: workers (update_data, in parallel), one partial sum worker -> worker (get_data), the
#: total to the scheduler for the client (get_data).
CRITICAL_MESSAGES = 3


@serial
def test_latency_adds_about_one_latency_per_message_on_the_critical_path(cluster_client):
    X, y = make_classification(20_000, 10, chunks=2_500, random_state=1)
    latency = 0.04
    base = _fit(cluster_client, X, y)
    slow = _fit(cluster_client, X, y, Emulation(latency_seconds=latency))
    np.testing.assert_allclose(slow.coef_, base.coef_, rtol=1e-12)
    added = _median_iteration(slow) - _median_iteration(base)
    # Loaded (another job beside the suite, load 8), the two fits' medians moved apart by
    # more than the latency: 4.4 latencies added once. The lower bound is the claim.
    upper = 1.4 if _machine_is_calm() else 2.0
    assert 0.7 * CRITICAL_MESSAGES < added / latency < upper * CRITICAL_MESSAGES, added
    assert slow.trace_.attrs["emulation"].startswith("{")
    assert '"latency_seconds": 0.04' in slow.trace_.attrs["emulation"]


@serial
def test_bandwidth_delays_bigger_transfers_more(cluster_client):
    X, y = make_classification(10_000, 400, chunks=2_500, random_state=1)
    # 401 float64 = 3.2 kB per message at 50 kB/s: 64 ms per message.
    slow = _fit(cluster_client, X, y, Emulation(bandwidth_bytes_per_second=50e3), max_iter=4)
    half = _fit(
        cluster_client,
        X,
        y,
        Emulation(bandwidth_bytes_per_second=50e3),
        max_iter=4,
        transfer_dtype="float16",
    )
    assert _median_iteration(half) < 0.6 * _median_iteration(slow)


#: Iterations of the straggler-flag tests: 2 workers x 60 = 120 cells, so "at most ~1%"
#: allows one flagged cell.
FLAG_ITERATIONS = 60


def _machine_is_calm() -> bool:
    """1-minute load average at most the number of cores."""
    return os.getloadavg()[0] <= (os.cpu_count() or 1)


@serial
def test_the_straggler_flag_is_trustworthy(cluster_client):
    """An emulated 3x straggler is flagged in >= 95% of its iterations (>= 75% on a loaded
    machine), its peer (which waits) hardly ever; un-emulated, at most ~1% of the
    worker-iterations are flagged.

    The last needs a machine that is not loaded many times over: at load 19-21 on 2
    cores one un-emulated worker's compute per byte stayed 2.8x its peer's for 11
    iterations in a row (other jobs' bursts land on one process), a real straggler as
    far as the wait goes. There the un-emulated bound is not asserted (the test says
    so in its output); in 440 un-emulated cells of fits at load 9-22 it flagged none."""
    X, y = make_classification(100_000, 100, chunks=12_500, random_state=2)
    factor = 3.0
    calm = _machine_is_calm()
    base = _fit(cluster_client, X, y, max_iter=FLAG_ITERATIONS)
    calm = calm and _machine_is_calm()
    slowed = _fit(cluster_client, X, y, Emulation(stragglers={1: factor}), max_iter=FLAG_ITERATIONS)
    np.testing.assert_allclose(slowed.coef_, base.coef_, rtol=1e-12)
    trace, base_trace = (m.trace_.isel(iteration=slice(1, None)) for m in (slowed, base))
    straggler, other = sorted(trace.worker.values)[1], sorted(trace.worker.values)[0]
    # At load 8-10 (another job beside the suite) the peer's compute stretched while the
    # straggler's emulated sleep did not: a median ratio of 2.1 instead of 3, and 85-88%
    # of its iterations flagged (the same with the rule before its "outlasted the
    # others" bound: equal holdings make the two excesses equal).
    calm = calm and _machine_is_calm()
    flagged_share = float(trace.straggler.sel(worker=straggler).mean())
    assert flagged_share >= (0.95 if calm else 0.75), flagged_share
    assert float(trace.straggler.sel(worker=other).mean()) <= 0.05
    flagged = int(base_trace.straggler.sum())
    if calm:
        assert flagged <= 0.01 * base_trace.straggler.size + 0.5
    else:
        print(f"load {os.getloadavg()[0]:.1f}: un-emulated bound not asserted ({flagged} flagged)")


@serial
def test_the_peer_of_a_straggler_waits_in_sync(cluster_client):
    """Within one fit (so that both workers share the machine's load): worker 1 computes
    about 5x longer, worker 0 idles for that gap, and the trace counts it as sync."""
    X, y = make_classification(100_000, 100, chunks=12_500, random_state=2)
    factor = 5.0
    slowed = _fit(cluster_client, X, y, Emulation(stragglers={1: factor}), max_iter=12)
    trace = slowed.trace_.isel(iteration=slice(1, None))
    straggler, other = sorted(trace.worker.values)[1], sorted(trace.worker.values)[0]
    compute = trace.compute_seconds
    ratio = (compute.sel(worker=straggler) / compute.sel(worker=other)).median()
    assert float(ratio) > 0.5 * factor
    gap = compute.sel(worker=straggler) - compute.sel(worker=other)
    # The wait is measured from the evaluation's window, independently of the compute:
    # the peer was idle for most of the gap, and that idle time is synchronisation.
    waited = trace.wait_seconds.sel(worker=other)
    assert float((waited / gap).median()) > 0.8
    assert float((trace.sync_seconds.sel(worker=other) / gap).median()) > 0.8
    assert float(trace.sync_seconds.sel(worker=straggler).max()) < 0.1 * float(gap.median())


@serial
def test_one_worker_has_no_synchronisation():
    """With one worker nobody waits for a slower peer: sync is 0 in the trace and in the
    summary's split, for distributed's records (mapreduce) and the residents' (direct)."""
    from distributed import Client, LocalCluster

    from daskgd.observe.summary import split

    X, y = make_classification(20_000, 10, chunks=5_000, random_state=1)
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        for strategy in ("mapreduce", "direct"):
            trace = _fit(client, X, y, max_iter=6, strategy=strategy).trace_
            assert trace.sizes["worker"] == 1, strategy
            np.testing.assert_allclose(trace.sync_seconds, 0.0, err_msg=strategy)
            np.testing.assert_allclose(trace.overhead_seconds, trace.wait_seconds)
            parts = split(trace)
            assert float(parts.run_share.sel(part="sync")) < 0.01, strategy
            np.testing.assert_allclose(float(parts.run_share.sum()), 1.0)


@pytest.mark.parametrize("strategy", ["mapreduce", "direct"])
def test_emulated_compute_sets_every_workers_compute_time(cluster_client, strategy):
    """Each chunk takes at least chunk_compute_seconds, the straggler 3x that: the
    compute time is the emulation's however loaded the machine (chunks of 500 x 4 take
    microseconds), and the residents report the sleep apart (emulated_seconds)."""
    X, y = make_classification(4_000, 4, chunks=500, random_state=1)  # 4 chunks a worker
    chunk = 0.02
    emulation = Emulation(stragglers={1: 3.0}, chunk_compute_seconds=chunk)
    trace = _fit(cluster_client, X, y, emulation, max_iter=4, strategy=strategy).trace_
    compute = trace.compute_seconds.isel(iteration=slice(1, None))
    straggler, other = sorted(trace.worker.values)[1], sorted(trace.worker.values)[0]
    assert float(compute.sel(worker=other).min()) >= 4 * chunk
    assert float(compute.sel(worker=straggler).min()) >= 3 * 4 * chunk
    ratio = float((compute.sel(worker=straggler) / compute.sel(worker=other)).median())
    assert 2.5 <= ratio <= 3.5, ratio
    if strategy == "direct":
        emulated = trace.emulated_seconds.isel(iteration=slice(1, None))
        real = compute - emulated
        assert float(real.min()) >= 0 and float(emulated.sel(worker=straggler).min()) > 0
        # the sleep is all but the real compute: 2 x the floor more for the straggler
        gap = emulated.sel(worker=straggler) - emulated.sel(worker=other)
        assert float(gap.median()) == pytest.approx(2 * 4 * chunk, rel=0.25)
    else:  # distributed's records: no emulated part, the variable is not there
        assert "emulated_seconds" not in trace


@serial
def test_random_delays_slow_every_worker(cluster_client):
    X, y = make_classification(10_000, 10, chunks=2_500, random_state=1)
    base = _fit(cluster_client, X, y, max_iter=4)
    delayed = _fit(cluster_client, X, y, Emulation(stragglers=RandomDelay("exponential", 0.02)))
    # Two chunks in series per worker, the max of two workers: well above one mean delay.
    assert _median_iteration(delayed) > _median_iteration(base) + 0.02


@pytest.mark.slow
def test_a_failure_at_iteration_t_gives_the_undisturbed_coefficients(client):
    X, y = make_classification(40_000, 10, chunks=5_000, random_state=3)
    undisturbed = _fit(client, X, y, max_iter=10)
    before = set(client.ncores())
    disturbed = _fit(client, X, y, Emulation(failures=[KillAt(0, 4)]), max_iter=10)
    np.testing.assert_allclose(disturbed.coef_, undisturbed.coef_, rtol=1e-9)
    np.testing.assert_allclose(disturbed.trace_.loss, undisturbed.trace_.loss, rtol=1e-9)
    # The killed worker was restarted by its nanny under a new address (30 s missed once
    # in a CI-style run; the suite's other waits for a nanny's restart allow 60 s).
    client.wait_for_workers(2, timeout=60)
    assert set(client.ncores()) != before
    assert "failures" in disturbed.trace_.attrs["emulation"]


def test_attrs_of_an_undisturbed_fit(cluster_client):
    X, y = make_classification(2_000, 3, chunks=500, random_state=0)
    model = _fit(cluster_client, X, y, max_iter=2)
    assert model.trace_.attrs["emulation"] == "None"
    assert model.trace_.attrs["transfer_dtype"] == "float64"
    assert math.isfinite(float(model.trace_.loss[-1]))


def test_cli_flags_build_the_emulation():
    from daskgd.cli import app as cli
    from daskgd.cli.options import emulation_from

    args = cli.build_parser().parse_args(
        ["demo", "--latency", "5ms", "--bandwidth", "100MB/s", "--straggler", "1:3x",
         "--fail", "p=0.01", "--fail", "0@20", "--transfer-dtype", "float16"]
    )  # fmt: skip
    emulation = emulation_from(args)
    assert emulation.latency_seconds == pytest.approx(0.005)
    assert emulation.bandwidth_bytes_per_second == pytest.approx(1e8)
    assert emulation.stragglers == {1: 3.0}
    assert emulation.failures == (KillRandomly(0.01), KillAt(0, 20))
    assert args.transfer_dtype == "float16"
    assert emulation_from(cli.build_parser().parse_args(["demo"])) is None
    compute = emulation_from(cli.build_parser().parse_args(["demo", "--emulated-compute", "20ms"]))
    assert compute.chunk_compute_seconds == pytest.approx(0.02) and compute.slows_chunks


@pytest.mark.parametrize(
    "flags",
    [["--latency=-5ms"], ["--bandwidth", "fast"], ["--fail", "p=3"], ["--straggler", "1:x"],
     ["--transfer-dtype", "float8"]],
)  # fmt: skip
def test_cli_rejects_nonsense_before_starting_a_cluster(flags, capsys):
    from daskgd.cli import app as cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", *flags])
    assert exit_.value.code == 2
    assert "error" in capsys.readouterr().err


class _FakeClient:
    """The part of a Client the injector uses: the scheduler's running workers, asked
    through ``client.sync`` (as :func:`daskgd.data.waits.call` does)."""

    def __init__(self, workers):
        from types import SimpleNamespace

        self.workers = workers
        self.scheduler = SimpleNamespace(ncores_running=self._running, address="tcp://fake:1")

    async def _running(self):
        return dict.fromkeys(self.workers, 1)

    def sync(self, function, *args, callback_timeout=None, **kwargs):
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        # A loop of its own in a thread: the test's thread may have one running already.
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, function(*args, **kwargs)).result()


def test_random_failures_are_seeded_and_spare_one_worker(monkeypatch):
    from types import SimpleNamespace

    from daskgd.engine import failures as module

    killed = []
    monkeypatch.setattr(
        module, "kill_worker", lambda client, address, timeout: killed.append(address)
    )
    client = _FakeClient(["tcp://a:1", "tcp://b:1", "tcp://c:1"])

    def run(p, seed, iterations=20):
        killed.clear()
        injector = FailureInjector(client, Emulation(failures=KillRandomly(p, seed)))
        for i in range(iterations):
            injector.on_iteration_end(SimpleNamespace(iteration=i))
        return list(killed), injector.killed

    assert run(0.0, 1)[0] == []
    always, log = run(1.0, 1, iterations=3)
    assert len(always) == 3 * 2  # all workers but one, every iteration
    assert [i for i, _ in log] == [0, 0, 1, 1, 2, 2]
    assert run(0.3, 7) == run(0.3, 7)
    assert run(0.3, 7)[0] != run(0.3, 8)[0]
    injector = FailureInjector(client, Emulation(failures=[KillAt(2, 5), KillAt(9, 1)]))
    killed.clear()
    for i in range(8):
        injector.on_iteration_end(SimpleNamespace(iteration=i))
    assert killed == ["tcp://c:1"]  # index 9 is gone by then: skipped, not an error
