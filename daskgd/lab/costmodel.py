"""The lecture's cost model of one synchronous iteration, fitted to measured runs.

One iteration on m workers takes

    T(m) = overhead + compute(m) + alpha * messages(m) + beta * bytes(m) + sync(m)

- ``compute(m) = rows_per_worker(m) * n_features / rate * max(1, m / cores)``: every
  worker passes over its own rows at ``rate`` values (entries of X) per second, so the
  cost grows with samples and with features; with more worker processes than ``cores``
  they share the cores (``cores=None``: one core per worker).
- communication, the alpha-beta (latency-bandwidth) model: ``alpha`` seconds per
  message, paid per message whatever its size, and ``beta`` seconds per byte. What is
  counted is the **critical path** of one iteration for the reduction used, with P the
  bytes of one partial gradient (the size of w):

  ==========  ======================================  ==================================
  topology    messages                                bytes
  ==========  ======================================  ==================================
  flat        m into the server + m out (broadcast)   2 m P
  tree (s)    2 (L + 1): L = ceil(log_s m) levels      2 (s L + 1) P
              down and up, and the hop between the
              root and the server each way
  ring        2 (m - 1) steps (reduce-scatter,        2 (m - 1) P / m
              all-gather); no server, no broadcast
  mapreduce   L + 2: w to all workers at once, L      (m + s L + 1) P
              tree levels, the total to the client
  ==========  ======================================  ==================================

  A server receives (and sends) its m messages one after the other, so a flat
  reduction pays m latencies; the s children of a tree node send in parallel, so a tree
  pays one latency per level, but the s partial sums share the receiver's link (s P
  bytes per level). "mapreduce" is what daskgd's MapReduce does: the client sends w to
  every worker at once (one latency, m copies through its link), the partial sums go up
  a ``split_every`` tree, the total back to the client.
- ``sync(m) = spread * compute(m) * E[max of m standard normals]``: a synchronous
  iteration waits for the slowest of m workers whose compute times scatter with a
  relative standard deviation ``spread`` (fitted from the measured slowest-minus-mean
  compute time; the expected maximum by Blom's approximation).
- ``overhead``: what every iteration pays whatever m (the client's update, scheduling).

:func:`fit_cost_model` fits ``rate`` to the workers' measured ``compute_seconds`` (a line
through the origin), ``spread`` to their measured spread, then ``overhead``, ``alpha``
and ``beta`` to what is left of the iteration time by non-negative least squares.
alpha and beta can only be told apart when the runs move messages of different sizes
(different ``n_features``), or from :func:`~daskgd.lab.messages.measure_messages`, which
times real worker-to-worker messages of different sizes; otherwise ``beta`` is reported
as not identified and the bytes' cost goes into alpha.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import xarray as xr

from daskgd.lab.messages import MessageFit, fit_messages, measure_messages

__all__ = [
    "MessageFit",
    "TOPOLOGIES",
    "CostModel",
    "critical_path",
    "default_message_bytes",
    "fit_cost_model",
    "fit_messages",
    "measure_messages",
    "prediction_errors",
    "predict",
]

TOPOLOGIES = ("flat", "tree", "ring", "mapreduce")

#: Worker counts predicted by default: 1, 2, 4, ..., 1024.
DEFAULT_WORKERS = tuple(2**k for k in range(11))


def _check_topology(topology: str) -> str:
    if topology not in TOPOLOGIES:
        raise ValueError(f"unknown topology {topology!r}; choose one of {list(TOPOLOGIES)}")
    return topology


def _check_counts(n_workers: Any) -> np.ndarray:
    counts = np.atleast_1d(np.asarray(n_workers))
    if counts.size == 0:
        raise ValueError("no worker counts given")
    if counts.dtype.kind not in "iu" and not (
        counts.dtype.kind == "f" and np.all(np.isfinite(counts)) and np.all(counts == counts // 1)
    ):
        raise ValueError(f"worker counts must be integers >= 1, got {n_workers!r}")
    if np.any(counts < 1):
        raise ValueError(f"worker counts must be integers >= 1, got {n_workers!r}")
    return counts.astype(np.int64)


def _fan_ins(n_workers: int, split_every: int) -> list[int]:
    """Fan-in at each level of a split_every-ary reduction tree: ceil(log_s m) levels."""
    fans, n = [], n_workers
    while n > 1:
        fans.append(min(split_every, n))
        n = math.ceil(n / split_every)
    return fans


def critical_path(
    n_workers: Any, topology: str = "tree", *, message_bytes: float, split_every: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Messages and bytes on the critical path of one iteration (see the module docs).

    Returns
    -------
    messages, bytes : numpy.ndarray of float, shaped like ``n_workers``
    """
    _check_topology(topology)
    counts = _check_counts(n_workers)
    if isinstance(split_every, bool) or not isinstance(split_every, numbers.Integral):
        raise ValueError(f"split_every must be an integer >= 2, got {split_every!r}")
    if split_every < 2:
        raise ValueError(f"split_every must be an integer >= 2, got {split_every!r}")
    p = float(message_bytes)
    messages, volume = [], []
    for m in counts.tolist():
        if topology == "flat":
            messages.append(2.0 * m)
            volume.append(2.0 * m * p)
        elif topology == "tree":
            levels = len(_fan_ins(m, int(split_every)))
            messages.append(2.0 * (levels + 1))
            volume.append(2.0 * (split_every * levels + 1) * p)
        elif topology == "ring":
            messages.append(2.0 * (m - 1))
            volume.append(2.0 * (m - 1) * p / m)
        else:
            levels = len(_fan_ins(m, int(split_every)))
            messages.append(levels + 2.0)
            volume.append((m + split_every * levels + 1.0) * p)
    return np.array(messages), np.array(volume)


def expected_max_normal(n_workers: Any) -> np.ndarray:
    """E[max of m standard normals], Blom's approximation (0 for m = 1)."""
    from scipy.stats import norm

    counts = _check_counts(n_workers).astype(float)
    return np.where(counts > 1, norm.ppf((counts - 0.375) / (counts + 0.25)), 0.0)


def default_message_bytes(n_features: int) -> float:
    """Bytes of a float64 partial sum: the gradient with the intercept, loss and rows."""
    return 8.0 * (n_features + 1) + 16.0


@dataclass(frozen=True)
class CostModel:
    """Fitted parameters of the iteration-time model (units in the names).

    ``topology``/``split_every`` describe the runs it was fitted to; ``predict`` can
    use any topology. ``r2`` and ``relative_errors`` compare the fitted T(m) with the
    measured one on the runs (``workers``, in their order).
    """

    alpha_seconds: float
    beta_seconds_per_byte: float
    rate_values_per_second: float
    overhead_seconds: float = 0.0
    spread: float = 0.0
    cores: int | None = None
    topology: str = "mapreduce"
    split_every: int = 2
    beta_identified: bool = True
    r2: float = float("nan")
    workers: tuple[int, ...] = ()
    relative_errors: tuple[float, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    def compute_seconds(self, rows_per_worker: Any, n_workers: Any, n_features: Any = 1):
        """Predicted compute seconds of one worker holding ``rows_per_worker`` rows."""
        counts = _check_counts(n_workers).astype(float)
        share = np.maximum(1.0, counts / self.cores) if self.cores else np.ones_like(counts)
        values = np.asarray(rows_per_worker, dtype=float) * np.asarray(n_features, dtype=float)
        return values / self.rate_values_per_second * share

    def iteration_seconds(
        self,
        n_workers: Any,
        *,
        n_samples: float,
        n_features: int,
        message_bytes: float | None = None,
        topology: str | None = None,
        split_every: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Predicted parts of one iteration: compute, communication, sync, overhead, total.

        ``message_bytes`` defaults to a float64 partial sum: ``8 (n_features + 1) + 16``.
        """
        counts = _check_counts(n_workers)
        if message_bytes is None:
            message_bytes = default_message_bytes(n_features)
        topology = self.topology if topology is None else _check_topology(topology)
        split_every = self.split_every if split_every is None else split_every
        messages, volume = critical_path(
            counts, topology, message_bytes=message_bytes, split_every=split_every
        )
        compute = self.compute_seconds(np.ceil(n_samples / counts), counts, n_features)
        parts = {
            "compute": compute,
            "communication": self.alpha_seconds * messages + self.beta_seconds_per_byte * volume,
            "sync": self.spread * compute * expected_max_normal(counts),
            "overhead": np.full(counts.shape, self.overhead_seconds),
        }
        parts["total"] = sum(parts.values())
        return parts


def _lstsq_nonnegative(columns: list[np.ndarray], target: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    matrix = np.column_stack(columns)
    scale = np.where(np.abs(matrix).max(axis=0) > 0, np.abs(matrix).max(axis=0), 1.0)
    solution, _ = nnls(matrix / scale, target)
    return solution / scale


def _as_runs(measured: xr.Dataset | Sequence[xr.Dataset]) -> xr.Dataset:
    """One Dataset with dim ``run`` from one or several scaling Datasets."""
    if isinstance(measured, xr.Dataset):
        measured = [measured]
    if len(measured) == 0:
        raise ValueError("no measured runs given")
    pieces = []
    for dataset in measured:
        if "workers" not in dataset.dims:
            raise ValueError("measured runs need a 'workers' dimension (daskgd.lab.scaling output)")
        missing = {"iteration_seconds", "rows_per_worker", "partial_bytes"} - set(dataset)
        if missing:
            raise ValueError(f"measured runs lack {sorted(missing)}")
        flat = dataset.drop_dims("part", errors="ignore").reset_coords(drop=True)
        n_features: Any = float(dataset.attrs.get("n_features", 1))
        if "n_features" in flat:
            n_features = flat["n_features"]
        flat = flat.assign(n_workers=flat["workers"], n_features=n_features)
        flat = flat.rename({"workers": "run"})
        pieces.append(flat.drop_vars("run"))
    return xr.concat(pieces, dim="run", data_vars="all", coords="minimal", compat="override")


def _fit_rate(runs: xr.Dataset, cores: int | None) -> float:
    """rate (values of X per second) from the workers' compute time: a line through 0.

    Through the origin: a fixed per-task cost would otherwise be extrapolated to every
    worker of a 1024-worker cluster; it is in ``overhead`` instead. NaN when no compute
    time was measured.
    """
    counts = runs["n_workers"].values.astype(float)
    share = np.maximum(1.0, counts / cores) if cores else np.ones_like(counts)
    work = runs["rows_per_worker"].values * runs["n_features"].values * share
    compute = runs["compute_seconds"].values if "compute_seconds" in runs else None
    if compute is None or not np.all(np.isfinite(compute)):
        return float("nan")
    per_row = float(np.sum(compute * work) / np.sum(work * work))
    return 1.0 / per_row if per_row > 0 else float("inf")


def _fit_spread(runs: xr.Dataset, compute: np.ndarray) -> float:
    if "compute_spread_seconds" not in runs:
        return 0.0
    counts = runs["n_workers"].values
    expected = expected_max_normal(counts)
    spread = runs["compute_spread_seconds"].values
    usable = (counts > 1) & np.isfinite(spread) & (compute > 0)
    if not usable.any():
        return 0.0
    return float(np.median(spread[usable] / (compute[usable] * expected[usable])))


def fit_cost_model(
    measured: xr.Dataset | Sequence[xr.Dataset],
    *,
    topology: str = "mapreduce",
    split_every: int = 2,
    cores: int | None = None,
    messages: tuple[float, float] | None = None,
) -> CostModel:
    """Fit rate, spread, overhead, alpha and beta to measured runs.

    Parameters
    ----------
    measured : xarray.Dataset or sequence of them
        Output of :func:`daskgd.lab.scaling.scaling` (dim ``workers``): ``iteration_seconds``,
        ``rows_per_worker``, ``partial_bytes``, and where measured ``compute_seconds``
        and ``compute_spread_seconds``. Several Datasets (e.g. different n_features)
        are fitted together.
    topology : {"flat", "tree", "ring", "mapreduce"}, default "mapreduce"
        The reduction the runs used (daskgd's MapReduce: "mapreduce").
    split_every : int, default 2
        Fan-in of the tree, for runs without a ``split_every`` variable (scaling
        Datasets record the fan-in each run used) and for predictions.
    cores : int, optional
        Cores the workers shared (e.g. ``os.cpu_count()`` for a LocalCluster).
    messages : MessageFit or (alpha_seconds, beta_seconds_per_byte), optional
        Latency and inverse bandwidth measured separately (``fit_messages(
        measure_messages(client))``); then only overhead is fitted to the iteration
        times besides rate and spread.
    """
    _check_topology(topology)
    runs = _as_runs(measured)
    counts = _check_counts(runs["n_workers"].values)
    rate = _fit_rate(runs, cores)
    notes = []
    if np.isnan(rate):
        rate = float("inf")
        notes.append("no compute_seconds measured: compute is fitted as 0")
    model = CostModel(0.0, 0.0, rate, cores=cores, topology=topology, split_every=split_every)
    compute = model.compute_seconds(
        runs["rows_per_worker"].values, counts, runs["n_features"].values
    )
    spread = _fit_spread(runs, compute)
    sync = spread * compute * expected_max_normal(counts)
    message_count, volume = _critical_paths(runs, counts, topology, split_every)
    rest = runs["iteration_seconds"].values - compute - sync
    overhead, alpha, beta, identified = _fit_messages_and_overhead(
        rest, message_count, volume, messages, notes
    )
    fitted = replace(
        model,
        alpha_seconds=float(alpha),
        beta_seconds_per_byte=float(beta),
        overhead_seconds=float(overhead),
        spread=spread,
        beta_identified=identified,
        notes=tuple(notes),
    )
    return _with_quality(fitted, counts, runs)


def _critical_paths(runs: Any, counts: np.ndarray, topology: str, split_every: int) -> tuple:
    """(messages, bytes) on each run's critical path, with the fan-in each run used."""
    message_count, volume = [], []
    fan_ins = _run_split_every(runs, split_every)
    for m, p, s in zip(counts, runs["partial_bytes"].values, fan_ins, strict=True):
        one_messages, one_volume = critical_path(m, topology, message_bytes=p, split_every=s)
        message_count.append(one_messages)
        volume.append(one_volume)

    def flat(parts: list) -> np.ndarray:
        return np.concatenate([np.atleast_1d(np.asarray(x, dtype=float)) for x in parts])

    return flat(message_count), flat(volume)


def _fit_messages_and_overhead(
    rest: np.ndarray, message_count: np.ndarray, volume: np.ndarray, messages: Any, notes: list
) -> tuple[float, float, float, bool]:
    """(overhead, alpha, beta, beta identified) fitted to the time beyond compute and sync."""
    ones = np.ones_like(rest)
    if messages is not None:
        alpha, beta = _message_figures(messages)
        (overhead,) = _lstsq_nonnegative([ones], rest - alpha * message_count - beta * volume)
        notes.append("alpha and beta from separate message measurements")
        return overhead, alpha, beta, True
    if np.linalg.matrix_rank(np.column_stack([ones, message_count, volume]), tol=1e-9) >= 3:
        overhead, alpha, beta = _lstsq_nonnegative([ones, message_count, volume], rest)
        return overhead, alpha, beta, True
    overhead, alpha = _lstsq_nonnegative([ones, message_count], rest)
    notes.append(
        "beta not identified: every run sent messages of one size; the bytes' cost is in "
        "alpha (vary n_features or pass messages=fit_messages(measure_messages(...)))"
    )
    return overhead, alpha, 0.0, False


def _with_quality(fitted: CostModel, counts: np.ndarray, runs: Any) -> CostModel:
    """The fitted model with its R^2 and relative errors on the runs it was fitted to."""
    predicted = _predict_runs(fitted, counts, runs)
    observed = runs["iteration_seconds"].values
    residual = np.sum((observed - predicted) ** 2)
    total = np.sum((observed - observed.mean()) ** 2)
    r2 = 1.0 - residual / total if total > 0 else (1.0 if residual == 0 else float("nan"))
    return replace(
        fitted,
        r2=float(r2),
        workers=tuple(int(m) for m in counts),
        relative_errors=tuple(float(e) for e in (predicted - observed) / observed),
    )


def _message_figures(messages: Any) -> tuple[float, float]:
    """(alpha, beta) of a :class:`~daskgd.lab.messages.MessageFit` or a pair."""
    if hasattr(messages, "alpha_seconds") and hasattr(messages, "beta_seconds_per_byte"):
        return float(messages.alpha_seconds), float(messages.beta_seconds_per_byte)
    try:
        alpha, beta = (float(v) for v in messages)
    except (TypeError, ValueError):
        raise ValueError(
            "messages must be fit_messages(...) or (alpha_seconds, beta_seconds_per_byte), "
            f"got {messages!r}"
        ) from None
    if not (alpha >= 0 and beta >= 0):
        raise ValueError(f"messages: alpha and beta must be >= 0, got {alpha!r}, {beta!r}")
    return alpha, beta


def predict(
    model: CostModel,
    *,
    n_samples: float,
    n_features: int,
    message_bytes: float | None = None,
    workers: Any = DEFAULT_WORKERS,
    topologies: Sequence[str] = TOPOLOGIES,
    split_every: int | None = None,
) -> xr.Dataset:
    """Predicted T(m), its parts, speedup and efficiency per topology and worker count.

    Strong scaling: ``n_samples`` rows of ``n_features`` split over m workers; messages
    of ``message_bytes`` (default: a float64 partial sum). Speedup is each topology's
    T(1) over its T(m): 1 at m = 1 by construction.
    """
    counts = _check_counts(workers)
    if len(topologies) == 0:
        raise ValueError("no topologies given")
    tables: dict[str, list] = {
        name: [] for name in ("total", "compute", "communication", "sync", "overhead")
    }
    for topology in topologies:
        parts = model.iteration_seconds(
            counts,
            n_samples=n_samples,
            n_features=n_features,
            message_bytes=message_bytes,
            topology=_check_topology(topology),
            split_every=split_every,
        )
        for name, values in tables.items():
            values.append(parts[name])
    dims = ("topology", "workers")
    result = xr.Dataset(
        {
            "iteration_seconds": (dims, np.array(tables["total"]), {"units": "s"}),
            **{
                f"{name}_seconds": (dims, np.array(tables[name]), {"units": "s"})
                for name in ("compute", "communication", "sync", "overhead")
            },
        },
        coords={"topology": list(topologies), "workers": counts},
    )
    # Each topology's speedup over its own single worker, as the lecture defines it
    # (time on 1 node over time on m nodes of the same system): exactly 1 at m = 1 by
    # construction. (One shared baseline, the fitted system's T(1), gave a ring of one
    # worker, which sends nothing, a "speedup" of 2.47 at m = 1 in notebook 01.)
    one = xr.DataArray(
        [
            model.iteration_seconds(
                1, n_samples=n_samples, n_features=n_features, message_bytes=message_bytes,
                topology=_check_topology(topology), split_every=split_every,
            )["total"][0]
            for topology in topologies
        ],
        dims="topology",
        coords={"topology": list(topologies)},
    )  # fmt: skip
    result["speedup"] = (one / result["iteration_seconds"]).assign_attrs(
        units="1", long_name="T(1) / T(m) of the same topology"
    )
    result["efficiency"] = (result["speedup"] / result["workers"]).assign_attrs(units="1")
    result.attrs.update(parameters(model))
    return result


def parameters(model: CostModel) -> dict[str, Any]:
    """The fitted figures as a flat dict (for attrs, tables and printing)."""
    return {
        "alpha_seconds": model.alpha_seconds,
        "beta_seconds_per_byte": model.beta_seconds_per_byte,
        "rate_values_per_second": model.rate_values_per_second,
        "overhead_seconds": model.overhead_seconds,
        "spread": model.spread,
        "r2": model.r2,
        "beta_identified": int(model.beta_identified),
    }


def _run_split_every(runs: xr.Dataset, default: int) -> list[int]:
    if "split_every" in runs:
        return [int(v) for v in runs["split_every"].values]
    return [int(default)] * runs.sizes["run"]


def _predict_runs(model: CostModel, counts: Any, runs: xr.Dataset) -> np.ndarray:
    """Predicted T of runs (dim ``run``) with their own rows, features and message bytes."""
    counts = _check_counts(counts)
    compute = model.compute_seconds(
        runs["rows_per_worker"].values, counts, runs["n_features"].values
    )
    partial_bytes = runs["partial_bytes"].values
    fan_ins = _run_split_every(runs, model.split_every)
    totals = []
    for index, m in enumerate(counts):
        messages, volume = critical_path(
            m, model.topology, message_bytes=partial_bytes[index], split_every=fan_ins[index]
        )
        communication = model.alpha_seconds * messages[0] + model.beta_seconds_per_byte * volume[0]
        sync = model.spread * compute[index] * expected_max_normal(m)[0]
        totals.append(model.overhead_seconds + compute[index] + communication + sync)
    return np.array(totals)


def prediction_errors(model: CostModel, measured: xr.Dataset) -> xr.Dataset:
    """Measured against predicted T(m) and speedup on a scaling Dataset (dim ``workers``)."""
    counts = _check_counts(measured["workers"].values)
    predicted = _predict_runs(model, counts, _as_runs(measured))
    observed = measured["iteration_seconds"].values
    return xr.Dataset(
        {
            "measured_seconds": ("workers", observed, {"units": "s"}),
            "predicted_seconds": ("workers", predicted, {"units": "s"}),
            "relative_error": ("workers", (predicted - observed) / observed, {"units": "1"}),
            "measured_speedup": ("workers", observed[0] / observed * counts[0], {"units": "1"}),
            "predicted_speedup": ("workers", predicted[0] / predicted * counts[0], {"units": "1"}),
        },
        coords={"workers": counts},
    )


def prediction_figure(errors: xr.Dataset) -> Any:
    """Bokeh figure: measured and predicted T(m) against m."""
    from bokeh.plotting import figure

    m = errors["workers"].values
    fig = figure(
        title="Iteration time: model against measurement",
        x_axis_label="workers m",
        y_axis_label="ms per iteration",
        width=480,
        height=320,
        name="daskgd-costmodel",
    )
    fig.line(m, errors["predicted_seconds"].values * 1e3, legend_label="predicted", line_width=2)
    fig.scatter(
        m, errors["measured_seconds"].values * 1e3, size=9, color="#d62728", legend_label="measured"
    )
    fig.legend.location = "top_left"
    return fig
