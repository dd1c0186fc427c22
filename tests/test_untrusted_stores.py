"""A zarr store is a file from somewhere: its object arrays are refused before any read.

An object array's chunks are decoded by the codec its metadata names; with zarr 2 a
``pickle`` codec unpickles them, which runs code from the file. The stores here are
written by hand in zarr format 2 (zarr 3 cannot write one), with a pickle that creates
a marker file when it is loaded.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import daskgd


class _Payload:
    """Unpickles by creating a file: proof that code from the store ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _write_array(folder: Path, data: np.ndarray, dtype: str, filters, chunk: bytes) -> dict:
    folder.mkdir(parents=True)
    metadata = {
        "zarr_format": 2, "shape": list(data.shape), "chunks": list(data.shape),
        "dtype": dtype, "compressor": None, "fill_value": None if dtype == "|O" else 0.0,
        "filters": filters, "order": "C",
    }  # fmt: skip
    (folder / ".zarray").write_text(json.dumps(metadata))
    (folder / ".".join(["0"] * data.ndim)).write_bytes(chunk)
    return metadata


def _store_with_a_pickle(tmp_path: Path, name: str, consolidated: bool) -> tuple[Path, Path]:
    """A zarr 2 group with arrays X (4, 2) and y (4,); ``name`` is a pickle of objects.

    ``consolidated``: the object dtype is declared in the consolidated ``.zmetadata``
    only (zarr opens that when it is present), the array's own ``.zarray`` is a decoy.
    """
    store, marker = tmp_path / "data.zarr", tmp_path / "code-ran"
    store.mkdir()
    (store / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    arrays = {"X": np.random.default_rng(0).standard_normal((4, 2)), "y": np.array([0.0, 1, 0, 1])}
    objects = np.empty(arrays[name].shape, dtype=object)
    objects.flat[0] = _Payload(marker)
    entries = {".zgroup": {"zarr_format": 2}}
    for key, values in arrays.items():
        if key == name:
            pickled = {"dtype": "|O", "filters": [{"id": "pickle", "protocol": 5}]}
            chunk = pickle.dumps(objects, protocol=5)
            if consolidated:
                honest = _write_array(store / key, values, "<f8", None, chunk)
                entries[f"{key}/.zarray"] = {**honest, **pickled}
                continue
            entries[f"{key}/.zarray"] = _write_array(store / key, values, **pickled, chunk=chunk)
        else:
            metadata = _write_array(store / key, values, "<f8", None, values.tobytes())
            entries[f"{key}/.zarray"] = metadata
    if consolidated:
        (store / ".zmetadata").write_text(
            json.dumps({"zarr_consolidated_format": 1, "metadata": entries})
        )
    return store, marker


@pytest.mark.parametrize("consolidated", [False, True], ids=["zarray", "zmetadata"])
@pytest.mark.parametrize("name", ["X", "y"])
def test_object_arrays_of_a_store_are_refused_before_any_read(
    tmp_path, local_scheduler, name, consolidated
):
    store, marker = _store_with_a_pickle(tmp_path, name, consolidated)
    try:
        daskgd.LogisticRegression(max_iter=2).fit(str(store), None)
    except Exception as raised:  # noqa: BLE001 - checked below, after the marker
        error = raised
    else:
        error = None
    assert not marker.exists(), "code from the store ran"
    assert isinstance(error, TypeError), error
    assert f"holds the object-dtype array '{name}'" in str(error)
    assert "pickle" in str(error) and str(store) in str(error)


def test_the_cli_refuses_it_in_one_line(tmp_path):
    store, marker = _store_with_a_pickle(tmp_path, "y", consolidated=False)
    result = subprocess.run(
        [sys.executable, "-m", "daskgd.cli", "run", str(store), "--target", "y",
         "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("daskgd: error:")]
    assert len(lines) == 1 and "object-dtype array 'y'" in lines[0], result.stderr
    assert not marker.exists()


def test_numeric_stores_still_open(tmp_path, local_scheduler):
    zarr = pytest.importorskip("zarr")
    X = np.random.default_rng(1).standard_normal((40, 2))
    y = (X[:, 0] > 0).astype(np.int64)
    zarr.save_group(str(tmp_path / "ok.zarr"), X=X, y=y)
    model = daskgd.LogisticRegression(max_iter=5).fit(str(tmp_path / "ok.zarr"), None)
    assert model.coef_.shape == (1, 2)
