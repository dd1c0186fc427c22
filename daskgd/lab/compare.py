"""Several strategies on the same data and the same emulated conditions, side by side.

    runs = compare(["mapreduce", "direct", ("direct", {"backup_workers": 1}), "allreduce"],
                   X, y, client=client, emulation=Emulation(stragglers={1: 3.0}))
    runs.summary()                      # time / bytes / rounds to a target loss, per run
    runs.write_report("compare.html")   # the figures of daskgd.viz.comparison
    runs["direct"]                      # a run's trace (docs/trace.md)

Each entry is a strategy name, a ``(name, options)`` pair given to
:func:`daskgd.strategies.get_strategy`, or a configured :class:`Strategy`; labels are
the names (with the options, when given) unless ``labels=`` says otherwise. Every run
is the same estimator (``model=``) fitted on the same data, persisted once on the
cluster and placed by each fit on the same workers (placement is a function of the
sorted worker addresses and the chunks), under the same emulation, one after the
other on one cluster. The runs go through the estimators' own fit, so a run's trace
and coefficients are those of the same fit made alone.

Every entry is checked (known name, valid options, an optimizer the strategy can run)
before the first fit starts. Every wait on the cluster is bounded by the estimator's
``timeout`` (30 s unanswered by default), so a comparison cannot hang.

The default model is logistic regression with plain gradient descent and a fixed
step (``solver="gd", learning_rate=1.0``): the asynchronous and decentralised
strategies cannot run a line search, and the comparison is fair only when every
strategy takes the same kind of step. 1.0 is below 1/L for standardised features
(L <= 0.25 * (1 + largest eigenvalue of the covariance)); give another for other data.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import xarray as xr

from daskgd.data import waits
from daskgd.viz.compare_columns import format_comparison, summary_dataset

__all__ = ["Comparison", "compare", "prepare_runs", "resolve_entries"]

#: The estimator of each ``model=`` name.
MODELS = {"logistic": "LogisticRegression", "linear": "LinearRegression", "ridge": "Ridge"}


class Comparison(Mapping):
    """The runs of :func:`compare`: label -> trace, in the order of the entries.

    Attributes
    ----------
    traces : dict of str to xarray.Dataset
    estimators : dict of str to the fitted estimator of each run
    target_loss : float or None
        The target of :meth:`summary` and the report (None: the largest best loss).
    """

    def __init__(self, traces: dict, estimators: dict, target_loss: float | None = None):
        self.traces, self.estimators, self.target_loss = traces, estimators, target_loss

    def __getitem__(self, label: str) -> xr.Dataset:
        return self.traces[label]

    def __iter__(self) -> Iterator[str]:
        return iter(self.traces)

    def __len__(self) -> int:
        return len(self.traces)

    def summary(self, target_loss: float | None = None) -> xr.Dataset:
        """One row per run (:func:`daskgd.viz.compare_columns.summary_dataset`)."""
        return summary_dataset(self.traces, _first(target_loss, self.target_loss))

    def format(self, target_loss: float | None = None) -> str:
        return format_comparison(self.summary(target_loss))

    def write_report(self, path: Any, target_loss: float | None = None) -> Any:
        from daskgd.viz.comparison import write_comparison_report

        return write_comparison_report(self.traces, path, _first(target_loss, self.target_loss))


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _label(entry: Any) -> str:
    from daskgd.strategies.base import Strategy

    if isinstance(entry, Strategy):
        described = {k: v for k, v in entry.describe().items() if k not in ("strategy",)}
        options = ",".join(f"{k}={v}" for k, v in described.items() if k != "transfer_dtype")
        return f"{entry.name}:{options}" if options else entry.name
    if isinstance(entry, tuple):
        name, options = entry
        text = ",".join(f"{k}={v}" for k, v in options.items())
        return f"{name}:{text}" if text else name
    return str(entry)


def _check_entry(entry: Any, index: int) -> Any:
    """A name, a (name, options) pair with a mapping of options, or a Strategy."""
    from daskgd.strategies.base import STRATEGIES, Strategy

    if isinstance(entry, Strategy):
        return entry
    if isinstance(entry, list):
        entry = tuple(entry)
    if isinstance(entry, tuple):
        if len(entry) != 2 or not isinstance(entry[0], str) or not isinstance(entry[1], Mapping):
            raise ValueError(
                f"strategies[{index}] must be a name, a (name, options) pair or a "
                f"Strategy, got {entry!r}"
            )
        name, options = entry[0], dict(entry[1])
    elif isinstance(entry, str):
        name, options = entry, {}
    else:
        raise TypeError(f"strategies[{index}] must be a name, a (name, options) pair or a "
                        f"Strategy, got {type(entry).__name__}")  # fmt: skip
    if name not in STRATEGIES:
        raise ValueError(
            f"strategies[{index}]: unknown strategy {name!r}; choose one of {list(STRATEGIES)}"
        )
    fixed = sorted(set(options) & {"emulation", "transfer_dtype"})
    if fixed:
        raise ValueError(f"strategies[{index}] ({name!r}): {fixed} are compare() arguments, "
                         "the same for every run")  # fmt: skip
    return (name, options)


def resolve_entries(strategies: Sequence[Any], labels: Sequence[str] | None = None):
    """[(label, entry)] with each entry a name, (name, options) or a Strategy; checked."""
    if isinstance(strategies, (str, bytes)) or not isinstance(strategies, Sequence):
        raise TypeError(f"strategies must be a sequence of entries, got {strategies!r}")
    if not strategies:
        raise ValueError("strategies is empty: give at least one, e.g. ['mapreduce', 'direct']")
    entries = [_check_entry(entry, i) for i, entry in enumerate(strategies)]
    if labels is None:
        labels = [_label(entry) for entry in entries]
    labels = [str(label) for label in labels]
    if len(labels) != len(entries):
        raise ValueError(f"{len(labels)} labels for {len(entries)} strategies")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be distinct, got {labels!r}: pass labels=[...]")
    return list(zip(labels, entries, strict=True))


def _template(model: Any, solver: str, learning_rate: Any, fixed: dict) -> Any:
    """The estimator every run clones: a daskgd estimator given, or one by name."""
    from sklearn.base import clone

    from daskgd import estimators
    from daskgd.estimators.base import GradientDescentEstimator

    if isinstance(model, GradientDescentEstimator):
        return clone(model).set_params(**fixed)
    if model not in MODELS:
        raise ValueError(
            f"model must be one of {sorted(MODELS)} or a daskgd estimator, got {model!r}"
        )
    cls = getattr(estimators, MODELS[model])
    return cls(solver=solver, learning_rate=learning_rate, **fixed)


def _run_estimator(template: Any, entry: Any, emulation: Any, options: dict) -> Any:
    """The estimator of one run: the template with this entry's strategy."""
    from daskgd.strategies.base import Strategy, get_strategy

    estimator = _copy(template, **options)
    if isinstance(entry, Strategy):
        if emulation is not None and entry.emulation is not emulation:
            raise ValueError(
                f"a configured strategy ({entry!r}) brings its own emulation: give "
                "emulation to get_strategy(...), or the strategy by name with compare(emulation=)"
            )
        return estimator.set_params(strategy=entry)
    name, strategy_options = entry
    if not strategy_options:
        return estimator.set_params(strategy=name, emulation=emulation)
    strategy = get_strategy(
        name, emulation=emulation, transfer_dtype=estimator.transfer_dtype, **strategy_options
    )
    return estimator.set_params(strategy=strategy, emulation=None, transfer_dtype="float64")


def _check_run(label: str, estimator: Any) -> None:
    """Options and optimizer of a run, checked before any fit starts (names the run)."""
    try:
        estimator._validate_common()
        estimator._strategy().check(estimator._optimizer())
    except (ValueError, TypeError) as error:
        raise type(error)(f"run {label!r}: {error}") from None


def prepare_runs(
    strategies: Sequence[Any],
    *,
    model: Any = "logistic",
    solver: str = "gd",
    learning_rate: Any = 1.0,
    max_iter: int = 50,
    tol: float = 0.0,
    transfer_dtype: str | None = None,
    timeout: float | None = None,
    emulation: Any = None,
    labels: Sequence[str] | None = None,
    client: Any = None,
    workers: Sequence[str] | None = None,
) -> dict[str, Any]:
    """label -> the unfitted estimator of each run, every one checked; no cluster needed.

    The arguments are :func:`compare`'s. Raises ValueError or TypeError naming the run
    (its label) whose strategy, options or optimizer do not go together.
    """
    runs = resolve_entries(strategies, labels)
    fixed: dict = {"max_iter": max_iter, "tol": tol}
    fixed.update({k: v for k, v in (("transfer_dtype", transfer_dtype), ("timeout", timeout))
                  if v is not None})  # fmt: skip
    template = _template(model, solver, learning_rate, fixed)
    options = {"client": client, "workers": None if workers is None else list(workers)}
    estimators = {}
    for label, entry in runs:
        try:
            estimators[label] = _run_estimator(template, entry, emulation, options)
        except (ValueError, TypeError) as error:
            raise type(error)(f"run {label!r}: {error}") from None
        _check_run(label, estimators[label])
    return estimators


def _persisted(X: Any, y: Any, client: Any) -> tuple[Any, Any]:
    """X and y computed once on the cluster, so that every run reads the same chunks."""
    import dask.array as da

    if client is None or not (isinstance(X, da.Array) and isinstance(y, da.Array)):
        return X, y
    return client.persist([X, y])


def _copy(estimator: Any, **changes: Any) -> Any:
    """A new unfitted estimator with the same parameters but ``changes``.

    Not ``sklearn.base.clone``: it deep-copies parameters, and a Client cannot be copied.
    """
    params = {**estimator.get_params(deep=False), **changes}
    return type(estimator)(**params)


def _warm_up(first: Any, X: Any, y: Any) -> None:
    from daskgd.estimators.base import ConvergenceWarning

    # the client and workers of the runs, with the default strategy and no emulation
    estimator = _copy(
        first, strategy="mapreduce", emulation=None, transfer_dtype="float64", max_iter=1
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator.fit(X, y)


#: Seconds a run waits for the workers an emulated failure killed to come back.
RECOVERY_SECONDS = 60.0


def _recovery(client: Any, emulation: Any, timeout: float | None) -> Callable[[], None]:
    """Before each run: with emulated failures, wait (bounded) until the cluster has
    its workers again, so that every run starts on as many workers as the first.

    The nanny restarts a killed worker under a new address, so the runs after a failure
    place the chunks anew and the emulation's worker indices name the sorted addresses
    of that moment.
    """
    if client is None or emulation is None or not emulation.failures:
        return lambda: None
    expected = len(waits.scheduler_workers(client, what="counting the workers"))
    bound = max(timeout or 0.0, RECOVERY_SECONDS)

    def wait() -> None:
        try:
            client.wait_for_workers(expected, timeout=bound)
        except TimeoutError:
            have = len(waits.scheduler_workers(client, what="counting the workers"))
            raise TimeoutError(
                f"compare: {have} of the {expected} workers came back within {bound:g} s "
                "after an emulated failure; the next run would start on fewer"
            ) from None

    return wait


def _print_progress(done: int, total: int, label: str, trace: xr.Dataset, seconds: float):
    print(
        f"compare [{done}/{total}] {label}: {trace.sizes['iteration'] - 1} iterations in "
        f"{seconds:.2f} s, final loss {float(trace.loss[-1]):.8g}",
        file=sys.stdout,
        flush=True,
    )


def compare(
    strategies: Sequence[Any],
    X: Any,
    y: Any,
    *,
    model: Any = "logistic",
    solver: str = "gd",
    learning_rate: Any = 1.0,
    max_iter: int = 50,
    tol: float = 0.0,
    transfer_dtype: str | None = None,
    timeout: float | None = None,
    emulation: Any = None,
    client: Any = None,
    workers: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    target_loss: float | None = None,
    progress: bool | Callable = True,
    warmup: bool = True,
) -> Comparison:
    """Fit the same model on the same data with each strategy, one after the other.

    Parameters
    ----------
    strategies : sequence
        Each a registered name (``"mapreduce"``), a ``(name, options)`` pair
        (``("parameter-server", {"staleness": 2})``) or a configured Strategy.
    X, y : any input the estimators accept (dask arrays are persisted once first)
    model : {"logistic", "linear", "ridge"} or a daskgd estimator, default "logistic"
        By name: that estimator with ``solver`` and ``learning_rate``; an estimator
        given is cloned with its own parameters (its strategy replaced per run).
    solver, learning_rate : default "gd" and 1.0 (a fixed step: see the module doc)
    max_iter, tol : default 50 and 0 (tol 0: every run takes max_iter updates)
    transfer_dtype, timeout : optional
        The estimator parameters for every run (default: the estimator's).
    emulation : daskgd.runtime.emulation.Emulation, optional
        The same emulated network, stragglers and failures for every run.
    client : distributed.Client, optional
        Default: the active client.
    workers : sequence of str, optional
        Place the data on these workers only (see :func:`daskgd.data.distribute`).
    labels : sequence of str, optional
        One per entry, distinct (default: the names with their options).
    target_loss : float, optional
        The summary's target (default: the largest of the runs' best losses).
    progress : bool or callable, default True
        Print one line per finished run, or call ``progress(done, total, label, trace,
        seconds)``.
    warmup : bool, default True
        Fit once (mapreduce, one update, no emulation, discarded) before the runs, so
        that the first run does not pay alone for what every worker process does once
        (compiling the chunk kernels: the first of four 15-update runs took 33 s
        against 0.4-0.9 s for the others, 2 workers, load 8).

    Returns
    -------
    Comparison
        label -> trace, with ``estimators``, ``summary()`` and ``write_report(path)``.
    """
    from daskgd.data import current_client
    from daskgd.estimators.base import ConvergenceWarning

    client = current_client(client)
    setup = {"model": model, "solver": solver, "learning_rate": learning_rate,
             "max_iter": max_iter, "tol": tol, "transfer_dtype": transfer_dtype,
             "timeout": timeout, "labels": labels, "workers": workers}  # fmt: skip
    estimators = prepare_runs(strategies, emulation=emulation, client=client, **setup)
    report = _print_progress if progress is True else (progress or None)
    X, y = _persisted(X, y, client)
    if warmup:
        _warm_up(next(iter(estimators.values())), X, y)
    traces: dict[str, xr.Dataset] = {}
    total = len(estimators)
    recover = _recovery(client, emulation, timeout)
    for done, (label, estimator) in enumerate(estimators.items(), start=1):
        recover()
        start = time.perf_counter()
        with warnings.catch_warnings():
            # tol=0 asks for max_iter updates: stopping there is the plan, not a failure
            if tol == 0:
                warnings.simplefilter("ignore", ConvergenceWarning)
            estimator.fit(X, y)
        trace = estimator.trace_.assign_attrs(compare_label=label)
        traces[label] = trace
        if report is not None:
            report(done, total, label, trace, time.perf_counter() - start)
    return Comparison(traces, estimators, target_loss)
