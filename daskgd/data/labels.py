"""Class labels -> class indices 0.0 .. K-1 (one compute of the distinct labels)."""

from __future__ import annotations

import dask.array as da
import numpy as np

from daskgd.data import waits
from daskgd.data.sources import LABEL_KINDS, as_dask, check_dtype, open_array, row_chunks_for

__all__ = ["encode_labels"]


def current_client(client=None):
    """Return ``client``, else the active distributed client, else None."""
    if client is not None:
        return client
    import distributed

    try:
        return distributed.get_client()
    except ValueError:
        return None


def encode_labels(y, *, client=None, timeout=waits.DEFAULT_TIMEOUT_SECONDS):
    """Map class labels to class indices 0.0 .. K-1.

    Parameters
    ----------
    y : numpy.ndarray (n,), dask.array.Array (n,), xarray.DataArray (n,), list or path
        Class labels: bool, integer, float, str, or an object array of str.
    client : distributed.Client, optional
        Where to find the classes; default the active client, else dask's threads.
    timeout : float, default 60
        Seconds the scheduler may go unanswered (:mod:`daskgd.data.waits`).

    Returns
    -------
    classes : numpy.ndarray (K,)
        The sorted distinct labels (one compute of ``da.unique``).
    y_encoded : dask.array.Array (n,) of float64
        Lazy class index of every row, with y's chunks.

    Raises
    ------
    ValueError
        y not 1-D, empty, with NaN or infinite labels, or with a single class.
    TypeError
        Complex, datetime or unsortable (mixed-type object) labels.
    """
    source = open_array(y, "y")
    check_dtype(source, "y", kinds=LABEL_KINDS)
    if source.ndim != 1:
        raise ValueError(f"y must be 1-D (n_samples,), got shape {tuple(source.shape)}")
    if source.shape[0] == 0:
        raise ValueError("y has no rows: at least one sample is needed")
    labels = as_dask(source, row_chunks_for(source, None))
    client = current_client(client)
    try:
        if client is None:
            classes = da.unique(labels).compute()
        else:
            future = client.compute(da.unique(labels))
            classes = waits.result(client, future, what="finding the classes of y", timeout=timeout)
    except TypeError as error:
        raise TypeError(
            f"y labels cannot be sorted ({error}); use labels of a single type"
        ) from error
    if classes.dtype.kind == "f" and not np.isfinite(classes).all():
        raise ValueError("y contains NaN or infinity among its class labels")
    if len(classes) < 2:
        raise ValueError(
            f"y has a single class ({classes.tolist()[0]!r}): classification needs at least two"
        )
    encoded = labels.map_blocks(
        _class_indices, classes, dtype=np.float64, meta=np.empty((0,), np.float64)
    )
    return classes, encoded


def _class_indices(block, classes):
    return np.searchsorted(classes, block).astype(np.float64)
