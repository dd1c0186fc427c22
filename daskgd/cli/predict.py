"""``daskgd predict MODEL DATA -o OUT``: predictions of a saved model, on this machine.

A linear model's prediction is one matrix product per row: it runs here with numpy on a
memory-mapped .npy (or the features of a netCDF file / zarr store), no cluster needed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np


def add_predict_command(commands: Any) -> None:
    predict = commands.add_parser(
        "predict",
        help="predict with a model saved by `daskgd run --model-out`",
        description="Load a model file (JSON, from daskgd run --model-out or "
        "daskgd.save_model) and write its predictions for DATA to OUT.",
    )
    predict.add_argument("model", type=Path, help="the model file (.json)")
    predict.add_argument(
        "data", type=Path, help="X as .npy, or a netCDF file / zarr store holding the features"
    )
    predict.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="OUT",
        help="where to write the predictions: .npy or .csv (one row per sample)",
    )
    predict.add_argument(
        "--features",
        nargs="+",
        metavar="NAME",
        help="feature arrays/variables in a netCDF file or zarr store (default: the model's "
        "feature names, else X)",
    )
    predict.add_argument(
        "--proba",
        action="store_true",
        help="write class probabilities (one column per class) instead of labels",
    )
    predict.set_defaults(handler=predict_command)


def predict_command(args: argparse.Namespace) -> int:
    from daskgd.estimators.persist import load_model

    output: Path = args.output
    if output.suffix not in (".npy", ".csv"):
        raise ValueError(f"-o {str(output)!r}: write predictions to a .npy or .csv file")
    if not output.resolve().parent.is_dir():
        raise FileNotFoundError(f"output folder {str(output.parent)!r} does not exist")
    model = load_model(args.model)
    X = _features(args.data, args.features or model.feature_names)
    values = model.predict_proba(X) if args.proba else model.predict(X)
    values = np.asarray(values)
    if output.suffix == ".npy":
        np.save(output, values)
    else:
        _write_csv(output, values, model, args.proba)
    print(f"{len(values):,} predictions of {model.estimator} written to {output.resolve()}")
    return 0


def _features(data: Path, names: list[str] | None) -> Any:
    if not data.exists():
        raise FileNotFoundError(f"data path {str(data)!r} does not exist")
    if data.suffix == ".npy":
        return np.load(data, mmap_mode="r")
    if data.suffix in (".nc", ".nc4", ".netcdf"):
        import xarray as xr

        with xr.open_dataset(data, engine="h5netcdf") as dataset:
            missing = [n for n in names or [] if n not in dataset]
            if not names or missing:
                raise ValueError(
                    f"give the feature variables of {str(data)!r} with --features "
                    f"(missing: {missing or 'no names'}; "
                    f"it has {sorted(map(str, dataset.data_vars))})"
                )
            columns = [np.asarray(dataset[n].values, dtype=np.float64) for n in names]
        return np.column_stack(columns)
    import zarr

    group: Any = zarr.open_group(str(data), mode="r")
    name = (names or ["X"])[0] if not names or len(names) == 1 else None
    if name is None or name not in group:
        raise ValueError("a zarr store needs one 2-D features array: pass one --features NAME")
    return np.asarray(group[name][:], dtype=np.float64)


def _write_csv(output: Path, values: np.ndarray, model: Any, proba: bool) -> None:
    if proba:
        header = ",".join(f"p_{c}" for c in model.classes)
    else:
        header = "prediction"
    fmt = "%s" if values.dtype.kind in "OUSb" else "%.17g"
    if values.dtype.kind in "iu":
        fmt = "%d"
    np.savetxt(output, values, delimiter=",", header=header, comments="", fmt=fmt)
