"""The data of ``daskgd run``: .npy files, a netCDF file, a zarr store, a CSV or Parquet
table or a LIBSVM file, by absolute path."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

#: --format choices: by the file's suffix, or LIBSVM text whatever its name.
FORMATS = ("auto", "libsvm")


def add_data_options(run: argparse.ArgumentParser) -> None:
    """DATA, --target, --features and --format of ``daskgd run``."""
    run.add_argument(
        "data",
        type=Path,
        help="X as .npy, a zarr store / netCDF file / CSV / Parquet table holding features "
        "and target, or a LIBSVM file (.svm, .libsvm, .svmlight: its labels are y)",
    )
    run.add_argument(
        "--target",
        default=None,
        help="y: a .npy path, or the name of the target array/variable/column in DATA "
        "(default: none, and required, except for a LIBSVM file: its labels are the target)",
    )
    run.add_argument(
        "--features",
        nargs="+",
        metavar="NAME",
        help="names of the feature arrays/variables/columns (default: all but the target)",
    )
    run.add_argument(
        "--format",
        default="auto",
        choices=FORMATS,
        help="how DATA is read: auto (by its suffix) or libsvm (LIBSVM / svmlight text, "
        "read as a scipy.sparse CSR matrix and fitted without densifying it)",
    )


def _is_libsvm(args: argparse.Namespace) -> bool:
    from daskgd.data.sources import is_libsvm_path

    return getattr(args, "format", "auto") == "libsvm" or is_libsvm_path(args.data)


def data_paths(args: argparse.Namespace) -> list[Path]:
    """The files the workers read (absolute: the workers' working folder is not ours)."""
    if _is_libsvm(args):  # read on the client: the workers receive its chunks
        return []
    paths = [args.data]
    if args.data.suffix == ".npy":
        paths.append(Path(args.target))
    return paths


def load_run_data(args: argparse.Namespace) -> tuple[Any, Any]:
    # Resolved here: a relative path would be resolved in each worker's working folder.
    if not args.data.exists():
        raise FileNotFoundError(f"data path {str(args.data)!r} does not exist")
    args.data = args.data.expanduser().resolve()
    data: Path = args.data
    from daskgd.data import frames

    if _is_libsvm(args):
        return _from_libsvm(data, args)
    if args.target is None:
        raise ValueError("--target is required (the target's .npy path, array, variable or column)")

    if frames.table_kind(data) is not None:  # CSV or Parquet, through dask.dataframe
        return frames.read_table(data, args.features, args.target)
    if data.suffix == ".npy":
        target = Path(args.target).expanduser().resolve()
        if target.suffix != ".npy":
            raise ValueError(f"with X as .npy, --target must be a .npy path, got {args.target!r}")
        if not target.exists():
            raise FileNotFoundError(f"--target {args.target!r} does not exist")
        args.target = str(target)
        return data, target
    if data.suffix in (".nc", ".nc4", ".netcdf"):
        import xarray as xr

        dataset = xr.open_dataset(data, engine="h5netcdf", chunks={})
        return _from_dataset(dataset, args)
    return _from_zarr(data, args)


def _from_libsvm(path: Path, args: argparse.Namespace) -> tuple[Any, Any]:
    from daskgd.data.sparse import load_libsvm

    if args.target is not None or args.features:
        raise ValueError(
            "--target and --features do not apply to a LIBSVM file: its labels are the target"
        )
    return load_libsvm(path, "DATA")


def _from_dataset(dataset: Any, args: argparse.Namespace) -> tuple[Any, Any]:
    from daskgd.data import as_dask_arrays

    return as_dask_arrays(dataset, target=args.target, features=args.features)


def _from_zarr(path: Path, args: argparse.Namespace) -> tuple[Any, Any]:
    from daskgd.data import as_dask_arrays

    features = args.features[0] if args.features and len(args.features) == 1 else "X"
    if args.features and len(args.features) > 1:
        raise ValueError("a zarr store needs one 2-D features array: pass one --features NAME")
    return as_dask_arrays(str(path), target=args.target, features=features)
