"""The WorkerPlugin of the worker-resident runtime: handlers that host a run's residents.

:class:`RuntimePlugin` is registered once per cluster (``idempotent``: a second
registration under :data:`PLUGIN_NAME` does nothing, and workers that join later, such as
a killed worker's replacement, get it from the scheduler). Its ``setup`` adds these
handlers to the worker's ``handlers`` (the pattern of distributed's P2P shuffle,
``distributed/shuffle/_worker_plugin.py``), reached by the client and by peers through
``rpc(address).<name>(...)`` over distributed's pooled connections:

``daskgd_create(spec)``
    Build (or rebuild, for a new attempt) the :class:`~daskgd.runtime.resident.Resident`
    of ``spec.run_id`` on this worker from the chunks it holds.
``daskgd_evaluate(run_id, attempt, w, blocks)``
    The resident's packed partial sum at w, computed in a worker thread.
``daskgd_call(run_id, attempt, call, job)``
    ``function(resident, *args, **kwargs)`` in a worker thread, the event loop staying
    free to carry the messages the function sends and awaits.
``daskgd_message(run_id, attempt, call, tag, ...)``
    A vector from a peer resident (sent one way, no reply), filed in the resident's
    mailbox after the emulated latency and bandwidth, when the run has an emulation.
``daskgd_abort(run_id, attempt, call, reason)``
    Wake the call's waits with :class:`~daskgd.runtime.messaging.CallAbortedError`.
``daskgd_peek(run_id, job)``
    ``function(resident, *args)`` on the worker's event loop, beside a running call (whose
    thread it does not wait for): a quick read of what the call keeps in the resident's
    state, or a flag it reads (a parameter server's progress, a stop). It must not block.
``daskgd_drop(run_id)`` / ``daskgd_runs()``
    Forget a run (chunk references, state, mailbox) / list the runs present.

Handlers answer ``{"status": "OK", ...}`` or distributed's ``error_message`` (the
exception and its traceback, re-raised on the client), so expected failures (a
resident rebuilt elsewhere, a peer lost) are not logged as handler crashes.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from distributed import WorkerPlugin

from daskgd.runtime.codecs import from_wire, to_wire
from daskgd.runtime.messaging import (
    CallAbortedError,
    ChunkMissingError,
    Message,
    ResidentMissingError,
)
from daskgd.runtime.resident import Resident, ResidentSpec

__all__ = ["HANDLERS", "PLUGIN_NAME", "RuntimePlugin"]

PLUGIN_NAME = "daskgd-runtime"
HANDLERS = (
    "daskgd_create",
    "daskgd_evaluate",
    "daskgd_call",
    "daskgd_message",
    "daskgd_abort",
    "daskgd_peek",
    "daskgd_drop",
    "daskgd_runs",
)
#: Pause between two tries to fetch a block from a peer that answered "busy".
_BUSY_RETRY_SECONDS = 0.05


class RuntimePlugin(WorkerPlugin):
    """Hosts the residents of every daskgd run on a worker (see the module docstring)."""

    idempotent = True
    name = PLUGIN_NAME

    def setup(self, worker: Any) -> None:
        self.worker = worker
        self.residents: dict[str, Resident] = {}
        self.stale_messages = 0
        for name in HANDLERS:
            worker.handlers[name] = getattr(self, name[len("daskgd_") :])

    def teardown(self, worker: Any) -> None:
        for name in HANDLERS:
            worker.handlers.pop(name, None)
        for resident in self.residents.values():
            resident.close("the daskgd runtime plugin was removed from the worker")
        self.residents.clear()

    def _resident(self, run_id: str, attempt: int) -> Resident:
        resident = self.residents.get(run_id)
        if resident is None or resident.attempt != attempt:
            have = "none" if resident is None else f"attempt {resident.attempt}"
            raise ResidentMissingError(
                f"no resident of run {run_id} attempt {attempt} on {self.worker.address} "
                f"(have {have})"
            )
        return resident

    async def _in_thread(self, function: Any, *args: Any) -> Any:
        """Run in the worker's own executor: the thread tasks run in, sized by nthreads."""
        from distributed.utils import run_in_executor_with_context

        executor = self.worker.executors["default"]
        return await run_in_executor_with_context(executor, function, *args)

    # -- handlers --------------------------------------------------------------------------

    async def create(self, spec: ResidentSpec) -> dict:
        from distributed.core import error_message

        try:
            chunks, fetched = await self._chunks(spec)
        except ChunkMissingError as error:
            return dict(error_message(error))
        worker = self.worker
        resident = Resident(
            spec, chunks, address=worker.address, loop=worker.loop.asyncio_loop, rpc=worker.rpc
        )
        previous = self.residents.get(spec.run_id)
        if previous is not None:  # a rebuild: the strategy's state stays on this worker
            resident.state = previous.state
            previous.state = {}
            previous.close(f"rebuilt as attempt {spec.attempt}")
        self.residents[spec.run_id] = resident
        return {"status": "OK", "fetched_bytes": fetched}

    async def _chunks(self, spec: ResidentSpec) -> tuple[dict, int]:
        """{block: (X, y)} from this worker's memory (fetching what ``spec.fetch`` says)."""
        data, chunks, fetched = self.worker.data, {}, 0
        for block, keys in zip(spec.blocks, spec.keys, strict=True):
            pair = []
            for key in keys:
                if key in data:
                    pair.append(data[key])
                elif key in spec.fetch:
                    value = await self._fetch(key, spec.fetch[key], spec.timeout)
                    fetched += int(getattr(value, "nbytes", 0))
                    pair.append(value)
                else:
                    raise ChunkMissingError(
                        f"chunk {block} (key {key!r}) is not in memory on {self.worker.address}"
                    )
            chunks[block] = tuple(pair)
        return chunks, fetched

    async def _fetch(self, key: Any, holder: str, timeout: float) -> Any:
        """One block from a peer through distributed's own ``get_data`` handshake."""
        from distributed.worker import get_data_from_worker

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                response: Any = await asyncio.wait_for(
                    get_data_from_worker(self.worker.rpc, [key], holder, who=self.worker.address),
                    max(deadline - time.monotonic(), 0.001),
                )
            except (OSError, asyncio.TimeoutError) as error:
                raise ChunkMissingError(f"could not fetch {key!r} from {holder}: {error}") from None
            if response.get("status") == "OK" and key in response.get("data", {}):
                return response["data"][key]
            if response.get("status") != "busy":
                break
            await asyncio.sleep(_BUSY_RETRY_SECONDS)
        raise ChunkMissingError(f"{holder} did not serve {key!r} within {timeout:g} s")

    async def evaluate(self, run_id: str, attempt: int, w: Any, blocks: Any = None) -> dict:
        from distributed.core import error_message

        start = time.perf_counter()
        try:
            resident = self._resident(run_id, attempt)
            w = from_wire(w)
            delayed = await self._emulate(resident, w.nbytes)  # w's trip out
            partial, measures = await self._in_thread(resident.serve_evaluate, w, blocks)
            delayed += await self._emulate(resident, partial.nbytes)  # the partial's trip back
        except Exception as error:  # noqa: BLE001 - re-raised on the client
            return dict(error_message(error))
        measures["communication_seconds"] += delayed
        measures["handler_seconds"] = time.perf_counter() - start
        return {"status": "OK", "partial": to_wire(partial), "measures": measures}

    async def call(self, run_id: str, attempt: int, call: int, job: bytes) -> dict:
        """``job`` is ``(function, args, kwargs)`` pickled once by the client for all workers;
        the result comes back pickled (bytes travel inside the message, no extra frames)."""
        from distributed.core import error_message
        from distributed.protocol import pickle

        start = time.perf_counter()
        try:
            resident = self._resident(run_id, attempt)
            function, args, kwargs = pickle.loads(job)
            result, measures = await self._in_thread(
                resident.serve_call, call, function, args, kwargs
            )
            result = pickle.dumps(result)
        except Exception as error:  # noqa: BLE001 - re-raised on the client
            return dict(error_message(error))
        measures["handler_seconds"] = time.perf_counter() - start
        return {"status": "OK", "result": result, "measures": measures}

    async def message(
        self,
        run_id: str,
        attempt: int,
        call: int,
        tag: Any,
        source: str,
        n_values: int,
        exact: bool,
        sent_at: float,
        payload: Any,
        seq: int = 0,
    ) -> None:
        resident = self.residents.get(run_id)
        if resident is None or resident.attempt != attempt:
            self.stale_messages += 1  # a failed attempt's late message: harmless
            return
        payload = from_wire(payload)
        await self._emulate(resident, payload.nbytes)
        message = Message(payload, int(n_values), bool(exact), source, sent_at, time.time(), seq)
        resident.deliver(call, tag, message)

    async def abort(self, run_id: str, attempt: int, call: int, reason: str) -> dict:
        resident = self.residents.get(run_id)
        if resident is not None and resident.attempt == attempt:
            resident.mailbox.abort(call, CallAbortedError(reason))
        return {"status": "OK"}

    async def peek(self, run_id: str, job: bytes) -> dict:
        """``job`` is ``(function, args)`` pickled by the client; run on the event loop, so
        it sees the resident's state between two of the loop's steps (a coroutine's state
        is consistent there), whichever attempt of the run the resident belongs to."""
        from distributed.core import error_message
        from distributed.protocol import pickle

        try:
            resident = self.residents.get(run_id)
            if resident is None:
                raise ResidentMissingError(f"no resident of run {run_id} on {self.worker.address}")
            function, args = pickle.loads(job)
            result = pickle.dumps(function(resident, *args))
        except Exception as error:  # noqa: BLE001 - re-raised on the client
            return dict(error_message(error))
        return {"status": "OK", "result": result}

    async def drop(self, run_id: str) -> dict:
        resident = self.residents.pop(run_id, None)
        if resident is not None:
            resident.close(f"run {run_id} ended")
        return {"status": "OK", "dropped": resident is not None}

    async def runs(self) -> dict:
        """What this worker holds, per run: attempt, blocks, unread messages, state keys."""
        return {
            "status": "OK",
            "stale_messages": self.stale_messages,
            "runs": {
                run_id: {
                    "attempt": resident.attempt,
                    "rank": resident.rank,
                    "blocks": list(resident.blocks),
                    "unread_messages": len(resident.mailbox),
                    "state_keys": sorted(map(str, resident.state)),
                }
                for run_id, resident in self.residents.items()
            },
        }

    @staticmethod
    async def _emulate(resident: Resident, nbytes: int) -> float:
        """Sleep (on the event loop) the emulated transit of ``nbytes``; return it."""
        if resident.emulation is None or not resident.emulation.network:
            return 0.0
        seconds = resident.emulation.message_seconds(nbytes)
        await asyncio.sleep(seconds)
        return seconds
