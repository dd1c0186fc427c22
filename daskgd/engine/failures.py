"""Failure injection: an engine callback that kills workers at chosen iterations."""

from __future__ import annotations

from typing import Any

import numpy as np

from daskgd.data import waits
from daskgd.engine.driver import Callback
from daskgd.runtime.emulation import Emulation, KillAt, KillRandomly, _address, kill_worker


class FailureInjector(Callback):
    """Kills worker processes at the end of chosen iterations (their nannies restart them).

    At most all workers but one are killed at once, so the fit can go on.
    """

    def __init__(
        self, client: Any, emulation: Emulation, *, timeout: float = waits.DEFAULT_TIMEOUT_SECONDS
    ):
        self.client = client
        self.timeout = timeout
        self.failures = emulation.failures
        self.killed: list[tuple[int, str]] = []
        self._rngs = [
            np.random.default_rng(f.seed) if isinstance(f, KillRandomly) else None
            for f in self.failures
        ]

    def on_iteration_end(self, record: Any) -> None:
        workers = sorted(
            waits.call(
                self.client, self.client.scheduler.ncores_running,
                what="choosing the workers to kill", timeout=self.timeout,
            )
        )  # fmt: skip
        victims: list[str] = []
        for failure, rng in zip(self.failures, self._rngs, strict=True):
            if isinstance(failure, KillAt) and failure.iteration == record.iteration:
                try:
                    victims.append(_address(failure.worker, workers))
                except ValueError:
                    continue  # a named worker that is gone (restarted under a new address)
            elif isinstance(failure, KillRandomly) and rng is not None:
                draws = rng.random(len(workers))
                victims += [
                    w for w, u in zip(workers, draws, strict=True) if u < failure.probability
                ]
        victims = sorted(set(victims))[: max(len(workers) - 1, 0)]
        for address in victims:
            kill_worker(self.client, address, timeout=self.timeout)
            self.killed.append((record.iteration, address))
