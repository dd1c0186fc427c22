"""Latency and bandwidth (alpha and beta) from real worker-to-worker transfers.

:func:`measure_messages` times messages between two workers of a cluster the way
the workers move data themselves: the second worker fetches a key held by the first
with distributed's own ``get_data_from_worker`` (the ``get_data`` handler, the
worker's pooled connections, its serialisation), on its event loop, timed with
``time.perf_counter`` around the request and the reply. It does not read
``Worker.transfer_incoming_log``, whose durations distributed clamps below at 1 ms
(``duration = max(0.001, stop - start)``): on one machine 8 B and 800 B would both
read exactly 1.000 ms, and a latency below a millisecond could not be seen.

:func:`fit_messages` fits ``seconds = alpha + beta * bytes`` to the medians per size,
weighted by how much each size's times scatter, and gives intervals for alpha and
beta by resampling the repeats of each size (bootstrap).
"""

from __future__ import annotations

import asyncio
import numbers
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from daskgd.data import waits

__all__ = ["DEFAULT_SIZES", "MessageFit", "fit_messages", "measure_messages"]

#: Message sizes in bytes: from one float64 to tens of megabytes.
DEFAULT_SIZES = (8, 80, 800, 8_000, 80_000, 800_000, 8_000_000, 32_000_000)

#: Bound on one fetch (a worker that stops answering must not hang the measurement).
FETCH_TIMEOUT_SECONDS = 60.0

#: Bound on placing the payloads on the first worker.
PLACE_TIMEOUT_SECONDS = 120.0


def _make_payload(n_bytes: int) -> np.ndarray:
    return np.ones(max(1, n_bytes // 8))


async def _time_fetches(
    source: str, keys: list[str], repeats: int, dask_worker: Any = None
) -> list[tuple[str, float]]:
    """Run on the receiving worker: fetch every key from ``source`` ``repeats`` times.

    The sizes take turns (one fetch of each, then the next round), so a slow moment
    of the machine spreads over all sizes instead of biasing one. One unrecorded
    fetch first opens the pooled connection.
    """
    from distributed.worker import get_data_from_worker

    async def fetch(key: str) -> float:
        start = time.perf_counter()
        response: Any = await asyncio.wait_for(
            get_data_from_worker(dask_worker.rpc, [key], source, who=dask_worker.address),
            FETCH_TIMEOUT_SECONDS,
        )
        elapsed = time.perf_counter() - start
        if response.get("status") != "OK" or key not in response.get("data", {}):
            raise RuntimeError(f"worker {source} did not serve {key}: {response.get('status')}")
        return elapsed

    await fetch(keys[0])
    return [(key, await fetch(key)) for _ in range(repeats) for key in keys]


def _check_sizes(sizes: Sequence[int]) -> list[int]:
    checked: list[int] = []
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 8:
            raise ValueError(f"message sizes must be integers >= 8 (bytes), got {size!r}")
        checked.append(int(size))
    if len(set(checked)) < 2:
        raise ValueError(f"give at least 2 different message sizes, got {list(sizes)!r}")
    return checked


def measure_messages(
    client: Any, sizes: Sequence[int] = DEFAULT_SIZES, *, repeats: int = 7
) -> xr.Dataset:
    """Time real worker-to-worker messages of each size (see the module docs).

    The payloads (float64 arrays of ``size`` bytes) are made on the first worker
    (sorted addresses) and fetched by the second, ``repeats`` times each. An emulated
    network (:mod:`daskgd.runtime.emulation`) slows these fetches as it slows a fit's.

    Returns
    -------
    xarray.Dataset
        Dim ``message``: ``bytes`` and ``seconds`` of each fetch (request to reply);
        attrs ``source`` and ``target``, the two workers.
    """
    from dask.base import tokenize
    from distributed import wait

    workers = sorted(waits.scheduler_workers(client, what="listing the workers"))
    if len(workers) < 2:
        raise ValueError("measure_messages needs a cluster with at least 2 workers")
    if isinstance(repeats, bool) or not isinstance(repeats, numbers.Integral) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    sizes = _check_sizes(sizes)
    source, target = workers[0], workers[1]
    keys = {f"daskgd-message-{size}-{tokenize(size, time.time())}": size for size in sizes}
    payloads = [
        client.submit(_make_payload, size, key=key, workers=[source], allow_other_workers=False)
        for key, size in keys.items()
    ]
    try:
        wait(payloads, timeout=PLACE_TIMEOUT_SECONDS)
        timed = client.run(_time_fetches, source, list(keys), int(repeats), workers=[target])
    finally:
        client.cancel(payloads)
    rows = [(8 * max(1, keys[key] // 8), seconds) for key, seconds in timed[target]]
    data = np.array(rows, dtype=np.float64)
    return xr.Dataset(
        {
            "bytes": ("message", data[:, 0], {"units": "bytes"}),
            "seconds": ("message", data[:, 1], {"units": "s"}),
        },
        attrs={"source": source, "target": target, "repeats": int(repeats)},
    )


@dataclass(frozen=True)
class MessageFit:
    """alpha (s per message) and beta (s per byte) with 95% bootstrap intervals.

    ``r2`` is that of the line through the medians per size; ``sizes`` and
    ``median_seconds`` are those medians. Pass it as ``messages=`` of
    :func:`daskgd.lab.costmodel.fit_cost_model`.
    """

    alpha_seconds: float
    beta_seconds_per_byte: float
    alpha_interval: tuple[float, float]
    beta_interval: tuple[float, float]
    r2: float
    sizes: tuple[float, ...] = ()
    median_seconds: tuple[float, ...] = ()

    @property
    def bandwidth_bytes_per_second(self) -> float:
        return 1.0 / self.beta_seconds_per_byte if self.beta_seconds_per_byte > 0 else np.inf


def _groups(measured: xr.Dataset) -> list[tuple[float, np.ndarray]]:
    if "bytes" not in measured or "seconds" not in measured:
        raise ValueError("measured messages need 'bytes' and 'seconds' (measure_messages output)")
    n_bytes = measured["bytes"].values.astype(float)
    seconds = measured["seconds"].values.astype(float)
    if not (np.all(np.isfinite(seconds)) and np.all(seconds > 0)):
        raise ValueError("message times must be finite and > 0 seconds")
    sizes = np.unique(n_bytes)
    if sizes.size < 2:
        raise ValueError("fit_messages needs messages of at least 2 different sizes")
    return [(float(size), seconds[n_bytes == size]) for size in sizes]


def _weighted_line(sizes: np.ndarray, medians: np.ndarray, scatter: np.ndarray) -> np.ndarray:
    """Non-negative (alpha, beta) minimising the squared misfit in units of ``scatter``."""
    from scipy.optimize import nnls

    matrix = np.column_stack([np.ones_like(sizes), sizes]) / scatter[:, None]
    scale = matrix.max(axis=0)
    solution, _ = nnls(matrix / scale, medians / scatter)
    return solution / scale


def _scatter(values: np.ndarray, median: float) -> float:
    """Standard error of a median from the MAD (normal approximation), floored at 1%
    of the median so one size of identical repeats does not take all the weight."""
    mad = 1.4826 * float(np.median(np.abs(values - median)))
    return max(1.2533 * mad / np.sqrt(values.size), 0.01 * median)


def fit_messages(
    measured: xr.Dataset, *, n_resamples: int = 400, random_state: int = 0
) -> MessageFit:
    """Fit ``seconds = alpha + beta * bytes`` (alpha, beta >= 0) to measured messages.

    The line goes through the median time of each size, each weighted by its
    standard error (from its scatter), so that a size with noisy repeats counts for
    less and a few slow transfers do not decide the line. The 95% intervals come from
    refitting on ``n_resamples`` resamplings of the repeats of every size.
    """
    groups = _groups(measured)
    sizes = np.array([size for size, _ in groups])
    medians = np.array([float(np.median(values)) for _, values in groups])
    scatter = np.array([_scatter(v, m) for (_, v), m in zip(groups, medians, strict=True)])
    alpha, beta = _weighted_line(sizes, medians, scatter)
    rng = np.random.default_rng(random_state)
    resampled = np.empty((n_resamples, 2))
    for i in range(n_resamples):
        again = np.array([np.median(rng.choice(values, values.size)) for _, values in groups])
        resampled[i] = _weighted_line(sizes, again, scatter)
    low, high = np.percentile(resampled, [2.5, 97.5], axis=0)
    predicted = alpha + beta * sizes
    total = np.sum((medians - medians.mean()) ** 2)
    r2 = 1.0 - np.sum((medians - predicted) ** 2) / total if total > 0 else float("nan")
    return MessageFit(
        alpha_seconds=float(alpha),
        beta_seconds_per_byte=float(beta),
        alpha_interval=(float(low[0]), float(high[0])),
        beta_interval=(float(low[1]), float(high[1])),
        r2=float(r2),
        sizes=tuple(float(s) for s in sizes),
        median_seconds=tuple(float(m) for m in medians),
    )
