"""Speedup lab: ``daskgd.lab.scaling`` on real LocalClusters of 1 and 2 worker processes."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from daskgd.cli.app import main
from daskgd.lab.costmodel import fit_cost_model, predict, prediction_errors, prediction_figure
from daskgd.lab.scaling import format_scaling, scaling, write_scaling_report

DOCUMENTED = (
    "iteration_seconds",
    "total_seconds",
    "speedup",
    "efficiency",
    "seconds",
    "share",
    "n_iterations",
    "final_loss",
    "rows_per_worker",
    "partial_bytes",
    "split_every",
    "bytes_per_iteration",
    "compute_seconds",
    "compute_spread_seconds",
    "communication_seconds",
)


@pytest.fixture(scope="module")
def measured() -> xr.Dataset:
    return scaling((2, 1), n_samples=4_000, n_features=5, max_iter=4)


def test_scaling_has_documented_variables(measured):
    assert list(measured["workers"].values) == [1, 2]
    assert list(measured["part"].values) == ["compute", "communication", "sync", "overhead"]
    # one worker waits for no slower peer
    assert float(measured.seconds.sel(workers=1, part="sync")) == pytest.approx(0.0, abs=1e-9)
    for name in DOCUMENTED:
        assert name in measured, name
        assert measured[name].dims[0] == "workers"
    assert float(measured.speedup.sel(workers=1)) == pytest.approx(1.0)
    assert float(measured.efficiency.sel(workers=2)) == pytest.approx(
        float(measured.speedup.sel(workers=2)) / 2
    )
    # The same data from the same seed: the same fit whatever m.
    losses = measured.final_loss.values
    assert losses[0] == pytest.approx(losses[1], rel=1e-9)
    assert list(measured.rows_per_worker.values) == [4_000, 2_000]
    # the fan-in each fit used, as its strategy recorded it: 2 chunks summed in one flat step
    assert list(measured.split_every.values) == [2, 2]
    assert (measured.iteration_seconds > 0).all()
    shares = measured.share.sum("part").values
    assert shares == pytest.approx([1.0, 1.0])


def test_scaling_report_and_table(measured, tmp_path):
    page = write_scaling_report(measured, tmp_path / "scaling.html").read_text()
    assert "daskgd-speedup" in page and "daskgd-split" in page
    # the problem is in the title: n x d, chunk rows, model and solver
    title = page.split("<title>", 1)[1].split("</title>", 1)[0]
    assert "n=4,000 x d=5" in title and "rows" in title and "gd" in title, title
    assert "https://cdn.bokeh.org" not in page  # resources inlined
    assert "speedup" in format_scaling(measured)


@pytest.mark.parametrize(
    ("counts", "error", "match"),
    [
        ((), ValueError, "empty"),
        ((0, 1), ValueError, ">= 1"),
        ((1, -2), ValueError, ">= 1"),
        ((1, 1), ValueError, "distinct"),
        ((1, 2.5), ValueError, "integers"),
        (2, TypeError, "sequence"),
    ],
)
def test_bad_worker_counts(counts, error, match):
    with pytest.raises(error, match=match):
        scaling(counts, n_samples=100, n_features=2)


def test_bad_problem():
    with pytest.raises(ValueError, match="n_samples"):
        scaling((1,), n_samples=0, n_features=2)
    with pytest.raises(ValueError, match="solver"):
        scaling((1,), n_samples=10, n_features=2, solver="newton")


def test_cli_rejects_zero_workers(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["scaling", "--workers", "0"])
    assert exit_info.value.code == 2
    assert "positive integer" in capsys.readouterr().err


def test_report_with_model_predictions(measured, tmp_path):
    model = fit_cost_model(measured, topology="tree")
    predicted = predict(model, n_samples=4_000, n_features=5, workers=[1, 2, 4])
    page = write_scaling_report(measured, tmp_path / "s.html", predicted).read_text()
    assert "model tree" in page and "model mapreduce" in page
    errors = prediction_errors(model, measured)
    assert np.all(np.isfinite(errors.relative_error.values))
    assert prediction_figure(errors).name == "daskgd-costmodel"


def test_cli_scaling_writes_dataset_and_report(tmp_path, capsys):
    out = tmp_path / "scaling.nc"
    argv = ["scaling", "--workers", "1", "--samples", "2000", "--features", "3"]
    assert main([*argv, "--max-iter", "2", "--out", str(out)]) == 0
    with xr.open_dataset(out, engine="h5netcdf") as saved:
        assert list(saved.workers.values) == [1] and "speedup" in saved
    assert out.with_suffix(".html").exists()
    assert "T(m) ms" in capsys.readouterr().out


def test_scaling_on_the_workers_of_an_existing_cluster(cluster_client):
    result, traces = scaling(
        (1, 2),
        n_samples=2_000,
        n_features=4,
        max_iter=3,
        client=cluster_client,
        return_traces=True,
    )
    assert list(result["workers"].values) == [1, 2]
    assert list(result["rows_per_worker"].values) == [2_000, 1_000]
    first = sorted(cluster_client.ncores())[0]
    assert traces[0].attrs["n_workers"] == 1 and first in traces[0].attrs["chunk_workers"]
    assert traces[1].attrs["n_workers"] == 2
    assert len(cluster_client.ncores()) == 2  # the cluster is left as it was


def test_scaling_rejects_more_workers_than_the_cluster_has(cluster_client):
    with pytest.raises(ValueError, match="exceeds the 2 workers"):
        scaling((1, 3), n_samples=100, n_features=2, client=cluster_client)
    with pytest.raises(ValueError, match="workers"):
        scaling(
            (1,),
            n_samples=100,
            n_features=2,
            client=cluster_client,
            estimator_options={"workers": ["x"]},
        )


def test_cli_scaling_on_a_running_scheduler(cluster_client, tmp_path, capsys):
    out = tmp_path / "scaling.nc"
    address = cluster_client.scheduler.address
    argv = ["scaling", "--workers", "1", "2", "--scheduler", address, "--samples", "2000"]
    assert main([*argv, "--features", "3", "--max-iter", "2", "--out", str(out)]) == 0
    with xr.open_dataset(out, engine="h5netcdf") as saved:
        assert list(saved.workers.values) == [1, 2]
    capsys.readouterr()
    assert main([*argv[:4], "3", *argv[4:], "--out", str(out)]) == 2
    assert "exceeds the 2 workers" in capsys.readouterr().err
    assert len(cluster_client.ncores()) == 2
