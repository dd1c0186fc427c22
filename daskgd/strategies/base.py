"""What a strategy is: the recipe for who computes, who talks to whom, who updates w.

    result = strategy.run(problem, optimizer, stopping, callbacks, info=..., seed=...)

A strategy owns its loop. The synchronous ones (``mapreduce``, ``direct``,
``allreduce``) share one driver, :func:`daskgd.engine.driver.run`, and differ in the
stepper they give it; asynchronous and decentralised ones run loops of their own on the
workers and report steps as events. Each declares its :class:`Capabilities`, and
:meth:`Strategy.check` rejects an optimizer it cannot host before anything starts.
Strategies are chosen by name only at the edges (estimators' ``strategy=``, the CLI's
``--strategy``) through :data:`STRATEGIES`, which also feeds the CLI's choices.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from daskgd.engine.callbacks import Callback
from daskgd.engine.driver import FitResult, Stopping
from daskgd.models.losses import Model
from daskgd.models.objective import Objective
from daskgd.models.penalties import Penalty
from daskgd.optim.base import Optimizer
from daskgd.runtime.codecs import Codec, get_codec

if TYPE_CHECKING:
    from daskgd.data.placement import DistributedData


@dataclass(frozen=True)
class Capabilities:
    """What a strategy offers an optimizer and a user.

    Attributes
    ----------
    synchronous : bool
        Every step uses the sums of all the data at one w (a global iteration).
    exact_sums : bool
        The sums are the full-data sums (no lossy codec, no dropped workers).
    line_search : bool
        Extra points can be evaluated within a step (``value_fn`` for gd's
        backtracking, lbfgs's line search).
    client_update : bool
        The optimizer step runs on the client.
    replicated_w : bool
        Every worker holds w and takes the same optimizer step.
    mini_batches : bool
        A step can be evaluated on a subset of the chunks (sgd).
    """

    synchronous: bool = True
    exact_sums: bool = True
    line_search: bool = True
    client_update: bool = True
    replicated_w: bool = False
    mini_batches: bool = True


@dataclass(frozen=True)
class FitProblem:
    """What is minimised: placed data, a model, a penalty, and the starting point."""

    data: DistributedData
    model: Model
    fit_intercept: bool
    penalty: Penalty
    w0: np.ndarray | None = None

    @property
    def n_params(self) -> int:
        return self.model.n_params(self.data.n_features, self.fit_intercept)

    @property
    def mask(self) -> np.ndarray:
        return self.model.penalty_mask(self.data.n_features, self.fit_intercept)

    def start(self) -> np.ndarray:
        w0 = np.zeros(self.n_params) if self.w0 is None else np.asarray(self.w0, np.float64)
        if w0.shape != (self.n_params,):
            raise ValueError(f"w0 must have shape ({self.n_params},), got {w0.shape}")
        return w0


class Strategy:
    """Base class of the strategies (a configuration only; :meth:`run` does the work).

    Parameters common to every strategy
    ------------------------------------
    transfer_dtype : str or Codec, default='float64'
        Codec of the vectors on the network (:mod:`daskgd.runtime.codecs`).
    emulation : daskgd.runtime.emulation.Emulation or None
        Network delays and stragglers applied inside the workers during the fit.
    tune_cluster : bool, default=True
        Shorten ``distributed``'s message batching and pause work stealing during the
        fit (:func:`daskgd.runtime.tuning.tune_for_iterations`); restored afterwards.
    """

    name: ClassVar[str] = "strategy"
    #: The workers time their own compute, communication and waits and count their
    #: bytes (resident strategies); otherwise distributed's records are read.
    self_measured: ClassVar[bool] = False
    #: The strategy applies ``emulation.failures`` itself, inside its loop (the
    #: estimator then adds no FailureInjector callback).
    injects_failures: ClassVar[bool] = False

    def __init__(
        self,
        *,
        transfer_dtype: str | Codec | None = None,
        emulation: Any = None,
        tune_cluster: bool = True,
    ):
        if not isinstance(tune_cluster, bool):
            raise TypeError(f"tune_cluster must be True or False, got {tune_cluster!r}")
        self.codec = get_codec(transfer_dtype)
        self.emulation = emulation
        self.tune_cluster = tune_cluster

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(exact_sums=self.codec.is_exact)

    def check(self, optimizer: Optimizer, *, n_workers: int | None = None) -> None:
        """Raise ValueError when this strategy cannot run ``optimizer`` (or on n_workers)."""
        capabilities = self.capabilities
        if optimizer.line_search and not capabilities.line_search:
            raise ValueError(
                f"solver {optimizer.name!r} needs a line search, which strategy "
                f"{self.name!r} cannot offer; use solver='gd' with a numeric learning_rate, "
                "or 'sgd'"
            )
        if optimizer.stochastic and not capabilities.mini_batches:
            raise ValueError(
                f"solver {optimizer.name!r} draws mini-batches, which strategy "
                f"{self.name!r} does not support"
            )

    def describe(self) -> dict[str, Any]:
        """The strategy's resolved configuration, for the trace attrs."""
        return {"strategy": self.name, "transfer_dtype": self.codec.name}

    def run(
        self,
        problem: FitProblem,
        optimizer: Optimizer,
        stopping: Stopping,
        callbacks: Sequence[Callback] = (),
        *,
        info: dict | None = None,
        seed: int | None = None,
    ) -> FitResult:
        raise NotImplementedError

    def __repr__(self) -> str:
        options = ", ".join(
            f"{key}={value!r}" for key, value in vars(self).items() if not key.startswith("_")
        )
        return f"{type(self).__name__}({options})"


def objective_for(problem: FitProblem, top_gram_eigenvalue: Any) -> Objective:
    """The problem's objective; its Lipschitz estimate is asked of the data when needed."""
    model = problem.model
    return Objective(
        problem.penalty,
        problem.mask,
        lipschitz_fn=lambda: model.curvature * float(top_gram_eigenvalue()),
    )


#: The built-in strategies: name -> (module, one line for ``--help``). Their modules are
#: imported on first use, so ``daskgd --help`` does not pay for dask and distributed.
BUILTIN_STRATEGIES: dict[str, tuple[str, str]] = {
    "mapreduce": (
        "daskgd.strategies.mapreduce",
        "w to every worker, map_blocks, da.sum tree, update on the client (default)",
    ),
    "direct": (
        "daskgd.strategies.direct",
        "w straight to every worker's resident object, sums straight back; no scheduler",
    ),
    "allreduce": (
        "daskgd.strategies.allreduce",
        "ring all-reduce among the workers, each takes the same optimizer step",
    ),
    "gossip": (
        "daskgd.strategies.gossip",
        "every worker keeps its own w and averages it with its neighbours (D-PSGD)",
    ),
    "local-sgd": (
        "daskgd.strategies.localsgd",
        "local steps on every worker, the models averaged (all-reduce) every H steps",
    ),
    "parameter-server": (
        "daskgd.strategies.paramserver",
        "a server on one worker; workers pull w and push sums (sync, SSP or async: staleness)",
    ),
}

#: name -> strategy class, for strategies registered with :func:`register_strategy`.
_REGISTERED: dict[str, type[Strategy]] = {}


class _Registry(Mapping):
    """The strategies by name: the built-in ones (imported when asked for) and any
    registered with :func:`register_strategy`. Iterating gives the sorted names."""

    def _names(self) -> list[str]:
        return sorted({*BUILTIN_STRATEGIES, *_REGISTERED})

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __contains__(self, name: object) -> bool:
        return name in BUILTIN_STRATEGIES or name in _REGISTERED

    def __getitem__(self, name: str) -> type[Strategy]:
        if name not in _REGISTERED and name in BUILTIN_STRATEGIES:
            import_module(BUILTIN_STRATEGIES[name][0])
        return _REGISTERED[name]

    def summary(self, name: str) -> str:
        """The one-line description of a built-in strategy ('' for others)."""
        return BUILTIN_STRATEGIES[name][1] if name in BUILTIN_STRATEGIES else ""


STRATEGIES = _Registry()


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make a strategy available by its ``name``."""
    if cls.name in _REGISTERED and _REGISTERED[cls.name] is not cls:
        raise ValueError(f"a strategy named {cls.name!r} is already registered")
    _REGISTERED[cls.name] = cls
    return cls


def get_strategy(name: str | Strategy, **options: Any) -> Strategy:
    """A configured strategy by name (or the given one, when no options are given)."""
    if isinstance(name, Strategy):
        if options:
            raise ValueError(
                f"options {sorted(options)} given with a configured strategy {name!r}: "
                "pass them to get_strategy(name, ...) instead"
            )
        return name
    if not isinstance(name, str) or name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {list(STRATEGIES)}")
    return STRATEGIES[name](**options)
