"""``direct``: the synchronous client-server iteration with no scheduler in the loop.

The client sends w to every worker holding chunks at once, straight through
distributed's connection pools; each worker's resident object (:mod:`daskgd.runtime`)
sums its own chunks, which it keeps in memory, and answers; the client adds the
partial sums in a fixed order and takes the optimizer step. The same sums as
``mapreduce``, without the graph: one round trip per evaluation instead of the
scheduler's task hops (~20 ms there).

``backup_workers=b`` (Chen et al. 2016, "Revisiting distributed synchronous SGD") waits
for the first m - b partial sums only. The late workers' rows are accounted for by
their most recent partial sum (aggregated gradient with bounded delay: IAG, Blatt,
Hero & Gauchman 2007), which they keep sending when it is done, so no shard is ever
dropped: with a fixed straggler the gradient is the exact one at a w a few steps old
for that shard, and at the optimum, where w stops moving, the aggregate is the full
gradient. The staleness of each worker's contribution is recorded in the trace.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from daskgd.engine.steps import Evaluation
from daskgd.models.losses import unpack
from daskgd.optim.base import Optimizer
from daskgd.runtime.codecs import Codec
from daskgd.strategies.base import Capabilities, FitProblem, register_strategy
from daskgd.strategies.mapreduce import top_gram_eigenvalue
from daskgd.strategies.synchronous import SynchronousStrategy

#: Default bound in seconds on every wait of the runtime (an rpc, a rebuild).
DEFAULT_TIMEOUT_SECONDS = 30.0


def _check_timeout(timeout: Any) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


class ResidentStrategy(SynchronousStrategy):
    """Base of the synchronous strategies on the worker-resident runtime."""

    self_measured = True

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        transfer_dtype: str | Codec | None = None,
        emulation: Any = None,
        tune_cluster: bool = True,
    ):
        super().__init__(
            transfer_dtype=transfer_dtype, emulation=emulation, tune_cluster=tune_cluster
        )
        self.timeout = _check_timeout(timeout)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "timeout_seconds": self.timeout}


class ResidentSession:
    """A resident strategy bound to one fit: the runtime's residents live with it."""

    topology = "direct"

    def __init__(self, strategy: ResidentStrategy, problem: FitProblem):
        if problem.data.client is None or not problem.data.placement:
            raise ValueError(
                f"strategy {strategy.name!r} needs a distributed client (its workers keep "
                "the data and compute on it); without one, use strategy='mapreduce'"
            )
        self.strategy = strategy
        self.problem = problem
        self.client = problem.data.client
        self.n_blocks = problem.data.n_chunks
        self.n_params = problem.n_params
        self._stack = contextlib.ExitStack()
        self.runtime: Any = None

    def __enter__(self) -> ResidentSession:
        from daskgd.runtime.handle import Runtime

        problem = self.problem
        self.runtime = Runtime(
            self.client,
            problem.data,
            problem.model,
            problem.fit_intercept,
            codec=self.strategy.codec,
            emulation=self.strategy.emulation,
            timeout=self.strategy.timeout,
        )
        self._stack.enter_context(self.runtime)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stack.close()

    def describe(self) -> dict[str, Any]:
        return {"topology": self.topology, "run_id": self.runtime.run_id}

    def top_gram_eigenvalue(self) -> float:
        """The same estimate as ``mapreduce``'s: from placement's sketch of the Gram matrix."""
        return top_gram_eigenvalue(
            self.problem.data, self.problem.fit_intercept, self.client, self.strategy.timeout
        )


def evaluation_from(total: np.ndarray, measures: Any, prefix: str) -> Evaluation:
    loss_sum, grad_sum, n_rows = unpack(total)
    return Evaluation(
        loss_sum,
        grad_sum,
        n_rows,
        float(measures.wall_seconds),
        int(measures.attempts),
        prefix,
        measures=dict(measures),
    )


@register_strategy
class Direct(ResidentStrategy):
    """Synchronous client-server on the resident runtime: w to all workers at once, sums back.

    Parameters
    ----------
    backup_workers : int, default=0
        Wait for the first m - b partial sums of each evaluation only; the late ones'
        latest sums stand in for them (see the module docstring). Needs a solver without
        line search ('gd' with a numeric learning_rate, 'nesterov', 'sgd') and b < m.
    timeout : float, default=30
        Bound in seconds on every wait on the cluster (an rpc, a rebuild after a lost
        worker); when it passes the fit stops with an error naming what did not answer.
    transfer_dtype, emulation, tune_cluster
        As for every strategy (:class:`daskgd.strategies.Strategy`).
    """

    name = "direct"

    def __init__(
        self,
        *,
        backup_workers: int = 0,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        transfer_dtype: str | Codec | None = None,
        emulation: Any = None,
        tune_cluster: bool = True,
    ):
        if (
            isinstance(backup_workers, bool)
            or not isinstance(backup_workers, int)
            or (backup_workers < 0)
        ):
            raise ValueError(f"backup_workers must be an integer >= 0, got {backup_workers!r}")
        super().__init__(
            timeout=timeout,
            transfer_dtype=transfer_dtype,
            emulation=emulation,
            tune_cluster=tune_cluster,
        )
        self.backup_workers = backup_workers

    @property
    def capabilities(self) -> Capabilities:
        exact = self.codec.is_exact and self.backup_workers == 0
        synchronous = self.backup_workers == 0
        return Capabilities(exact_sums=exact, line_search=synchronous, mini_batches=synchronous)

    def check(self, optimizer: Optimizer, *, n_workers: int | None = None) -> None:
        super().check(optimizer, n_workers=n_workers)
        if self.backup_workers and optimizer.name != "gd":
            raise ValueError(
                f"solver {optimizer.name!r} with strategy 'direct' and backup_workers: only "
                "'gd' with a numeric learning_rate takes delayed sums (momentum and line "
                "searches assume every sum is at the current w)"
            )
        if self.backup_workers and n_workers is not None and self.backup_workers >= n_workers:
            raise ValueError(
                f"backup_workers={self.backup_workers} must be less than the number of "
                f"workers holding data ({n_workers})"
            )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "backup_workers": self.backup_workers}

    def session(self, problem: FitProblem) -> DirectSession:
        return DirectSession(self, problem)


class DirectSession(ResidentSession):
    topology = "direct"

    def __init__(self, strategy: Direct, problem: FitProblem):
        super().__init__(strategy, problem)
        self.backup_workers = strategy.backup_workers
        self.first_arrivals: Any = None

    def __enter__(self) -> DirectSession:
        super().__enter__()
        if self.backup_workers:
            from daskgd.runtime.backups import FirstArrivals

            needed = len(self.runtime.workers) - self.backup_workers
            self.first_arrivals = FirstArrivals(self.runtime, max(needed, 1))
            self._stack.callback(self.first_arrivals.close)
        return self

    def evaluate(self, w: np.ndarray, blocks: Sequence[int] | None = None) -> Evaluation:
        if self.first_arrivals is None:
            total, measures = self.runtime.evaluate(w, blocks)
        else:
            total, measures = self.first_arrivals.evaluate(w)
        return evaluation_from(total, measures, self.runtime.run_id)
