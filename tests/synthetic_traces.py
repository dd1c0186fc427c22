"""Synthetic traces in the format of docs/trace.md, for tests of what reads a trace.

``make_trace`` builds an ``iteration x worker`` trace whose numbers obey the format's
relations: every worker's compute + communication + wait spans the iteration's
measured window, the wall time adds a client overhead, the slowest worker is flagged
as a straggler by the documented rule (above median + k * MAD and ratio * median).
"""

from __future__ import annotations

import json

import numpy as np
import xarray as xr

from daskgd.observe.trace import TRACE_VERSION

WORKERS = ("tcp://127.0.0.1:40101", "tcp://127.0.0.1:40102", "tcp://127.0.0.1:40103")
STRAGGLER_K = 3.0
STRAGGLER_RATIO = 1.5
N_PARAMS = 101


def straggler_flags(compute: np.ndarray) -> np.ndarray:
    """The rule of docs/trace.md on an (iteration, worker) array of compute seconds."""
    median = np.median(compute, axis=1, keepdims=True)
    mad = np.median(np.abs(compute - median), axis=1, keepdims=True)
    return (compute > median + STRAGGLER_K * mad) & (compute > STRAGGLER_RATIO * median)


def make_trace(
    n_iterations: int = 40,
    workers: tuple[str, ...] = WORKERS,
    straggler: int | None = 2,
    straggler_every: int = 4,
    seed: int = 0,
) -> xr.Dataset:
    """A trace of ``n_iterations`` updates (plus iteration 0) on ``workers``.

    Worker ``straggler`` computes three times longer every ``straggler_every``-th
    iteration, and a bit longer always (its chunks are larger).
    """
    rng = np.random.default_rng(seed)
    n, m = n_iterations + 1, len(workers)
    compute = 0.020 + 0.002 * rng.random((n, m))
    if straggler is not None:
        compute[:, straggler] *= 1.2
        compute[::straggler_every, straggler] *= 3.0
    communication = 0.004 + 0.001 * rng.random((n, m))
    busy = compute + communication
    window = busy.max(axis=1)
    wait = window[:, None] - busy
    # synchronisation: the slowest worker's compute minus this one's, within the wait
    sync = np.minimum(compute.max(axis=1, keepdims=True) - compute, wait)
    wall = window + 0.008 + 0.001 * rng.random(n)
    elapsed = np.cumsum(wall)
    start = 1.7e9 + elapsed - wall
    loss = 0.2 + 0.5 * np.exp(-np.arange(n) / 10)
    broadcast = np.full(n, N_PARAMS * 8.0 * m)
    reduce = np.full(n, N_PARAMS * 8.0 * (m + 1))
    iteration_vars = {
        "loss": (loss, "1"),
        "grad_norm": (0.3 * np.exp(-np.arange(n) / 8), "1"),
        "step_size": (np.full(n, 0.5), "1"),
        "wall_seconds": (wall, "s"),
        "elapsed_seconds": (elapsed, "s"),
        "start_time": (start, "s"),
        "n_evaluations": (np.ones(n, dtype=np.int64), "1"),
        "evaluation_seconds": (window + 0.002, "s"),
        "attempts": (np.ones(n, dtype=np.int64), "1"),
        "bytes_total": (broadcast + reduce, "bytes"),
        "bytes_broadcast": (broadcast, "bytes"),
        "bytes_reduce": (reduce, "bytes"),
    }
    worker_vars = {
        "compute_seconds": (compute, "s"),
        "communication_seconds": (communication, "s"),
        "wait_seconds": (wait, "s"),
        "sync_seconds": (sync, "s"),
        "overhead_seconds": (wait - sync, "s"),
        "bytes_sent": (np.tile(reduce[:, None] / m, (1, m)), "bytes"),
        "bytes_received": (np.tile(broadcast[:, None] / m, (1, m)), "bytes"),
        "n_tasks": (np.full((n, m), 3, dtype=np.int64), "1"),
        "straggler": (straggler_flags(compute), "1"),
    }
    data = {name: ("iteration", v, {"units": u}) for name, (v, u) in iteration_vars.items()}
    data.update(
        {name: (("iteration", "worker"), v, {"units": u}) for name, (v, u) in worker_vars.items()}
    )
    chunk_workers = [w for w in workers for _ in range(2)]
    if straggler is not None:
        chunk_workers.append(workers[straggler])
    trace = xr.Dataset(
        data,
        coords={
            "iteration": np.arange(n),
            "worker": list(workers),
            "worker_name": ("worker", [str(i) for i in range(m)]),
        },
    )
    trace.attrs.update(
        daskgd_trace_version=TRACE_VERSION,
        solver="gd",
        model="logistic",
        n_samples=1000 * len(chunk_workers),
        n_features=N_PARAMS - 1,
        n_workers=m,
        chunk_workers=json.dumps(chunk_workers),
        chunk_rows=json.dumps([1000] * len(chunk_workers)),
        straggler_k=STRAGGLER_K,
        straggler_ratio=STRAGGLER_RATIO,
    )
    return trace


def without_workers(trace: xr.Dataset) -> xr.Dataset:
    """The same trace as a run without instrumentation: no worker dim, no bytes."""
    keep = [name for name, v in trace.data_vars.items() if "worker" not in v.dims]
    keep = [name for name in keep if not name.startswith("bytes")]
    return trace[keep].drop_vars(["worker", "worker_name"], errors="ignore")
