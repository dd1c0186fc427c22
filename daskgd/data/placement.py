"""Data sources, validation and even placement of row chunks on Dask workers.

The flow is ``as_dask_arrays`` (any source -> row-chunked dask arrays, validated),
optionally ``encode_labels`` (class labels -> 0.0 .. K-1), then ``distribute``
(placement of contiguous chunk ranges on the workers, persistence, finiteness check).
"""

from __future__ import annotations

import uuid
import warnings
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import distributed
import numpy as np

from daskgd.data import restrictions, reuse, waits
from daskgd.data.labels import current_client, encode_labels
from daskgd.data.sources import (
    LABEL_KINDS,
    NUMERIC_KINDS,
    as_dask,
    check_dtype,
    open_array,
    open_sources,
    row_chunks_for,
)
from daskgd.data.sparse import is_sparse, own_csr
from daskgd.data.statistics import (
    BAD_X,
    BAD_Y,
    EXACT_FEATURES,
    MAX_ROW_SQUARED_NORM,
    OVERFLOW_X,
    OVERFLOW_Y,
    SQUARED_NORM,
    GramSketch,
    summarize,
)

__all__ = ["DistributedData", "as_dask_arrays", "current_client", "distribute", "encode_labels"]


# --------------------------------------------------------------------------- sources


def as_dask_arrays(X, y=None, *, target=None, features=None, chunks=None, labels=False):
    """Convert a data source into validated, row-chunked dask arrays.

    Parameters
    ----------
    X : numpy.ndarray (n, d), dask.array.Array (n, d), xarray.DataArray (n, d), \
xarray.Dataset, str or os.PathLike
        The features. A path names a ``.npy`` file (memory-mapped, read chunk by chunk
        on the workers) or a zarr store (an array, or a group holding the arrays named
        by ``features`` and ``target``, by default ``"X"`` and ``"y"``).
    y : numpy.ndarray (n,), dask.array.Array (n,), xarray.DataArray (n,), str, \
os.PathLike or None
        The target. ``None`` takes it from the Dataset or zarr group when there is one.
    target : str, optional
        Name of the y variable in a Dataset or of the y array in a zarr group.
    features : str or list of str, optional
        Variables (Dataset) or arrays (zarr group) stacked as columns of X. Default:
        every Dataset variable other than ``target`` along the sample dimension; the
        zarr array ``"X"``.
    chunks : int, optional
        Rows per chunk. Default: keep a dask source's row chunks, else dask's
        ``"auto"`` size (the ``array.chunk-size`` setting).
    labels : bool, default False
        Keep y's label dtype (bool, int, float, str or object) for `encode_labels`
        instead of converting it to float64.

    Returns
    -------
    X : dask.array.Array (n, d)
        float32 if the source is float32, else float64; one block across columns.
    y : dask.array.Array (n,) or None
        float64 (or the label dtype when ``labels``), with X's row chunks.

    Raises
    ------
    ValueError
        Wrong shapes, no rows or columns, mismatched rows, unknown names, bad chunks.
    TypeError
        Non-numeric data (object, str, complex, datetime).
    FileNotFoundError
        A path that does not exist.
    """
    rows_per_chunk = None if chunks is None else _check_positive_int(chunks, "chunks")
    X, y = open_sources(X, y, target, features)
    check_dtype(X, "X")
    _check_features_shape(X)
    X_row_chunks = row_chunks_for(X, rows_per_chunk)
    # float32 halves memory and bandwidth: a user who chose it keeps it.
    X_dtype = np.float32 if X.dtype == np.float32 else np.float64
    X = as_dask(X, X_row_chunks).astype(X_dtype).rechunk({0: X_row_chunks, 1: -1})
    if y is None:
        return X, None
    check_dtype(y, "y", kinds=LABEL_KINDS if labels else NUMERIC_KINDS)
    _check_y_shape(y, X.shape[0])
    y = as_dask(y, X_row_chunks).rechunk({0: X_row_chunks})
    return X, y if labels else y.astype(np.float64)


# ------------------------------------------------------------------------ validation


def _check_features_shape(X):
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {tuple(X.shape)}")
    if any(np.isnan(size) for size in X.shape):
        raise ValueError("X has unknown chunk sizes; call X.compute_chunk_sizes() first")
    if X.shape[0] == 0:
        raise ValueError(f"X has no rows (shape {tuple(X.shape)}): at least one sample is needed")
    if X.shape[1] == 0:
        raise ValueError(
            f"X has no columns (shape {tuple(X.shape)}): at least one feature is needed"
        )


def _check_y_shape(y, n_samples):
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (n_samples,), got shape {tuple(y.shape)}")
    if np.isnan(y.shape[0]):
        raise ValueError("y has unknown chunk sizes; call y.compute_chunk_sizes() first")
    if y.shape[0] != n_samples:
        raise ValueError(f"y has {y.shape[0]} rows but X has {n_samples}")


def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


# ------------------------------------------------------------------- distribution


@dataclass(eq=False)
class DistributedData:
    """Row chunks of X and y, validated, persisted and placed on the workers.

    Attributes
    ----------
    X : dask.array.Array (n_samples, n_features)
        Persisted features, float32 or float64, one block across columns.
    y : dask.array.Array (n_samples, 1) or (n_samples, 2)
        Persisted float64 target with X's row chunks; chunk i lives where X's does; a
        second column holds the sample weights.
    n_samples, n_features : int
    chunk_rows : tuple of int (n_chunks,)
        Rows of each chunk.
    placement : tuple of str (n_chunks,) or None
        Address of the worker holding each chunk; None without a distributed client.
    client : distributed.Client or None
    squared_norm : float
        Squared Frobenius norm of X (sum of all squared entries, in float64).
    max_row_squared_norm : float
        Largest squared Euclidean norm of a row of X (step sizes of stochastic methods).
    futures : tuple of distributed.Future
        The futures holding the chunks; referencing them keeps the data in memory.
    timeout : float
        Seconds a request to the cluster may go unanswered during a fit on this data
        (:mod:`daskgd.data.waits`).
    gram_sketch : daskgd.data.statistics.GramSketch
        The curvature of X, from every row (step sizes of gd, nesterov and sgd).
    chunk_nnz : tuple of int (n_chunks,) or None
        Stored entries of each chunk when X is sparse (CSR chunks), else None.
    """

    def top_gram_eigenvalue(self, fit_intercept: bool) -> float:
        """Largest eigenvalue of ``[X, 1]^T [X, 1] / n`` (``X^T X / n`` without intercept)."""
        if self.gram_sketch is None:
            raise ValueError("this placement has no Gram sketch: place the data with distribute()")
        return self.gram_sketch.top_eigenvalue(fit_intercept)

    X: da.Array
    y: da.Array
    n_samples: int
    n_features: int
    chunk_rows: tuple[int, ...]
    placement: tuple[str, ...] | None
    client: distributed.Client | None
    squared_norm: float
    max_row_squared_norm: float
    futures: tuple[Any, ...] = field(default=(), repr=False)
    timeout: float = waits.DEFAULT_TIMEOUT_SECONDS
    gram_sketch: GramSketch | None = field(default=None, repr=False)
    chunk_nnz: tuple[int, ...] | None = None

    @property
    def sparse(self) -> bool:
        """Whether the chunks of X are scipy.sparse CSR matrices."""
        return self.chunk_nnz is not None

    @property
    def n_chunks(self) -> int:
        return len(self.chunk_rows)

    @property
    def chunks_per_worker(self) -> int:
        """Most chunks held by one worker: the ``split_every`` of a per-worker reduction."""
        if self.placement is None:
            return self.n_chunks
        return max(Counter(self.placement).values())


def distribute(
    X,
    y,
    client=None,
    *,
    chunks_per_worker=None,
    workers=None,
    sample_weight=None,
    timeout=waits.DEFAULT_TIMEOUT_SECONDS,
    wait_for_workers=0.0,
):
    """Validate, place and persist X and y on the workers.

    Contiguous ranges of chunks go to each worker (chunks 0..k-1 on the first worker,
    and so on), no worker holding more than one chunk more than another, X's and y's
    chunk i on the same worker. The chunks keep their lineage: a chunk lost with its
    worker is recomputed from the source.

    Parameters
    ----------
    X : any source accepted by `as_dask_arrays`, shape (n, d)
    y : any source accepted by `as_dask_arrays`, shape (n,)
        Numeric target (class labels go through `encode_labels` first).
    client : distributed.Client, optional
        Default: the active client; without one, dask's default local scheduler
        (threads) persists the data and ``placement`` is None.
    chunks_per_worker : int, optional
        Re-chunk the rows into ``chunks_per_worker * n_workers`` nearly equal chunks
        (n_workers is 1 without a client). Default: keep X's chunks, unless there are
        fewer chunks than workers; then split the rows into one chunk per worker.
    workers : sequence of str, optional
        Addresses of the workers to place the chunks on (default: every running worker
        of the cluster); n_workers above is then their number. Needs a distributed client.
    sample_weight : numpy or dask array (n,), optional
        Row weights, placed with y as its second column (y is then (n, 2)), which the
        chunk functions read as weights.
    timeout : float, default 60
        Seconds a request to the scheduler may go unanswered, here and during fits on
        the result (:mod:`daskgd.data.waits`).
    wait_for_workers : float, default 0
        Seconds to wait for a first worker when the cluster has none.

    Returns
    -------
    DistributedData

    Raises
    ------
    ValueError
        Bad inputs (see `as_dask_arrays`), NaN / infinity in X or y, values whose
        squares overflow float64, or ``workers`` empty, given without a client, or
        naming addresses the scheduler does not know.
    daskgd.data.waits.NoWorkersError
        The cluster has no running workers (after ``wait_for_workers`` seconds).
    daskgd.data.waits.ClusterTimeoutError
        The scheduler did not answer within ``timeout`` seconds.
    """
    timeout = waits.check_seconds("timeout", timeout)
    wait_for_workers = waits.check_seconds("wait_for_workers", wait_for_workers, allow_zero=True)
    source = X  # the caller's object: a placed copy of it is cached while it lives
    X, y = as_dask_arrays(X, y)
    if y is None:
        raise ValueError("y is required: pass it, or target= with a Dataset or zarr group")
    if sample_weight is not None:
        y = _with_weights(y, sample_weight)
    client = current_client(client)
    if workers is not None and client is None:
        raise ValueError("workers needs a distributed client (a cluster to place the data on)")
    threads = None
    if client is not None:
        threads = _worker_threads(client, workers, timeout, wait_for_workers)
    n_workers = len(threads) if threads else 1
    if chunks_per_worker is not None:
        per_worker = _check_positive_int(chunks_per_worker, "chunks_per_worker")
        X, y = _split_evenly(X, y, per_worker * n_workers)
    elif X.numblocks[0] < n_workers:
        # Fewer chunks than workers would leave workers idle: give each one a chunk.
        X, y = _split_evenly(X, y, n_workers)
    if threads is None:
        X_data, y_data = dask.persist(*_owned_blocks(X, y, None))
        placement, futures = None, ()
        values = _check_values(X_data, y_data, client, futures, timeout)
    else:
        X_data, y_data, placement, futures, values = _place_once(
            client, source, X, y, threads, timeout
        )
    squared_norm, max_row_squared_norm, sketch, nnz = values
    return DistributedData(
        X=X_data,
        y=y_data,
        n_samples=X.shape[0],
        n_features=X.shape[1],
        chunk_rows=tuple(X.chunks[0]),
        placement=placement,
        client=client,
        squared_norm=squared_norm,
        max_row_squared_norm=max_row_squared_norm,
        futures=futures,
        timeout=timeout,
        gram_sketch=sketch,
        chunk_nnz=nnz,
    )


def _with_weights(y, sample_weight):
    """y and the weights as the two columns of one (n, 2) array, with y's chunks."""
    weights = open_array(sample_weight, "sample_weight")
    check_dtype(weights, "sample_weight")
    if weights.ndim != 1 or weights.shape[0] != y.shape[0]:
        raise ValueError(
            f"sample_weight must have shape ({y.shape[0]},) like y, got {tuple(weights.shape)}"
        )
    weights = as_dask(weights, y.chunks[0]).astype(np.float64).rechunk({0: y.chunks[0]})
    return da.stack([y, weights], axis=1).rechunk({1: -1})


def _worker_threads(client, workers, timeout, wait_for_workers):
    """Return {address: nthreads} of the running workers sorted by address, or raise.

    With ``workers``, only those workers (validated: a non-empty sequence of addresses
    of running workers).
    """
    threads = waits.running_workers(
        client, what="placing the data", timeout=timeout, wait_for_workers=wait_for_workers
    )
    if workers is not None:
        if isinstance(workers, (str, bytes)) or not hasattr(workers, "__iter__"):
            raise ValueError(f"workers must be a sequence of worker addresses, got {workers!r}")
        workers = list(dict.fromkeys(workers))
        if not workers:
            raise ValueError("workers is empty: give at least one worker address")
        unknown = [address for address in workers if address not in threads]
        if unknown:
            raise ValueError(
                f"workers not known to the scheduler as running: {unknown}; "
                f"running: {sorted(threads)}"
            )
        threads = {address: threads[address] for address in workers}
    return dict(sorted(threads.items()))


def _split_evenly(X, y, n_blocks):
    n_blocks = min(n_blocks, X.shape[0])
    base, extra = divmod(X.shape[0], n_blocks)
    sizes = tuple(base + (index < extra) for index in range(n_blocks))
    return X.rechunk({0: sizes}), y.rechunk({0: sizes})


def _contiguous_assignment(n_chunks, addresses):
    """Worker of each chunk: contiguous ranges whose lengths differ by at most one."""
    base, extra = divmod(n_chunks, len(addresses))
    assignment = []
    for position, address in enumerate(addresses):
        assignment += [address] * (base + (position < extra))
    return tuple(assignment)


def _owned_blocks(X, y, assignment):
    """Add a final copying task per chunk: the keys we place and persist.

    The copy makes every persisted chunk own its memory (a slice would pin its parent:
    the whole source array or a memory map) and gives fresh keys, so an input
    persisted elsewhere by the user is still moved to its assigned worker.
    """
    # Fresh keys for every placement: releasing a previous fit's chunks while the same
    # keys are submitted again races in the scheduler (seen here: a fit stalled with
    # tasks 'processing' on a worker that had released them).
    token = uuid.uuid4().hex
    X_owned = X.map_blocks(_own_block, X.dtype, dtype=X.dtype, name=f"daskgd-X-{token}")
    y_column = y[:, None] if y.ndim == 1 else y  # (n, 2) holds the sample weights
    y_owned = y_column.map_blocks(
        _own_block, np.dtype(np.float64), dtype=np.float64, name=f"daskgd-y-{token}"
    )
    return X_owned, y_owned


def _own_block(block, dtype):
    if is_sparse(block):
        return own_csr(block, dtype)
    return np.require(block, dtype=dtype, requirements=["C", "O"])


def _place_once(client, source, X, y, threads, timeout):
    """Placed X and y, their placement, our futures and the statistics: persisted X
    where it is, else a cached copy, else a new copy, cached (:mod:`daskgd.data.reuse`)."""
    source = source if isinstance(source, da.Array) else X
    entry = reuse.CACHE.get(client, X, y, threads, source)
    if entry is not None:  # an in-place entry keeps no reference to X: the user's
        X_data = X if entry["in_place"] else entry["X"]
        return X_data, entry["y"], entry["placement"], entry["futures"], entry["values"]
    in_place = reuse.persisted_placement(client, X, threads, timeout)
    if in_place is not None:
        X_data = X
        y_data, futures = _place_beside(client, _owned_blocks(X, y, None)[1], in_place, timeout)
        placement = in_place
    else:
        X_data, y_data, placement, futures = _place(client, X, y, threads, timeout)
    values = _check_values(X_data, y_data, client, futures, timeout)
    entry = {"X": None if in_place else X_data, "y": y_data, "placement": placement}
    entry.update(futures=futures, values=values, in_place=in_place is not None)
    reuse.CACHE.put(client, X, y, threads, entry, source)
    return X_data, y_data, placement, futures, values


def _place_beside(client, y_owned, placement, timeout):
    """y's chunk i computed on the worker of X's chunk i (y is a d-th of X's size)."""
    parts = y_owned.to_delayed(optimize_graph=False).ravel()
    futures = [
        client.compute(part, workers=[address], allow_other_workers=True)
        for part, address in zip(parts, placement, strict=True)
    ]
    pending = set(futures)
    while pending:
        done = waits.first_completed(client, pending, what="placing y", timeout=timeout)
        for future in done:
            if future.status == "error":
                future.result()
        pending -= done
    return _rebuild(y_owned, futures), tuple(futures)


def _place(client, X, y, threads, timeout):
    """Compute chunk i of X and y on its assigned worker; return the persisted arrays."""
    assignment = _contiguous_assignment(X.numblocks[0], list(threads))
    # Loose restrictions to workers that may all go at once (restrictions.py)
    restrictions.ensure_registered(client, timeout)
    X_owned, y_owned = _owned_blocks(X, y, assignment)
    X_futures, y_futures = _compute_in_place(client, X_owned, y_owned, assignment, threads, timeout)
    placement = _actual_placement(client, X_futures, y_futures, assignment, timeout)
    futures = tuple(X_futures) + tuple(y_futures)
    return _rebuild(X_owned, X_futures), _rebuild(y_owned, y_futures), placement, futures


def _compute_in_place(client, X_owned, y_owned, assignment, threads, timeout):
    """Submit each worker's chunks one task chain at a time per thread.

    ``allow_other_workers`` keeps lineage usable when the worker dies, but makes the
    tasks stealable. Work stealing only takes tasks queued on a worker that processes
    more tasks than it has threads, so at most ``nthreads`` chains are in flight per
    worker: the final task of a chain runs alone and stays where it was sent.
    """
    X_parts = X_owned.to_delayed(optimize_graph=False).ravel()
    y_parts = y_owned.to_delayed(optimize_graph=False).ravel()
    queues = {address: deque() for address in threads}
    for index, address in enumerate(assignment):
        queues[address].extend([(y_parts[index], 1, index), (X_parts[index], 0, index)])
    results = [[None] * len(assignment), [None] * len(assignment)]
    owners = {}
    pending = set()

    def submit(address):
        part, kind, index = queues[address].popleft()
        future = client.compute(part, workers=[address], allow_other_workers=True)
        results[kind][index] = future
        owners[future.key] = address
        pending.add(future)

    for address, count in threads.items():
        for _ in range(min(count, len(queues[address]))):
            submit(address)
    while pending:
        for future in waits.first_completed(
            client, pending, what="placing the data chunks", timeout=timeout
        ):
            pending.discard(future)
            if future.status == "error":
                future.result()  # raise the failure of reading or computing the chunk
            if queues[owners[future.key]]:
                submit(owners[future.key])
    return results


def _actual_placement(client, X_futures, y_futures, assignment, timeout):
    """Read where the chunks are; warn if some moved (stolen) off their worker."""
    keys = [future.key for future in (*X_futures, *y_futures)]
    what = "reading where the chunks are"
    holders = waits.call(client, client.scheduler.who_has, keys=keys, what=what, timeout=timeout)
    placement, moved = [], 0
    for X_future, y_future, address in zip(X_futures, y_futures, assignment, strict=True):
        # A chunk lost with a dying worker has no holder yet: count it as planned.
        X_holders = holders.get(X_future.key) or [address]
        y_holders = holders.get(y_future.key) or [address]
        moved += address not in X_holders or address not in y_holders
        placement.append(address if address in X_holders else X_holders[0])
    if moved:
        message = f"{moved} of {len(assignment)} chunks moved off their worker (work stealing)"
        warnings.warn(message, RuntimeWarning, stacklevel=4)
    return tuple(placement)


def _rebuild(array, futures):
    rebuild, arguments = array.__dask_postpersist__()
    return rebuild({future.key: future for future in futures}, *arguments)


def _check_values(X, y, client, futures, timeout):
    """One pass over the chunks (:mod:`daskgd.data.statistics`): NaN, infinity and
    overflow in X and y, squared norms of X and its Gram sketch (and the stored entries
    of sparse chunks); raise on bad values."""
    # A wide sparse X's sketch is its slowest part (4.4 s of a 500,000 x 100,000 CSR
    # chunk at 0.01 %, against 0.1 s for the rest): left to the fits that need it.
    wide_sparse = is_sparse(X._meta) and X.shape[1] > EXACT_FEATURES
    merged, sketch = summarize(X, y, client, timeout, sketch=not wide_sparse)
    statistics = merged["statistics"]
    problem = _first_problem(statistics, X.chunks[0])
    if problem is not None or not np.isfinite(statistics[:, SQUARED_NORM].sum()):
        for future in futures:
            future.release()  # free the placed data now, not when the traceback goes
        raise ValueError(problem or _OVERFLOW.format(name="X", where="in its sum of squares"))
    nnz = merged.get("nnz")
    return (
        float(statistics[:, SQUARED_NORM].sum()),
        float(statistics[:, MAX_ROW_SQUARED_NORM].max()),
        sketch,
        None if nnz is None else tuple(int(count) for count in nnz),
    )


_OVERFLOW = (
    "{name} has values too large for float64 arithmetic {where}: squares of its "
    "entries overflow (entries above ~1e154), so the loss and gradient would be infinite; "
    "scale {name} (e.g. standardise its columns)"
)


def _first_problem(statistics, chunk_rows):
    """The message for the first NaN / infinite / overflowing row, or None."""
    offsets = np.cumsum((0,) + tuple(chunk_rows))
    checks = ((BAD_X, "X", None), (BAD_Y, "y", None), (OVERFLOW_X, "X", 1), (OVERFLOW_Y, "y", 1))
    for column, name, overflow in checks:
        bad_chunks = np.flatnonzero(statistics[:, column] >= 0)
        if not len(bad_chunks):
            continue
        chunk = int(bad_chunks[0])
        rows = f"chunk {chunk}, rows {offsets[chunk]}-{offsets[chunk + 1] - 1}"
        first_row = int(offsets[chunk] + statistics[chunk, column])
        if overflow:
            return _OVERFLOW.format(name=name, where=f"({rows}, first at row {first_row})")
        return f"{name} contains NaN or infinity ({rows}, first at row {first_row})"
    return None
