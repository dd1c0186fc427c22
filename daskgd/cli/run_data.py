"""The data of ``daskgd run``: .npy files, a netCDF file or a zarr store, by absolute path."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def data_paths(args: argparse.Namespace) -> list[Path]:
    """The files the workers read (absolute: the workers' working folder is not ours)."""
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


def _from_dataset(dataset: Any, args: argparse.Namespace) -> tuple[Any, Any]:
    from daskgd.data import as_dask_arrays

    return as_dask_arrays(dataset, target=args.target, features=args.features)


def _from_zarr(path: Path, args: argparse.Namespace) -> tuple[Any, Any]:
    from daskgd.data import as_dask_arrays

    features = args.features[0] if args.features and len(args.features) == 1 else "X"
    if args.features and len(args.features) > 1:
        raise ValueError("a zarr store needs one 2-D features array: pass one --features NAME")
    return as_dask_arrays(str(path), target=args.target, features=features)
