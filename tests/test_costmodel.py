"""The cost model: critical paths, exact recovery from synthetic timings, predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

from daskgd.lab.costmodel import (
    DEFAULT_WORKERS,
    TOPOLOGIES,
    critical_path,
    expected_max_normal,
    fit_cost_model,
    fit_messages,
    measure_messages,
    predict,
    prediction_errors,
)

ALPHA, BETA, RATE, OVERHEAD, SPREAD = 2e-3, 5e-9, 4e6, 8e-3, 0.1
COUNTS = (1, 2, 4, 8)
N_SAMPLES = 400_000


def _tree_messages(m: int) -> int:
    """Hand count for split_every=2: log2(m) levels each way and the server's hop."""
    return {1: 2, 2: 2 * (1 + 1), 4: 2 * (2 + 1), 8: 2 * (3 + 1)}[m]


def _tree_bytes(m: int, p: float) -> float:
    """Each level carries the fan-in's 2 partial sums, each way; P more to the server."""
    return {1: 2 * p, 2: 2 * (2 + 1) * p, 4: 2 * (4 + 1) * p, 8: 2 * (6 + 1) * p}[m]


def synthetic_runs(partial_bytes: float, counts=COUNTS, n_features: int = 1) -> xr.Dataset:
    """A scaling Dataset whose iteration times follow the model exactly (the oracle)."""
    m = np.array(counts)
    rows = N_SAMPLES / m
    compute = rows * n_features / RATE
    messages = np.array([_tree_messages(k) for k in counts])
    sync = SPREAD * compute * expected_max_normal(m)
    volume = np.array([_tree_bytes(k, partial_bytes) for k in counts])
    seconds = OVERHEAD + compute + ALPHA * messages + BETA * volume + sync
    return xr.Dataset(
        {
            "iteration_seconds": ("workers", seconds),
            "rows_per_worker": ("workers", rows),
            "partial_bytes": ("workers", np.full(m.shape, float(partial_bytes))),
            "compute_seconds": ("workers", compute),
            "compute_spread_seconds": ("workers", sync),
        },
        coords={"workers": m},
        attrs={"n_features": n_features},
    )


def fit(runs, **options):
    """The synthetic runs follow the "tree" topology."""
    return fit_cost_model(runs, topology="tree", **options)


def test_critical_paths_by_hand():
    m = np.array([1, 2, 4, 8])
    messages, volume = critical_path(m, "tree", message_bytes=10.0, split_every=2)
    assert list(messages) == [_tree_messages(k) for k in m]
    assert list(volume) == [_tree_bytes(k, 10.0) for k in m]
    messages, volume = critical_path(m, "flat", message_bytes=10.0)
    assert list(messages) == list(2 * m) and list(volume) == list(20.0 * m)
    messages, volume = critical_path(m, "ring", message_bytes=10.0)
    assert list(messages) == list(2 * (m - 1))
    assert volume == pytest.approx(2 * (m - 1) * 10.0 / m)
    messages, volume = critical_path(m, "mapreduce", message_bytes=10.0, split_every=2)
    assert list(messages) == [2, 3, 4, 5]
    assert list(volume) == [10.0 * (k + 2 * math.log2(k) + 1) for k in m]
    # A tree whose fan-in covers every worker has one level: one latency, 8 P bytes.
    tree, volume = critical_path(8, "tree", message_bytes=1.0, split_every=8)
    assert tree[0] == 2 * (1 + 1) and volume[0] == 2 * (8 + 1)


def test_expected_max_normal():
    values = expected_max_normal([1, 2, 1024])
    assert values[0] == 0.0
    assert values[1] == pytest.approx(1 / math.sqrt(math.pi), rel=0.05)  # exact: 0.564
    assert values[2] == pytest.approx(3.2, rel=0.05)


def test_fit_recovers_known_parameters():
    model = fit([synthetic_runs(64.0, n_features=5), synthetic_runs(40_000.0, n_features=40)])
    assert model.alpha_seconds == pytest.approx(ALPHA, rel=1e-6)
    assert model.beta_seconds_per_byte == pytest.approx(BETA, rel=1e-6)
    assert model.rate_values_per_second == pytest.approx(RATE, rel=1e-9)
    assert model.overhead_seconds == pytest.approx(OVERHEAD, rel=1e-6)
    assert model.spread == pytest.approx(SPREAD, rel=1e-9)
    assert model.beta_identified
    assert model.r2 == pytest.approx(1.0, abs=1e-9)
    assert np.max(np.abs(model.relative_errors)) < 1e-6
    errors = prediction_errors(model, synthetic_runs(64.0))
    assert np.max(np.abs(errors.relative_error.values)) < 1e-6


def test_fit_with_one_message_size_reports_beta_unidentified():
    model = fit(synthetic_runs(64.0))
    assert not model.beta_identified and model.beta_seconds_per_byte == 0.0
    assert any("beta not identified" in note for note in model.notes)
    # The bytes' cost moved into alpha; the fitted times still match.
    # tree bytes = P (2 messages - 2): 2 P beta per message moves into alpha.
    assert model.alpha_seconds == pytest.approx(ALPHA + 2 * 64.0 * BETA, rel=1e-6)
    assert model.r2 == pytest.approx(1.0, abs=1e-9)


def test_fit_with_separately_measured_messages():
    model = fit(synthetic_runs(64.0), messages=(ALPHA, BETA))
    assert model.overhead_seconds == pytest.approx(OVERHEAD, rel=1e-6)
    assert model.alpha_seconds == ALPHA and model.beta_seconds_per_byte == BETA


def test_fit_messages_exact():
    n_bytes = np.repeat([8.0, 8e3, 8e5, 8e6], 3)
    measured = xr.Dataset(
        {"bytes": ("message", n_bytes), "seconds": ("message", ALPHA + BETA * n_bytes)}
    )
    found = fit_messages(measured)
    assert found.alpha_seconds == pytest.approx(ALPHA, rel=1e-9)
    assert found.beta_seconds_per_byte == pytest.approx(BETA, rel=1e-9)
    assert found.r2 == pytest.approx(1.0)
    assert found.alpha_interval == pytest.approx((ALPHA, ALPHA), rel=1e-9)
    with pytest.raises(ValueError, match="2 different sizes"):
        fit_messages(measured.isel(message=[0, 1]))


def test_fit_messages_intervals_cover_the_truth_and_shrink_with_repeats():
    """Noisy times (a scatter of 5% and rare 10x outliers): the medians' line and
    its bootstrap intervals, against the alpha and beta the times were drawn from."""
    rng = np.random.default_rng(3)

    def noisy(repeats: int) -> xr.Dataset:
        n_bytes = np.repeat([8.0, 800.0, 8e4, 8e6, 3.2e7], repeats)
        seconds = (ALPHA + BETA * n_bytes) * rng.lognormal(0, 0.05, n_bytes.size)
        seconds[rng.random(n_bytes.size) < 0.05] *= 10
        return xr.Dataset({"bytes": ("message", n_bytes), "seconds": ("message", seconds)})

    few, many = fit_messages(noisy(5)), fit_messages(noisy(40))
    for found in (few, many):
        assert found.alpha_interval[0] <= ALPHA <= found.alpha_interval[1]
        assert found.beta_interval[0] <= BETA <= found.beta_interval[1]
    width = lambda interval: interval[1] - interval[0]  # noqa: E731
    assert width(many.alpha_interval) < width(few.alpha_interval)
    assert many.alpha_seconds == pytest.approx(ALPHA, rel=0.05)


def test_fit_cost_model_takes_fit_messages_as_it_comes():
    n_bytes = np.repeat([8.0, 8e3, 8e5], 2)
    measured = xr.Dataset(
        {"bytes": ("message", n_bytes), "seconds": ("message", ALPHA + BETA * n_bytes)}
    )
    model = fit(synthetic_runs(64.0), messages=fit_messages(measured))
    assert model.alpha_seconds == pytest.approx(ALPHA, rel=1e-9)
    assert model.overhead_seconds == pytest.approx(OVERHEAD, rel=1e-6)
    with pytest.raises(ValueError, match="messages must be fit_messages"):
        fit(synthetic_runs(64.0), messages=(ALPHA, BETA, 1.0))


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_predictions_finite_and_monotone_to_1024(topology):
    model = fit([synthetic_runs(64.0), synthetic_runs(40_000.0)])
    predicted = predict(
        model, n_samples=N_SAMPLES, n_features=1, message_bytes=808.0, topologies=[topology]
    )
    one = predicted.sel(topology=topology)
    assert list(one.workers.values) == list(DEFAULT_WORKERS)
    for name in ("iteration_seconds", "speedup", "efficiency", "communication_seconds"):
        assert np.all(np.isfinite(one[name].values)), name
    assert np.all(one.iteration_seconds.values > 0)
    assert np.all(np.diff(one.compute_seconds.values) <= 0)
    assert np.all(np.diff(one.communication_seconds.values) >= 0)
    assert np.all(one.speedup.values > 0)
    # each topology over its own single worker: exactly 1 at m = 1, never above m
    assert np.all(one.speedup.values <= one.workers.values + 1e-12)
    assert float(one.speedup.sel(workers=1)) == 1.0


def test_ring_wins_on_bytes_tree_on_latency():
    """Ring all-reduce: 2(m-1) latencies but only 2P bytes; the tree: fewer latencies."""
    model = fit([synthetic_runs(64.0), synthetic_runs(40_000.0)])

    def at_1024(message_bytes):
        predicted = predict(
            model, n_samples=N_SAMPLES, n_features=1, message_bytes=message_bytes, workers=[1024]
        )
        seconds = predicted.iteration_seconds.sel(workers=1024)
        return {t: float(seconds.sel(topology=t)) for t in TOPOLOGIES}

    small, large = at_1024(808.0), at_1024(80_000_000.0)
    assert small["tree"] < small["ring"] < small["flat"]
    assert large["ring"] < large["tree"] < large["flat"]


def test_cores_limit_compute_speedup():
    model = fit(synthetic_runs(64.0))
    shared = type(model)(**{**model.__dict__, "cores": 2})
    assert shared.compute_seconds(100.0, 8)[0] == pytest.approx(
        4 * model.compute_seconds(100, 8)[0]
    )


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: critical_path(2, "star", message_bytes=8), "unknown topology"),
        (lambda: critical_path(0, "tree", message_bytes=8), ">= 1"),
        (lambda: critical_path([], "tree", message_bytes=8), "no worker counts"),
        (lambda: critical_path(2, "tree", message_bytes=8, split_every=1), "split_every"),
        (lambda: fit_cost_model(synthetic_runs(8.0), topology="mesh"), "unknown topology"),
        (lambda: fit_cost_model([]), "no measured runs"),
        (lambda: fit_cost_model(xr.Dataset()), "'workers' dimension"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_predict_rejects_bad_workers_and_topologies():
    model = fit(synthetic_runs(64.0))
    with pytest.raises(ValueError, match=">= 1"):
        predict(model, n_samples=10, n_features=1, message_bytes=8, workers=[0, 1])
    with pytest.raises(ValueError, match="unknown topology"):
        predict(model, n_samples=10, n_features=1, message_bytes=8, topologies=["torus"])
    with pytest.raises(ValueError, match="no topologies"):
        predict(model, n_samples=10, n_features=1, message_bytes=8, topologies=[])


def test_measure_messages_on_a_real_cluster(cluster_client):
    """Times of real fetches between two worker processes, not distributed's transfer
    log (clamped at >= 1 ms): a 4 MB message takes longer than an 8-byte one, and the
    8-byte one is not a round millisecond."""
    measured = measure_messages(cluster_client, sizes=(8, 4_000_000), repeats=3)
    assert measured.sizes["message"] == 6
    assert sorted(set(measured.bytes.values)) == [8.0, 4_000_000.0]
    small = measured.seconds.values[measured.bytes.values == 8]
    large = measured.seconds.values[measured.bytes.values == 4_000_000]
    assert np.median(large) > np.median(small) > 0
    assert not np.any(small == 0.001)
    found = fit_messages(measured)
    assert found.alpha_seconds >= 0 and found.beta_seconds_per_byte > 0
    with pytest.raises(ValueError, match="integers >= 8"):
        measure_messages(cluster_client, sizes=(8, 1))
