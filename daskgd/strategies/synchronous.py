"""The synchronous strategies' shared ``run``: open a session, give the driver a stepper.

A session binds a strategy to placed data and a model for one fit (a context manager:
cluster tuning, emulation plugins, resident objects are set up and torn down with it).
It offers ``evaluate(w, blocks) -> Evaluation``, ``n_blocks``, ``top_gram_eigenvalue()``
and ``describe()``. By default the optimizer step runs on the client over
``session.evaluate`` (:class:`daskgd.engine.driver.ClientStepper`); a strategy whose
workers take the step themselves (``allreduce``) returns its own stepper.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from daskgd.engine.callbacks import Callback
from daskgd.engine.driver import ClientStepper, FitResult, Stepper, Stopping, run
from daskgd.engine.sampling import resolve_seed
from daskgd.models.objective import Objective
from daskgd.optim.base import Optimizer
from daskgd.strategies.base import FitProblem, Strategy, objective_for


class SynchronousStrategy(Strategy):
    """A strategy whose every step uses the sums of all workers at one w."""

    def session(self, problem: FitProblem) -> Any:
        """The context manager that binds this strategy to ``problem`` for one fit."""
        raise NotImplementedError

    def stepper(
        self,
        session: Any,
        optimizer: Optimizer,
        objective: Objective,
        w0: np.ndarray,
        seed: int,
    ) -> Stepper:
        return ClientStepper(
            session.evaluate, optimizer, objective, w0, n_blocks=session.n_blocks, seed=seed
        )

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
        placement = problem.data.placement
        self.check(optimizer, n_workers=len(set(placement)) if placement else None)
        w0, seed = problem.start(), resolve_seed(seed)
        with self.session(problem) as session:
            objective = objective_for(problem, session.top_gram_eigenvalue)
            stepper = self.stepper(session, optimizer, objective, w0, seed)
            if hasattr(stepper, "bind"):  # a stepper that takes several steps per request
                stepper.bind(stopping)
            info = {**(info or {}), **self.describe(), **session.describe()}
            info["loss_rows"] = "mini-batch" if optimizer.stochastic else "all"
            result = run(stepper, stopping=stopping, callbacks=callbacks, info=info)
            result.session_report = getattr(session, "report", dict)()
            return result
