"""``daskgd.lab.compare``, its figures and report, and ``daskgd compare``.

The runs of a comparison must be the fits each strategy makes alone (an undisturbed
solo fit is the oracle: same coefficients and losses to 1e-10); the summary's figures
are checked against numpy on the synthetic traces' arrays; the report opens in
headless Chromium with every plot drawn and no console error, with and without the
optional variables of the newer strategies (staleness, consensus distance,
communicated); the command line refuses bad options in one line, exit status 2,
before a cluster starts.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from cli_helpers import run_main
from synthetic_traces import make_trace, without_workers

import daskgd
from daskgd.data.synthetic import make_classification
from daskgd.lab.compare import compare, prepare_runs
from daskgd.runtime.emulation import Emulation
from daskgd.strategies import register_strategy
from daskgd.strategies.direct import Direct
from daskgd.viz.compare_columns import (
    busiest_node_bytes,
    cumulative_rounds,
    default_target_loss,
    reached_index,
    staleness_values,
    summary_dataset,
)
from daskgd.viz.comparison import comparison_figures, write_comparison_report

CLI = [sys.executable, "-m", "daskgd.cli"]
TOLERANCE = 1e-10
ALWAYS = ("compare-loss-time", "compare-loss-bytes", "compare-busiest")
OPTIONAL = ("compare-staleness", "compare-consensus")


@register_strategy
class LateDirect(Direct):
    """A strategy registered after daskgd's own, as the branches' new ones will be."""

    name = "test-late-direct"


def _with_optional(trace, seed: int = 0):
    """``trace`` with the optional variables: staleness (NaN where not applied),
    consensus distance and communicated every 4th iteration."""
    rng = np.random.default_rng(seed)
    shape = (trace.sizes["iteration"], trace.sizes["worker"])
    staleness = rng.integers(0, 4, shape).astype(np.float64)
    staleness[rng.random(shape) < 0.4] = np.nan
    n = trace.sizes["iteration"]
    return trace.assign(
        staleness=(("iteration", "worker"), staleness),
        consensus_distance=("iteration", np.exp(-np.arange(n) / 6.0)),
        communicated=("iteration", np.arange(n) % 4 == 0),
    )


# ----------------------------------------------------------------------------------
# The summary, against numpy
# ----------------------------------------------------------------------------------


def test_busiest_node_is_the_max_over_workers_of_sent_plus_received():
    trace = make_trace(10)
    sent = trace.bytes_sent.values.copy()
    sent[3, 1] = 1e6  # one worker much busier in one iteration
    trace["bytes_sent"] = (("iteration", "worker"), sent)
    expected = (sent + trace.bytes_received.values).max(axis=1)
    np.testing.assert_array_equal(busiest_node_bytes(trace), expected)
    assert np.isnan(busiest_node_bytes(without_workers(trace))).all()


def test_rounds_count_only_the_updates_that_communicated():
    trace = _with_optional(make_trace(12))
    communicated = trace.communicated.values[1:]
    np.testing.assert_array_equal(cumulative_rounds(trace)[1:], np.cumsum(communicated))
    assert cumulative_rounds(trace)[0] == 0
    np.testing.assert_array_equal(cumulative_rounds(make_trace(12)), np.arange(13))


def test_staleness_values_leave_out_the_gradients_not_applied():
    trace = _with_optional(make_trace(12))
    values = trace.staleness.values
    np.testing.assert_array_equal(
        np.sort(staleness_values(trace)), np.sort(values[~np.isnan(values)])
    )
    assert staleness_values(make_trace(5)).size == 0


def test_default_target_is_reached_by_every_run_and_by_the_slowest_last():
    fast, slow = make_trace(30, seed=1), make_trace(30, seed=2)
    slow["loss"] = slow.loss + 0.05  # never gets as low as fast
    traces = {"fast": fast, "slow": slow}
    target = default_target_loss(traces)
    assert target == pytest.approx(float(slow.loss.min()))
    summary = summary_dataset(traces)
    assert summary.attrs["target_loss"] == target
    for label, trace in traces.items():
        index = reached_index(trace, target)
        assert index is not None
        assert float(summary.seconds_to_target.sel(run=label)) == float(
            trace.elapsed_seconds[index]
        )
        bytes_by_then = float(trace.bytes_total[: index + 1].sum())
        assert float(summary.bytes_to_target.sel(run=label)) == pytest.approx(bytes_by_then)
    assert int(summary.rounds_to_target.sel(run="slow")) == 30  # its best is its last loss
    assert int(summary.rounds_to_target.sel(run="fast")) < 30


def test_a_target_never_reached_is_reported_as_such():
    summary = summary_dataset({"a": make_trace(10)}, target_loss=1e-9)
    assert np.isnan(float(summary.seconds_to_target.sel(run="a")))
    from daskgd.viz.compare_columns import format_comparison

    assert "not reached" in format_comparison(summary)


# ----------------------------------------------------------------------------------
# Figures: with and without the optional variables
# ----------------------------------------------------------------------------------


def _names(figures) -> list[str]:
    return [fig.name.removeprefix("daskgd-").removesuffix("-plot") for fig in figures]


def test_optional_panels_only_when_a_run_records_them():
    plain = {"a": make_trace(10), "b": without_workers(make_trace(10, seed=1))}
    assert _names(comparison_figures(plain, 0.3)) == list(ALWAYS)
    mixed = {**plain, "c": _with_optional(make_trace(10, seed=2))}
    assert _names(comparison_figures(mixed, 0.3)) == [*ALWAYS, *OPTIONAL]


def test_staleness_histogram_holds_the_shares_of_the_applied_gradients():
    trace = _with_optional(make_trace(20))
    figures = dict(zip(_names(comparison_figures({"ps": trace}, 0.3)), comparison_figures(
        {"ps": trace}, 0.3), strict=True))  # fmt: skip
    bars = figures["compare-staleness"].renderers[0].data_source.data
    values = staleness_values(trace)
    expected = np.bincount(values.astype(int)) / values.size
    np.testing.assert_allclose(bars["top"], expected)


# ----------------------------------------------------------------------------------
# The report in a browser
# ----------------------------------------------------------------------------------


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1200, "height": 1300})
    page.errors = []  # type: ignore[attr-defined]
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.goto(url)
    page.wait_for_function("window.Bokeh && Bokeh.documents.length > 0", timeout=20_000)
    page.wait_for_function("Bokeh.documents[0].is_idle", timeout=20_000)
    return page


def _drawn(page, plots) -> None:
    from test_dashboard import _assert_drawn

    _assert_drawn(page, plots)


def test_report_draws_every_panel_with_the_optional_variables(browser, tmp_path):
    traces = {
        "mapreduce": make_trace(30),
        "parameter-server:staleness=2": _with_optional(make_trace(30, seed=1)),
        "no workers": without_workers(make_trace(20, seed=2)),
    }
    path = write_comparison_report(traces, tmp_path / "compare.html")
    page = _open(browser, path.as_uri())
    try:
        _drawn(page, (*ALWAYS, *OPTIONAL))
        content = page.content()
        assert "parameter-server:staleness=2" in content and "target loss" in content
        assert "(log scale)" in content
        assert page.errors == []
    finally:
        page.close()


def test_report_without_the_optional_variables_leaves_their_panels_out(browser, tmp_path):
    path = write_comparison_report(
        {"a": make_trace(20), "b": make_trace(20, seed=3)}, tmp_path / "compare.html"
    )
    page = _open(browser, path.as_uri())
    try:
        _drawn(page, ALWAYS)
        present = page.evaluate(
            "names => names.map(n => Bokeh.documents[0].get_model_by_name(n) !== null)",
            [f"daskgd-{name}-plot" for name in OPTIONAL],
        )
        assert present == [False, False]
        assert page.errors == []
    finally:
        page.close()


# ----------------------------------------------------------------------------------
# compare() on a LocalCluster: each run is the fit the strategy makes alone
# ----------------------------------------------------------------------------------


def _solo(strategy, X, y, client, emulation=None):
    model = daskgd.LogisticRegression(
        solver="gd",
        learning_rate=1.0,
        max_iter=8,
        tol=0.0,
        strategy=strategy,
        emulation=emulation,
        client=client,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", daskgd.ConvergenceWarning)
        return model.fit(X, y)


@pytest.mark.parametrize(
    "emulation", [None, Emulation(stragglers={1: 2.0})], ids=["plain", "straggler"]
)
def test_each_run_is_the_fit_its_strategy_makes_alone(cluster_client, emulation):
    X, y = make_classification(4_000, 6, chunks=1_000, random_state=4)
    entries = ["mapreduce", ("direct", {"backup_workers": 0}), "allreduce"]
    lines = []
    runs = compare(entries, X, y, client=cluster_client, max_iter=8, emulation=emulation,
                   progress=lambda *args: lines.append(args))  # fmt: skip
    assert list(runs) == ["mapreduce", "direct:backup_workers=0", "allreduce"]
    assert [line[:3] for line in lines] == [(i + 1, 3, label) for i, label in enumerate(runs)]
    for (label, trace), strategy in zip(runs.items(), ["mapreduce", "direct", "allreduce"],
                                        strict=True):  # fmt: skip
        solo = _solo(strategy, X, y, cluster_client, emulation)
        fitted = runs.estimators[label]
        np.testing.assert_allclose(fitted.coef_, solo.coef_, rtol=0, atol=TOLERANCE)
        np.testing.assert_allclose(trace.loss.values, solo.trace_.loss.values, atol=TOLERANCE)
        assert trace.attrs["strategy"] == strategy and trace.attrs["compare_label"] == label
        assert trace.attrs["emulation"] == solo.trace_.attrs["emulation"]
        assert trace.sizes["iteration"] == 9 and trace.sizes["worker"] == 2
    summary = runs.summary()
    assert (summary.rounds.values == 8).all()
    assert np.isfinite(summary.busiest_bytes_per_round.values).all()


def test_a_strategy_registered_later_plugs_in_by_name(cluster_client, tmp_path):
    X, y = make_classification(2_000, 4, chunks=500, random_state=5)
    runs = compare(["direct", "test-late-direct"], X, y, client=cluster_client, max_iter=4,
                   progress=False, warmup=False)  # fmt: skip
    np.testing.assert_allclose(runs.estimators["test-late-direct"].coef_,
                               runs.estimators["direct"].coef_, atol=TOLERANCE)  # fmt: skip
    assert runs["test-late-direct"].attrs["strategy"] == "test-late-direct"
    assert runs.write_report(tmp_path / "r.html").stat().st_size > 100_000  # BokehJS inline


@pytest.mark.parametrize(
    ("strategies", "options", "message"),
    [
        ([], {}, "strategies is empty"),
        (["nosuch"], {}, "strategies[0]: unknown strategy 'nosuch'"),
        ([("direct", 1)], {}, "(name, options) pair"),
        ([("direct", {"emulation": None})], {}, "compare() arguments"),
        ([("direct", {"bogus": 1})], {}, "run 'direct:bogus=1'"),
        (["mapreduce", "mapreduce"], {}, "labels must be distinct"),
        (["mapreduce"], {"labels": ["a", "b"]}, "2 labels for 1 strategies"),
        (["mapreduce"], {"model": "svm"}, "model must be one of"),
        ([("direct", {"backup_workers": 1})], {"solver": "lbfgs", "learning_rate": "auto"},
         "run 'direct:backup_workers=1': solver 'lbfgs' needs a line search"),
    ],
)  # fmt: skip
def test_bad_entries_are_refused_before_any_fit(strategies, options, message):
    with pytest.raises((ValueError, TypeError)) as error:
        prepare_runs(strategies, **options)
    assert message in str(error.value)


# ----------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------


def _cli(*arguments, timeout=240):
    return subprocess.run([*CLI, "compare", *map(str, arguments)], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--strategies", "nosuch"], "unknown strategy 'nosuch'"),
        (["--strategies", "direct:backup_workers"], "is not OPTION=VALUE"),
        (["--strategies", "direct:bogus=1"], "run 'direct:bogus=1'"),
        (["--strategies", "direct:backup_workers=1", "--solver", "lbfgs", "--learning-rate",
          "auto"], "needs a line search"),
        (["--strategies", "mapreduce", "--straggler", "3:3x"], "unknown worker index 3"),
        (["--strategies", "mapreduce", "-o", "{missing}/r.html"], "does not exist"),
        (["--strategies", "mapreduce", "direct", "--labels", "one"], "1 labels for 2"),
        (["--strategies", "mapreduce", "--latency", "5"], "needs a unit"),
        (["--strategies", "mapreduce", "--target", "y.npy"], "--data and --target go together"),
    ],
)  # fmt: skip
def test_bad_options_fail_in_one_line_before_a_cluster_starts(
    capsys, no_cluster, tmp_path, arguments, message
):
    arguments = [a.format(missing=tmp_path / "missing") for a in arguments]
    status, out, err = run_main(capsys, "compare", *arguments)
    assert status == 2, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err
    assert "LocalCluster" not in out


def test_cli_writes_one_report_with_every_strategy(tmp_path):
    output = tmp_path / "compare.html"
    result = _cli(
        "--strategies",
        "mapreduce",
        "direct:backup_workers=1",
        "allreduce",
        "--samples",
        6_000,
        "--features",
        5,
        "--chunks",
        4,
        "--max-iter",
        6,
        "--latency",
        "2ms",
        "--no-progress",
        "-o",
        output,
        "--traces-out",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    page = output.read_text()
    for name in ("daskgd-compare-loss-time-plot", "daskgd-compare-staleness-plot",
                 "direct:backup_workers=1"):  # fmt: skip
        assert name in page
    assert "target loss" in result.stdout and "report written to" in result.stdout
    saved = sorted(p.name for p in tmp_path.glob("*.nc"))
    assert saved == ["allreduce.nc", "direct_backup_workers=1.nc", "mapreduce.nc"]
    trace = daskgd.load_trace(tmp_path / "mapreduce.nc")
    assert '"latency_seconds": 0.002' in trace.attrs["emulation"]


# ----------------------------------------------------------------------------------
# The dashboard: staleness and consensus distance when a fit records them
# ----------------------------------------------------------------------------------


def test_dashboard_shows_the_optional_figures_only_with_their_variables():
    from daskgd.viz.plots import TraceDashboard

    dashboard = TraceDashboard()
    dashboard.update(make_trace(12))
    assert not dashboard.figures["staleness"].visible
    assert not dashboard.figures["consensus"].visible
    trace = _with_optional(make_trace(12))
    dashboard.update(trace)
    assert dashboard.figures["staleness"].visible and dashboard.figures["consensus"].visible
    counts = dashboard.sources["staleness"].data["count"]
    values = staleness_values(trace)
    np.testing.assert_array_equal(counts, np.bincount(values.astype(int)))
    np.testing.assert_allclose(
        dashboard.sources["consensus"].data["consensus"], trace.consensus_distance.values
    )
    assert f"max {int(values.max())}" in dashboard.figures["staleness"].title.text


def test_report_draws_staleness_and_consensus_when_recorded(browser, tmp_path):
    from test_dashboard import PLOTS

    from daskgd.viz.report import write_report

    path = write_report(_with_optional(make_trace(30)), tmp_path / "report.html")
    page = _open(browser, path.as_uri())
    try:
        _drawn(page, (*PLOTS, "staleness", "consensus"))
        assert page.errors == []
    finally:
        page.close()


def _resident_record(i: int, staleness: dict) -> object:
    from daskgd.engine.driver import IterationRecord

    measures = {
        worker: {"compute_seconds": 0.01, "communication_seconds": 0.002, "wait_seconds": 0.0,
                 "bytes_sent": 100.0, "bytes_received": 80.0, "bytes_from_client": 80.0,
                 "bytes_to_client": 100.0, "staleness": stale}
        for worker, stale in staleness.items()
    }  # fmt: skip
    return IterationRecord(
        iteration=i, loss=1.0 / (i + 1), grad_norm=0.1, step_size=0.5, wall_seconds=0.01,
        elapsed_seconds=0.01 * (i + 1), n_evaluations=1, evaluation_seconds=0.008,
        attempts=1, key_prefixes=(), start_time=1.7e9 + i, worker_measures=measures,
    )  # fmt: skip


def test_live_trace_carries_what_resident_workers_measured():
    from daskgd.viz.live import LiveTrace

    live = LiveTrace()
    live.on_fit_start({"strategy": "direct"})
    for i in range(5):
        live.on_iteration_end(_resident_record(i, {"tcp://a:1": 0.0, "tcp://b:2": float(i % 2)}))
    snapshot = live.snapshot()
    assert snapshot.sizes["worker"] == 2
    np.testing.assert_array_equal(snapshot.staleness.sel(worker="tcp://b:2"), [0, 1, 0, 1, 0])
    np.testing.assert_array_equal(snapshot.bytes_sent.values, 100.0)


def test_live_dashboard_of_a_fit_with_backup_workers_shows_staleness(cluster_client):
    from daskgd.strategies import get_strategy
    from daskgd.viz.live import LiveTrace
    from daskgd.viz.plots import TraceDashboard

    X, y = make_classification(4_000, 5, chunks=1_000, random_state=6)
    live, seen = LiveTrace(), []

    class Watch(daskgd.engine.callbacks.Callback):
        def on_iteration_end(self, record) -> None:
            seen.append("staleness" in live.snapshot())

    model = daskgd.LogisticRegression(
        solver="gd", learning_rate=1.0, max_iter=6, tol=0.0, client=cluster_client,
        strategy=get_strategy("direct", backup_workers=1),
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", daskgd.ConvergenceWarning)
        model.fit(X, y, callbacks=[live, Watch()])
    assert all(seen) and len(seen) == 7  # from iteration 0 on, during the fit
    dashboard = TraceDashboard()
    dashboard.update(live.snapshot())
    assert dashboard.figures["staleness"].visible
    np.testing.assert_array_equal(live.snapshot().staleness.values, model.trace_.staleness.values)


def test_busiest_share_is_one_over_m_when_every_worker_moves_the_same():
    from daskgd.viz.compare_columns import busiest_share

    even = make_trace(10)  # every worker sends and receives the same
    assert busiest_share(even) == pytest.approx(1 / even.sizes["worker"])
    hub = even.copy(deep=True)
    sent = hub.bytes_sent.values.copy()
    received = hub.bytes_received.values.copy()
    sent[:, 0], received[:, 0] = sent[:, 1:].sum(axis=1), received[:, 1:].sum(axis=1)
    hub["bytes_sent"], hub["bytes_received"] = (
        hub.bytes_sent.copy(data=sent),
        hub.bytes_received.copy(data=received),
    )
    assert busiest_share(hub) == pytest.approx(0.5)  # one worker in every message
    assert np.isnan(busiest_share(without_workers(even)))


def test_runs_after_an_emulated_failure_start_on_every_worker(client):
    from daskgd.runtime.emulation import KillAt

    X, y = make_classification(2_000, 4, chunks=500, random_state=7)
    emulation = Emulation(failures=[KillAt(0, 2)])
    runs = compare(["direct", "allreduce"], X, y, client=client, max_iter=4, progress=False,
                   emulation=emulation, warmup=False)  # fmt: skip
    for label, trace in runs.items():
        assert trace.sizes["worker"] == 2, label  # the second run waited for the restart
        assert trace.sizes["iteration"] == 5
    np.testing.assert_allclose(runs.estimators["direct"].coef_, runs.estimators["allreduce"].coef_,
                               atol=TOLERANCE)  # fmt: skip
