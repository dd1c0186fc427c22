"""Data: sources opened as row-chunked dask arrays, validated, placed over the workers.

sources.py     numpy | dask | xarray | zarr | .npy  ->  dask arrays
frames.py      pandas / dask DataFrames, CSV and Parquet tables -> arrays + column names
placement.py   validation, label encoding, even contiguous placement, persist
synthetic.py   make_classification / make_regression generated on the workers
"""

from daskgd.data.frames import read_table
from daskgd.data.placement import (
    DistributedData,
    as_dask_arrays,
    current_client,
    distribute,
    encode_labels,
)
from daskgd.data.synthetic import make_classification, make_regression

__all__ = [
    "DistributedData",
    "as_dask_arrays",
    "current_client",
    "distribute",
    "encode_labels",
    "make_classification",
    "make_regression",
    "read_table",
]
