"""Who the others waited for: the straggler flag and the split of the wait.

Both measurement paths (distributed's records, :mod:`daskgd.observe.worker_measures`;
the residents' own timers, :mod:`daskgd.observe.resident`) give per (iteration, worker)
compute and wait seconds; this turns them into

sync_seconds
    Synchronisation, the lecture's term: the slowest worker's compute in the iteration
    minus this worker's, at most this worker's wait (0 for the slowest worker, and 0
    with one worker).
overhead_seconds
    The rest of the wait, ``wait_seconds - sync_seconds``: idle for reasons other than
    a slower peer (the scheduler's and the client's orchestration around the tasks,
    transfers queued behind others).
straggler
    A worker persistently slower than the others. Per iteration, its *slowness* is its
    compute per byte of data read (mapreduce: the median over its chunk tasks, so a
    worker that ran more chunks, or one preempted task, is not a slow worker) over the
    median of the other active workers' (compute seconds when the pace per byte is not
    known); its *excess* is the compute seconds above what the others' pace would have
    taken, at most the seconds its compute outlasted the others' median compute (a
    worker slower per byte that holds less data than its peers finishes first: it holds
    nobody up; seen as a worker with a third of the rows, its whole compute overlapping
    its peer's memory traffic, flagged in a third of a loaded run's iterations). A cell
    is flagged when, over the ``window`` iterations around it (the first
    or last ``window`` at the ends of the run), the median slowness is above ``ratio``
    and the median excess above ``min_excess_seconds``.

Why medians over a window: on a 2-core machine shared with other jobs, one worker's
compute for the same chunks varied from 1.4 to 64 ms between iterations of an
un-emulated 2-worker fit (load 1.6), and the ratio of the two workers' compute was
above 1.25 in 31% of its iterations: what the former per-iteration rule (above 1.25 x
and median + 3 MAD of the others) flagged. Preemption is bursty and additive; an
emulated straggler is slow in every iteration. Measured on 60- and 100-iteration fits
(20k x 10 and 100k x 100 logistic gd, 2 workers, load 9 to 22 on 2 cores): the
per-iteration slowness of un-emulated workers had its 95% quantile at 1.8 to 4.6, its
median over 11 iterations stayed within 0.79-1.27; a 3x straggler's 11-iteration
median stayed within 1.34-5.8 (under load its peer's compute stretches too, while the
straggler's emulated sleep leaves the CPU). ``window=11, ratio=1.3`` and a 2 ms floor
flagged none of the 800 un-emulated cells and all 480 of the straggler's iterations.
The margin (1.27 against 1.34) is that of a machine loaded 10 times over, where one
un-emulated fit at load 19-21 also had a stretch of 11 iterations with one worker
2.8x slower per byte than its peer: flagged, and rightly, as far as its peer's wait
goes. Compute seconds alone (no pace per byte, as for the residents), at load 1.6,
flagged 3-9% of un-emulated cells where work stealing gave one worker more chunks.
"""

from __future__ import annotations

import numpy as np

#: Iterations whose medians decide the flag (see the module docstring).
STRAGGLER_WINDOW = 11
#: Median slowness (compute per byte over the others') above which a worker is flagged.
STRAGGLER_RATIO = 1.3
#: Median excess compute (seconds) below which nobody is flagged: preemption noise.
STRAGGLER_MIN_EXCESS_SECONDS = 0.002


def sync_and_overhead(
    compute: np.ndarray, wait: np.ndarray, active: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(iteration, worker) synchronisation and overhead seconds; they add up to ``wait``.

    ``compute`` and ``wait`` may hold NaN where nothing was measured (NaN there too);
    ``active`` marks the workers that computed for the iteration.
    """
    busy = np.where(active & np.isfinite(compute), compute, np.nan)
    measured = np.isfinite(busy).any(axis=1)
    slowest = np.zeros(len(compute))
    slowest[measured] = np.nanmax(busy[measured], axis=1)
    behind = np.maximum(slowest[:, None] - np.nan_to_num(compute), 0.0)
    sync = np.where(np.isfinite(wait), np.minimum(behind, np.maximum(wait, 0.0)), np.nan)
    return sync, wait - sync


def _slowness(
    compute: np.ndarray, pace: np.ndarray, active: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per cell: pace over the other active workers' median pace, and the excess seconds:
    those lost to the slower pace, at most those by which the worker's compute outlasted
    the others' median compute (a worker slower per byte that holds less data finishes
    first and holds nobody up)."""
    pace = np.where(active & np.isfinite(pace) & (pace > 0), pace, np.nan)
    busy = np.where(active, compute, np.nan)
    slowness, excess = np.full(compute.shape, np.nan), np.full(compute.shape, np.nan)
    for j in range(compute.shape[1]):
        others = np.delete(pace, j, axis=1)
        others_busy = np.delete(busy, j, axis=1)
        # No median of an all-NaN row is attempted: that would warn, and silencing it with
        # warnings.catch_warnings is not thread-safe (a live view computes this too).
        rows = (
            np.isfinite(others).any(axis=1)
            & np.isfinite(pace[:, j])
            & np.isfinite(others_busy).any(axis=1)
        )
        if rows.any():
            ratio = pace[rows, j] / np.nanmedian(others[rows], axis=1)
            slowness[rows, j] = ratio
            behind = compute[rows, j] - np.nanmedian(others_busy[rows], axis=1)
            excess[rows, j] = np.minimum(compute[rows, j] * (1.0 - 1.0 / ratio), behind)
    return slowness, excess


def straggler_flags(
    compute: np.ndarray,
    active: np.ndarray,
    *,
    pace: np.ndarray | None = None,
    window: int = STRAGGLER_WINDOW,
    ratio: float = STRAGGLER_RATIO,
    min_excess_seconds: float = STRAGGLER_MIN_EXCESS_SECONDS,
) -> np.ndarray:
    """Flag the (iteration, worker) cells of a persistently slow worker (module docstring).

    ``pace`` (iteration, worker): seconds per byte of data, NaN where unknown; without
    it the compute seconds themselves are compared.
    """
    check_rule(window, ratio, min_excess_seconds)
    slowness, excess = _slowness(compute, compute if pace is None else pace, active)
    flags = np.zeros(compute.shape, dtype=bool)
    n = compute.shape[0]
    for i in range(n):
        if not np.isfinite(slowness[i]).any():
            continue
        # The window iterations around i, shifted inwards at the ends of the run: the
        # first iterations are judged on as many as the others (a live view's latest
        # ones on the window before them, until the next iterations come in).
        start = min(max(0, i - window // 2), max(0, n - window))
        block = slice(start, start + window)
        known = np.isfinite(slowness[i])
        typical = np.nanmedian(slowness[block][:, known], axis=0)
        above = np.nanmedian(excess[block][:, known], axis=0)
        flags[i, known] = (typical > ratio) & (above > min_excess_seconds)
    return flags & active


def check_rule(window: int, ratio: float, min_excess_seconds: float) -> None:
    """Raise ValueError naming the setting of the straggler rule that makes no sense."""
    if not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"straggler_window must be an integer >= 1, got {window!r}")
    if not ratio >= 1:
        raise ValueError(f"straggler_ratio must be >= 1, got {ratio!r}")
    if not min_excess_seconds >= 0:
        raise ValueError(f"straggler_min_excess_seconds must be >= 0, got {min_excess_seconds!r}")
