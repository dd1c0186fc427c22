"""Backup workers: an evaluation that waits for the first m - b partial sums only.

Chen et al. (2016, "Revisiting distributed synchronous SGD") run m + b workers and use
the first m gradients of each step, so a step costs the (m)-th fastest worker's time,
not the slowest's. With full-batch gradients and a fixed straggler, dropping the late
sums would drop the same rows every step and the fit would converge to the optimum of
the other rows. Here a late worker's rows are accounted for by its most recent partial
sum instead (an aggregated gradient with bounded delay, IAG: Blatt, Hero & Gauchman
2007, SIAM J. Optim. 18(1)): its request keeps running, and when it answers, its sum
replaces the previous one. A worker is sent a new w only when it has answered the
last, so a straggler never queues work, and every worker has answered once (the first
evaluation waits for all) before any sum is reused. At a fixed point of the iteration
every sum is evaluated at the same w, so the fixed point is the full-data optimum.
The staleness (in evaluations) of every worker's sum is returned with its measures.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from daskgd.runtime.codecs import decode_partial, from_wire, to_wire


class FirstArrivals:
    """Evaluations over a :class:`daskgd.runtime.handle.Runtime` that use the first
    ``needed`` answers and the latest sums of the others."""

    def __init__(self, runtime: Any, needed: int):
        if not 1 <= needed <= len(runtime.workers):
            raise ValueError(
                f"needed must be between 1 and the {len(runtime.workers)} workers, got {needed}"
            )
        self.runtime = runtime
        self.needed = needed
        self.step = 0
        self._latest: dict[str, tuple[np.ndarray, int]] = {}
        self._running: dict[str, asyncio.Task] = {}
        self._steps: dict[str, int] = {}
        self._attempt = runtime.attempt

    def evaluate(self, w: np.ndarray) -> tuple[np.ndarray, Any]:
        """Packed totals at w (late workers' rows from their latest sums), and measures."""
        runtime = self.runtime
        w = runtime._check_w(w)
        payload = runtime.codec.encode(w) if runtime.codec.compresses_w else w
        return runtime.client.sync(runtime._with_retries, self._once, payload)

    def close(self) -> None:
        """Cancel the requests still running (their residents are dropped with the run)."""
        for task in self._running.values():
            task.cancel()
        self._running.clear()

    async def _once(self, payload: np.ndarray) -> tuple[np.ndarray, dict]:
        runtime = self.runtime
        self.step += 1
        workers = runtime.workers
        if runtime.attempt != self._attempt:  # rebuilt after a lost worker: a new attempt
            self.close()
            self._attempt = runtime.attempt
        self._forget_gone(workers)
        message = {"run_id": runtime.run_id, "attempt": runtime.attempt, "w": to_wire(payload),
                   "blocks": None}  # fmt: skip
        for address in workers:
            if address not in self._running:
                self._send(address, message)
        answered = await self._wait(workers, message)
        total = np.zeros(runtime.n_params + 2)
        measures = {}
        for address in workers:  # ring order: the same order of additions every time
            partial, step = self._latest[address]
            total += partial
            measures[address] = dict(answered.get(address, {}), staleness=self.step - step)
        return total, measures

    def _send(self, address: str, message: dict) -> None:
        runtime = self.runtime
        self._running[address] = asyncio.ensure_future(
            runtime._rpc(address, "daskgd_evaluate", runtime.timeout, **message)
        )
        self._steps[address] = self.step

    async def _wait(self, workers: tuple[str, ...], message: dict) -> dict[str, dict]:
        """Wait until ``needed`` workers answered this step's w and every one ever did.

        A late answer to an earlier w replaces that worker's sum but does not count.
        """
        answered: dict[str, dict] = {}
        deadline = time.monotonic() + self.runtime.timeout

        def fresh() -> int:
            return sum(1 for a in answered if self._latest[a][1] == self.step)

        while fresh() < self.needed or any(a not in self._latest for a in workers):
            pending = [task for task in self._running.values() if not task.done()]
            finished = [a for a, task in self._running.items() if task.done()]
            if not finished:
                left = deadline - time.monotonic()
                if left <= 0 or not pending:
                    raise TimeoutError(
                        f"fewer than {self.needed} workers answered within "
                        f"{self.runtime.timeout:g} s"
                    )
                await asyncio.wait(pending, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                continue
            for address in finished:
                task = self._running.pop(address)
                try:
                    reply, round_trip = task.result()
                except Exception as error:  # noqa: BLE001 - lost workers: rebuild and retry
                    raise await self.runtime._classify({address: error}) from None
                self._latest[address] = (self._partial(reply), self._steps[address])
                answered[address] = dict(reply["measures"], round_trip_seconds=round_trip)
                if self._steps[address] != self.step and fresh() < self.needed:
                    self._send(address, message)  # late for an older w: now this one
        return answered

    def _partial(self, reply: dict) -> np.ndarray:
        partial = from_wire(reply["partial"])
        runtime = self.runtime
        if not runtime.codec.is_exact:
            partial = decode_partial(partial, runtime.codec, runtime.n_params)
        return np.asarray(partial, dtype=np.float64)

    def _forget_gone(self, workers: tuple[str, ...]) -> None:
        """After a rebuild: requests and sums of residents that are no more are dropped."""
        for address in [a for a in self._running if a not in workers]:
            self._running.pop(address).cancel()
        for address in [a for a in self._latest if a not in workers]:
            del self._latest[address]
