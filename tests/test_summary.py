"""The compute / communication / wait split and the plain-text summary of a trace."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from synthetic_traces import WORKERS, make_trace, straggler_flags, without_workers

from daskgd.observe.summary import PARTS, format_summary, split, worker_rows


def test_shares_add_up_to_one_per_iteration_and_for_the_run():
    parts = split(make_trace())
    np.testing.assert_allclose(parts["share"].sum("part"), 1.0)
    np.testing.assert_allclose(float(parts["run_share"].sum()), 1.0)
    assert list(parts["part"].values) == list(PARTS)
    assert (parts["seconds"] >= 0).all()


def test_parts_add_up_to_the_wall_time():
    trace = make_trace()
    parts = split(trace)
    np.testing.assert_allclose(parts["seconds"].sum("part"), trace["wall_seconds"])
    np.testing.assert_allclose(
        float(parts["run_seconds"].sum()), float(trace["wall_seconds"].sum())
    )
    assert parts.attrs["measured_iterations"] == trace.sizes["iteration"]


def test_compute_and_communication_are_means_over_workers():
    trace = make_trace()
    parts = split(trace)
    np.testing.assert_allclose(
        parts["seconds"].sel(part="compute"), trace["compute_seconds"].mean("worker")
    )
    np.testing.assert_allclose(
        parts["seconds"].sel(part="communication"),
        trace["communication_seconds"].mean("worker"),
    )


def test_a_straggler_shows_as_sync():
    steady = split(make_trace(straggler=None))
    slowed = split(make_trace(straggler=2))
    assert float(slowed["run_share"].sel(part="sync")) > 2 * float(
        steady["run_share"].sel(part="sync")
    )
    # the client's overhead per iteration (8-9 ms in make_trace) does not depend on it
    overhead = [float(p["seconds"].sel(part="overhead").mean()) for p in (steady, slowed)]
    assert overhead[0] == pytest.approx(overhead[1], rel=0.2)


def test_sync_is_the_mean_over_workers_of_sync_seconds_and_overhead_the_rest():
    trace = make_trace()
    parts = split(trace)
    np.testing.assert_allclose(
        parts["seconds"].sel(part="sync"), trace["sync_seconds"].mean("worker")
    )
    rest = trace["wall_seconds"] - trace[
        ["compute_seconds", "communication_seconds", "sync_seconds"]
    ].to_array().sum("variable").mean("worker")
    np.testing.assert_allclose(parts["seconds"].sel(part="overhead"), rest)


def test_sync_is_derived_for_a_trace_without_it():
    trace = make_trace()
    older = trace.drop_vars(["sync_seconds", "overhead_seconds"])
    np.testing.assert_allclose(split(older)["seconds"], split(trace)["seconds"])


def test_one_worker_has_no_sync():
    trace = make_trace(workers=WORKERS[:1], straggler=None)
    parts = split(trace)
    np.testing.assert_allclose(parts["seconds"].sel(part="sync"), 0.0)
    assert float(parts["run_share"].sel(part="overhead")) > 0.1


def test_the_straggler_is_counted():
    trace = make_trace(n_iterations=40, straggler=2, straggler_every=4)
    parts = split(trace)
    expected = straggler_flags(trace["compute_seconds"].values).sum(axis=0)
    assert list(parts["straggler_count"].values) == list(expected)
    assert parts["straggler_count"].values[2] == 11  # iterations 0, 4, ..., 40
    assert list(parts["straggler_count"].values[:2]) == [0, 0]
    assert list(parts["slowest_count"].values) == [0, 0, 41]


def test_busy_time_longer_than_the_iteration_is_scaled_to_fit():
    trace = make_trace(n_iterations=3)
    trace["compute_seconds"] = trace["compute_seconds"] * 10
    parts = split(trace)
    np.testing.assert_allclose(parts["share"].sum("part"), 1.0)
    np.testing.assert_allclose(parts["seconds"].sel(part="overhead"), 0.0, atol=1e-12)
    np.testing.assert_allclose(parts["seconds"].sum("part"), trace["wall_seconds"])


def test_iterations_without_measurements_are_left_out_of_the_run_split():
    trace = make_trace(n_iterations=9)
    trace["compute_seconds"][5:, :] = np.nan
    parts = split(trace)
    assert parts.attrs["measured_iterations"] == 5
    assert parts["seconds"].isel(iteration=slice(5, None)).isnull().all()
    np.testing.assert_allclose(float(parts["run_share"].sum()), 1.0)
    np.testing.assert_allclose(
        float(parts["run_seconds"].sum()), float(trace["wall_seconds"][:5].sum())
    )


def test_one_unmeasured_worker_does_not_hide_the_others():
    trace = make_trace(n_iterations=4)
    trace["compute_seconds"][:, 0] = np.nan
    trace["communication_seconds"][:, 0] = np.nan
    trace["sync_seconds"][:, 0] = np.nan
    parts = split(trace)
    np.testing.assert_allclose(
        parts["seconds"].sel(part="compute"),
        trace["compute_seconds"].isel(worker=slice(1, None)).mean("worker"),
    )


def test_bytes_per_iteration_and_cumulative():
    trace = make_trace(n_iterations=5)
    parts = split(trace)
    np.testing.assert_allclose(parts["bytes_total"], trace["bytes_total"])
    np.testing.assert_allclose(parts["bytes_cumulative"], np.cumsum(trace["bytes_total"]))


def test_format_summary_is_a_fixed_width_table_with_every_worker():
    trace = make_trace()
    text = format_summary(trace)
    for address in WORKERS:
        assert address in text
    for part in PARTS:
        assert part in text
    assert "40 iterations" in text
    table = text.split("\n\n")[-1].splitlines()
    header, rows = table[0], table[1:]
    assert len(rows) == len(WORKERS)
    # right-aligned numeric columns end where their headings end
    for heading in ("chunks", "rows", "straggler", "slowest"):
        end = header.index(heading) + len(heading)
        for row in rows:
            assert row[end - 1] != " " and (len(row) == end or row[end] == " ")
    straggler_row = next(row for row in rows if row.startswith(WORKERS[2]))
    assert straggler_row.split()[-2:] == ["11", "41"]
    assert "3,000" in straggler_row  # rows held, from chunk_rows/chunk_workers


def test_worker_rows_read_chunks_and_rows_from_the_attrs():
    rows = {row["address"]: row for row in worker_rows(make_trace())}
    assert rows[WORKERS[0]]["chunks"] == 2 and rows[WORKERS[0]]["rows"] == 2000
    assert rows[WORKERS[2]]["chunks"] == 3 and rows[WORKERS[2]]["rows"] == 3000


def test_a_trace_without_workers_gives_wall_time_only():
    trace = without_workers(make_trace())
    parts = split(trace)
    assert parts.attrs["measured_iterations"] == 0
    assert parts["share"].isnull().all()
    assert "bytes_total" not in parts
    np.testing.assert_allclose(parts.attrs["run_wall_seconds"], float(trace.wall_seconds.sum()))
    text = format_summary(trace)
    assert "no per-worker measurements" in text
    assert "bytes: not recorded" in text
    assert WORKERS[0] in text  # still listed, from chunk_workers


@pytest.mark.parametrize(
    "trace",
    [
        pytest.param(make_trace().isel(iteration=slice(0, 0)), id="no-iterations"),
        pytest.param(xr.Dataset(coords={"iteration": np.arange(3)}), id="no-variables"),
        pytest.param(without_workers(make_trace(3)).assign_attrs(chunk_workers="oops"), id="bad"),
    ],
)
def test_summary_survives_sparse_traces(trace):
    parts = split(trace)
    assert parts.attrs["measured_iterations"] == 0
    assert isinstance(format_summary(trace), str)


def test_summary_of_a_saved_and_loaded_trace(tmp_path):
    from daskgd.observe.trace import load_trace, save_trace

    trace = make_trace(n_iterations=6)
    loaded = load_trace(save_trace(trace, tmp_path / "trace.nc"))
    assert format_summary(loaded) == format_summary(trace)
