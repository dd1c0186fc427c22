"""The client's handle on the worker-resident runtime: :class:`Runtime`.

A :class:`Runtime` binds placed data (:class:`daskgd.data.DistributedData`) and a model to
one resident object per worker holding chunks (:mod:`daskgd.runtime.resident`), hosted by
:class:`daskgd.runtime.plugin.RuntimePlugin`. Vectors go straight between the client and
the workers, and between workers, through ``rpc(address).<handler>(...)`` on
distributed's connection pools: no task, no graph, no scheduler in the loop (the
scheduler is asked only where the chunks are, when residents are built or rebuilt).

    with Runtime(client, data, model, fit_intercept=True) as runtime:
        total, measures = runtime.evaluate(w)          # [loss_sum, grad..., n_rows]
        results = runtime.call(step, w)                 # step(resident, w) on every worker

Failures: when a worker dies (its rpc fails, or a peer cannot reach it), the runtime
waits (bounded by ``timeout``) until the scheduler has every chunk back in memory on a
running worker (it recomputes lost chunks from their lineage), builds new residents
where the chunks now are (a new attempt: peers and ring recomputed, late messages of the
old attempt dropped), and sends the request again, at most :data:`MAX_ATTEMPTS` times.
What happened is in the returned :class:`Measures` (attempts, seconds lost, workers lost).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future as ConcurrentFuture
from typing import Any

import dask
import numpy as np

from daskgd.data import waits
from daskgd.models.losses import Model
from daskgd.runtime.codecs import Codec, decode_partial, from_wire, get_codec, to_wire
from daskgd.runtime.measures import Measures, Results, per_worker
from daskgd.runtime.messaging import (
    CallAbortedError,
    ChunkMissingError,
    PeerLostError,
    ResidentMissingError,
)
from daskgd.runtime.plugin import PLUGIN_NAME, RuntimePlugin
from daskgd.runtime.resident import ResidentSpec

__all__ = ["MAX_ATTEMPTS", "Measures", "Results", "Runtime", "RuntimeFailureError"]

#: Requests sent at most this many times when workers are lost under them.
MAX_ATTEMPTS = 4
#: Pause between two looks at the scheduler while lost chunks are recomputed.
PROBE_INTERVAL_SECONDS = 0.05
#: Seconds without an answer after which the scheduler is asked if a worker still runs.
LIVENESS_SECONDS = 1.0
#: Bound on aborting a call and on dropping residents (best effort, at most this long).
CLEANUP_SECONDS = 5.0


class RuntimeFailureError(RuntimeError):
    """The runtime could not complete a request: workers or chunks lost beyond recovery."""


class _RecoverableError(Exception):
    """An attempt failed because workers were lost: rebuild and retry."""

    def __init__(self, lost: set[str], reason: str):
        super().__init__(reason)
        self.lost = set(lost)


class _UnreachableError(Exception):
    def __init__(self, address: str, error: BaseException):
        super().__init__(f"{address}: {type(error).__name__}: {error}")
        self.address = address


class _NoAnswerError(Exception):
    def __init__(self, address: str, timeout: float):
        super().__init__(f"{address} did not answer within {timeout:g} s")
        self.address = address


class _RemoteError(Exception):
    def __init__(self, address: str, error: BaseException):
        super().__init__(f"{address}: {error}")
        self.address = address
        self.error = error


_RECOVERABLE_REMOTE = (ResidentMissingError, ChunkMissingError, PeerLostError, CallAbortedError)


class Runtime:
    """Residents of one run on the workers holding ``data``'s chunks; a context manager.

    Parameters
    ----------
    client : distributed.Client
        A synchronous client of the cluster holding the data.
    data : daskgd.data.DistributedData
        Persisted, placed X and y (``placement`` set: placed with a distributed client).
    model : daskgd.models.Model
    fit_intercept : bool
    codec : str or Codec or None, default=None
        Codec of the vectors on the wire (:mod:`daskgd.runtime.codecs`); None is exact.
    emulation : daskgd.runtime.emulation.Emulation or None
        Latency and bandwidth slept on the receiving side of every vector, stragglers'
        compute slowed; failures stay the engine's job.
    timeout : float, default=30
        Bound in seconds on every wait: an rpc, a ``recv``, a rebuild.
    """

    def __init__(self, client: Any, data: Any, model: Model, fit_intercept: bool, *,
                 codec: str | Codec | None = None, emulation: Any = None,
                 timeout: float = 30.0):  # fmt: skip
        _check_arguments(client, data, model, timeout)
        self.client = client
        self.data = data
        self.model = model
        self.fit_intercept = bool(fit_intercept)
        self.codec = get_codec(codec)
        self.emulation = emulation
        self.timeout = float(timeout)
        self.n_params = model.n_params(data.n_features, self.fit_intercept)
        self.n_blocks = data.n_chunks
        x_keys = list(dask.core.flatten(data.X.__dask_keys__()))
        y_keys = list(dask.core.flatten(data.y.__dask_keys__()))
        self._keys = list(zip(x_keys, y_keys, strict=True))
        self.run_id = f"daskgd-run-{uuid.uuid4().hex[:12]}"
        self.attempt = 0
        self._call_id = 0
        self._workers: tuple[str, ...] = ()
        self._owner: dict[int, str] = {}
        self._ever: set[str] = set()
        self._initial_workers: list[str] = []
        self._slowdowns: dict[str, float] = {}
        # One request at a time: a resident's meter and call number belong to one request.
        # Two Runtimes (two runs) may serve requests side by side.
        self._lock = threading.Lock()

    # -- lifetime --------------------------------------------------------------------------

    def __enter__(self) -> Runtime:
        self._initial_workers = sorted(
            waits.scheduler_workers(self.client, what="listing the workers", timeout=self.timeout)
        )
        if self.emulation is not None:
            self._slowdowns = self.emulation.resolve(self._initial_workers)
        self.client.register_plugin(RuntimePlugin(), name=PLUGIN_NAME)  # once per cluster
        try:
            self.client.sync(self._build, set())
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Drop this run's residents from every worker still running (bounded)."""
        if self.client.status == "running":
            self.client.sync(self._drop_everywhere)
        self._workers, self._owner = (), {}

    @property
    def workers(self) -> tuple[str, ...]:
        """Addresses of the residents, in ring order (by their first block)."""
        return self._workers

    @property
    def owners(self) -> dict[int, str]:
        """``{block: address of the resident holding it}``."""
        return dict(self._owner)

    # -- requests --------------------------------------------------------------------------

    def evaluate(self, w: Any, blocks: Sequence[int] | None = None) -> tuple[np.ndarray, Measures]:
        """Packed totals ``[loss_sum, grad_sum..., n_rows]`` at ``w`` over all chunks or ``blocks``.

        w goes to every resident (holding some of ``blocks``) at once; each returns the sum
        over its chunks, and the client adds them in ring order (deterministic).

        Raises
        ------
        ValueError
            ``w`` not a vector of ``n_params`` values; ``blocks`` empty or naming no chunk.
        RuntimeFailureError
            Workers lost beyond ``MAX_ATTEMPTS`` or chunks not recovered within ``timeout``.
        """
        w = self._check_w(w)
        blocks = self._check_blocks(blocks)
        payload = self.codec.encode(w) if self.codec.compresses_w else w
        with self._lock:
            return self.client.sync(self._with_retries, self._evaluate_once, payload, blocks)

    def call(self, function: Callable, *args: Any, **kwargs: Any) -> Results:
        """``function(resident, *args, **kwargs)`` on every resident at once: {address: result}.

        ``function`` (a module-level function, pickled by reference) runs in a worker
        thread, so the residents' messages keep flowing. It should be safe to run again:
        after a lost worker the call is sent again to rebuilt residents.
        """
        return self.call_with(function, args, kwargs)

    def call_with(self, function: Callable, args: Sequence = (), kwargs: dict | None = None,
                  *, timeout: float | None = None) -> Results:  # fmt: skip
        """:meth:`call` with a bound of its own (e.g. for a long loop on the workers)."""
        if not callable(function):
            raise TypeError(f"function must be callable, got {function!r}")
        bound = self.timeout if timeout is None else _positive_seconds(timeout, "timeout")
        job = (function, tuple(args), dict(kwargs or {}))
        with self._lock:
            results, measures = self.client.sync(self._with_retries, self._call_once, job, bound)
        return Results(results, measures)

    def call_soon(self, function: Callable, args: Sequence = (), kwargs: dict | None = None,
                  *, timeout: float | None = None) -> ConcurrentFuture:  # fmt: skip
        """:meth:`call_with` without waiting: a future of its :class:`Results`. No other
        request (:meth:`peek` excepted) is served until it is done."""
        if not callable(function):
            raise TypeError(f"function must be callable, got {function!r}")
        bound = self.timeout if timeout is None else _positive_seconds(timeout, "timeout")
        job = (function, tuple(args), dict(kwargs or {}))
        outer: ConcurrentFuture = ConcurrentFuture()

        def settle(inner: ConcurrentFuture) -> None:
            self._lock.release()
            try:
                outer.set_result(Results(*inner.result()))
            except BaseException as error:  # noqa: BLE001 - the caller's to see
                outer.set_exception(error)

        self._lock.acquire()
        try:
            coroutine = self._with_retries(self._call_once, job, bound)
            inner = asyncio.run_coroutine_threadsafe(coroutine, self.client.loop.asyncio_loop)
        except BaseException:
            self._lock.release()
            raise
        inner.add_done_callback(settle)
        return outer

    def peek(self, function: Callable, *args: Any) -> dict[str, Any]:
        """``function(resident, *args)`` on every resident's worker event loop, beside a
        running request: {address: result} of the workers that answered within
        ``min(timeout, 5 s)`` (one lost or being rebuilt is left out). For quick reads of
        what a running call keeps, or a flag it reads: it must not block."""
        from distributed.protocol import pickle

        job, addresses = pickle.dumps((function, tuple(args))), self._workers
        replies = self.client.sync(asyncio.gather, *(
            self._quietly(address, "daskgd_peek", run_id=self.run_id, job=job)
            for address in addresses))  # fmt: skip
        return {address: pickle.loads(reply["result"])
                for address, reply in zip(addresses, replies, strict=True) if reply}  # fmt: skip

    # -- checks ----------------------------------------------------------------------------

    def _check_w(self, w: Any) -> np.ndarray:
        w = np.asarray(w, dtype=np.float64)
        if w.ndim != 1 or w.shape[0] != self.n_params:
            raise ValueError(
                f"w must be a vector of {self.n_params} parameters ({self.model.name}, "
                f"{self.data.n_features} features, fit_intercept={self.fit_intercept}), "
                f"got shape {w.shape}"
            )
        return w

    def _check_blocks(self, blocks: Sequence[int] | None) -> list[int] | None:
        if blocks is None:
            return None
        if isinstance(blocks, (str, bytes)) or not hasattr(blocks, "__iter__"):
            raise ValueError(f"blocks must be a sequence of chunk indices, got {blocks!r}")
        checked = []
        for block in blocks:
            if isinstance(block, bool) or not isinstance(block, (int, np.integer)):
                raise ValueError(f"a block index is an integer, got {block!r} in blocks")
            if not 0 <= block < self.n_blocks:
                raise ValueError(
                    f"unknown block index {block} in blocks: the data has {self.n_blocks} "
                    f"chunks (0..{self.n_blocks - 1})"
                )
            checked.append(int(block))
        if not checked:
            raise ValueError("blocks is empty: give at least one chunk index (or None for all)")
        return checked

    # -- one attempt of each request (on the client's event loop) ---------------------------

    async def _evaluate_once(self, payload: np.ndarray, blocks: list[int] | None) -> tuple:
        plan = self._plan(blocks)
        common = {"run_id": self.run_id, "attempt": self.attempt, "w": to_wire(payload)}
        messages = {address: {**common, "blocks": held} for address, held in plan.items()}
        replies = await self._request_all("daskgd_evaluate", messages, self.timeout)
        total = np.zeros(self.n_params + 2)
        for address in plan:  # ring order: the same order of additions every time
            partial = from_wire(replies[address][0]["partial"])
            if not self.codec.is_exact:
                partial = decode_partial(partial, self.codec, self.n_params)
            total += partial
        return total, per_worker(replies)

    def _plan(self, blocks: list[int] | None) -> dict[str, list[int] | None]:
        """{address: its blocks among ``blocks`` (None: all it holds)}, in ring order."""
        if blocks is None:
            return dict.fromkeys(self._workers)
        plan: dict[str, list[int]] = {address: [] for address in self._workers}
        for block in blocks:
            plan[self._owner[block]].append(block)
        return {address: held for address, held in plan.items() if held}

    async def _call_once(self, job: tuple, timeout: float) -> tuple:
        from distributed.protocol import pickle

        self._call_id += 1
        call = self._call_id
        # Pickled once for every worker (to_serialize would pickle it once per message).
        message = {"run_id": self.run_id, "attempt": self.attempt, "call": call,
                   "job": pickle.dumps(job)}  # fmt: skip
        messages = dict.fromkeys(self._workers, message)
        replies = await self._request_all("daskgd_call", messages, timeout, call=call)
        results = {a: pickle.loads(replies[a][0]["result"]) for a in self._workers}
        return results, per_worker(replies)

    async def _with_retries(self, once: Callable, *args: Any) -> tuple[Any, Measures]:
        start = time.perf_counter()
        lost: list[str] = []
        seconds_lost = 0.0
        for attempt in range(1, MAX_ATTEMPTS + 1):
            begun = time.perf_counter()
            try:
                value, per_worker = await once(*args)
            except _RecoverableError as failure:
                lost += sorted(failure.lost - set(lost))
                if attempt == MAX_ATTEMPTS:
                    raise RuntimeFailureError(
                        f"run {self.run_id}: gave up after {attempt} attempts ({failure}); "
                        f"workers lost: {lost or 'none'}"
                    ) from None
                await self._build(failure.lost)
                seconds_lost += time.perf_counter() - begun
                continue
            measures = Measures(per_worker, wall_seconds=time.perf_counter() - start,
                                attempts=attempt, seconds_lost=seconds_lost,
                                workers_lost=tuple(lost))  # fmt: skip
            return value, measures
        raise AssertionError("unreachable")  # pragma: no cover

    # -- rpc -------------------------------------------------------------------------------

    async def _rpc(self, address: str, op: str, timeout: float, **message: Any) -> tuple:
        """(reply, round-trip seconds) of one handler call, bounded by ``timeout``."""
        start = time.perf_counter()
        reply = await self._answer(address, getattr(self.client.rpc(address), op)(**message),
                                   timeout)  # fmt: skip
        round_trip = time.perf_counter() - start
        if not isinstance(reply, dict):  # no such handler: a closing worker, plugins gone
            error = ResidentMissingError(f"{address} has no daskgd runtime handlers (closing?)")
            raise _RemoteError(address, error)
        if reply.get("status") != "OK":
            from distributed.core import clean_exception

            _, remote, traceback = clean_exception(**reply)
            if remote is None:  # an error reply without the exception: say what came back
                remote = RuntimeError(f"{address} answered {reply.get('status')!r}")
            raise _RemoteError(address, remote.with_traceback(traceback))
        return reply, round_trip

    async def _answer(self, address: str, request: Any, timeout: float) -> Any:
        """Await ``request`` to ``address`` for at most ``timeout`` seconds.

        Every :data:`LIVENESS_SECONDS` without an answer, the scheduler is asked whether
        the worker still runs: connecting to a closed worker's port is retried for
        distributed's whole connect timeout (30 s: seen here after a retirement), a
        worker the scheduler has removed is given up at once.
        """
        task = asyncio.ensure_future(request)
        deadline = time.monotonic() + timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _NoAnswerError(address, timeout)
                done, _ = await asyncio.wait({task}, timeout=min(remaining, LIVENESS_SECONDS))
                if done:
                    return task.result()
                if address not in await self.client.scheduler.ncores_running():
                    raise _UnreachableError(address, ConnectionError("the scheduler removed it"))
        except OSError as error:  # CommClosedError, refused or reset connections
            raise _UnreachableError(address, error) from None
        finally:
            if not task.done():
                task.cancel()

    async def _request_all(
        self, op: str, messages: dict, timeout: float, call: int | None = None
    ) -> dict:
        """One request per worker, all at once; {address: (reply, round trip)}.

        If one fails while a call is running, the others are aborted (their waits on the
        failed one would otherwise last until ``timeout``), then the failure is classified.
        """
        tasks = {
            address: asyncio.ensure_future(self._rpc(address, op, timeout, **message))
            for address, message in messages.items()
        }
        done, pending = await asyncio.wait(
            tasks.values(), return_when=asyncio.FIRST_EXCEPTION
        )  # each task is bounded by its own timeout
        if pending and call is not None:
            failed = next(task.exception() for task in done if task.exception())
            waiting = [address for address, task in tasks.items() if task in pending]
            await self._abort(call, waiting, f"call {call} aborted: {failed}")
        if pending:
            await asyncio.wait(pending)
        errors: dict[str, BaseException] = {
            address: error for address, task in tasks.items()
            if (error := task.exception()) is not None
        }  # fmt: skip
        if errors:
            raise await self._classify(errors)
        return {address: task.result() for address, task in tasks.items()}

    async def _classify(self, errors: dict[str, BaseException]) -> BaseException:
        """Lost workers: rebuild and retry. Anything else is raised as it is."""
        lost, silent, remote = set(), set(), []
        for error in errors.values():
            if isinstance(error, _UnreachableError):
                lost.add(error.address)
            elif isinstance(error, _NoAnswerError):
                silent.add(error.address)
            elif isinstance(error, _RemoteError):
                if isinstance(error.error, PeerLostError):
                    lost.add(error.error.peer)
                if not isinstance(error.error, _RECOVERABLE_REMOTE):
                    remote.append(error.error)  # the function's own error, a bad argument
            else:
                remote.append(error)
        if remote:
            return remote[0]
        if silent:  # not answering: lost if the scheduler has dropped them too
            running = set(await self.client.scheduler.ncores_running())
            lost |= silent - running
            if silent & running:
                return TimeoutError(
                    f"workers {sorted(silent & running)} did not answer within "
                    f"{self.timeout:g} s and are still running (raise the Runtime's timeout "
                    "for long calls)"
                )
        reasons = "; ".join(str(error) for error in errors.values())
        return _RecoverableError(lost, reasons)

    async def _abort(self, call: int, addresses: list[str], reason: str) -> None:
        message = {"run_id": self.run_id, "attempt": self.attempt, "call": call, "reason": reason}
        await asyncio.gather(
            *(self._quietly(address, "daskgd_abort", **message) for address in addresses)
        )

    async def _quietly(self, address: str, op: str, **message: Any) -> Any:
        try:
            return (await self._rpc(address, op, min(self.timeout, CLEANUP_SECONDS), **message))[0]
        except Exception:  # noqa: BLE001 - best effort: the worker may be gone
            return None

    # -- building residents ----------------------------------------------------------------

    async def _build(self, lost: set[str]) -> None:
        """Residents where the chunks are (waiting for lost ones to be recomputed)."""
        deadline = time.monotonic() + self.timeout
        lost = set(lost)
        previous = set(self._workers)
        while True:
            assignment = await self._locate(lost, deadline)
            self.attempt += 1
            specs = self._specs(assignment)
            messages = {address: {"spec": _serialized(spec)} for address, spec in specs.items()}
            try:
                await self._request_all("daskgd_create", messages, self.timeout)
                break
            except _RecoverableError as failure:
                lost |= failure.lost
                if time.monotonic() > deadline:
                    raise RuntimeFailureError(
                        f"run {self.run_id}: could not rebuild residents within "
                        f"{self.timeout:g} s ({failure}); workers lost: {sorted(lost)}"
                    ) from None
        self._workers = tuple(specs)
        self._owner = {block: address for address, spec in specs.items() for block in spec.blocks}
        self._ever |= set(specs)
        gone = previous - set(specs) - lost
        await asyncio.gather(
            *(self._quietly(address, "daskgd_drop", run_id=self.run_id) for address in gone)
        )

    async def _locate(self, lost: set[str], deadline: float) -> dict[int, tuple[str, str]]:
        """{block: (worker to hold it, worker holding its y)}: in memory on running workers."""
        scheduler = self.client.scheduler
        keys = [key for pair in self._keys for key in pair]
        while True:
            running = set(await scheduler.ncores_running()) - lost
            who_has = await scheduler.who_has(keys=keys)
            assignment, missing = {}, []
            for block, (x_key, y_key) in enumerate(self._keys):
                x_holders = sorted(a for a in who_has.get(x_key, ()) if a in running)
                y_holders = sorted(a for a in who_has.get(y_key, ()) if a in running)
                if not x_holders or not y_holders:
                    missing.append(block)
                    continue
                holder = self._preferred(block, x_holders)
                assignment[block] = (holder, holder if holder in y_holders else y_holders[0])
            if not missing:
                return assignment
            if time.monotonic() > deadline:
                raise RuntimeFailureError(
                    f"run {self.run_id}: chunks {missing} were not back in memory on a running "
                    f"worker within {self.timeout:g} s; workers lost: {sorted(lost) or 'none'}; "
                    f"running: {sorted(running) or 'none'} (a nanny restarting a killed worker "
                    "on a loaded machine may need longer: raise the timeout)"
                )
            await asyncio.sleep(PROBE_INTERVAL_SECONDS)

    def _preferred(self, block: int, holders: list[str]) -> str:
        """The holder of ``block`` to use: the one already used, the planned one, the first."""
        for address in (self._owner.get(block), self.data.placement[block]):
            if address in holders:
                return address
        return holders[0]

    def _specs(self, assignment: dict[int, tuple[str, str]]) -> dict[str, ResidentSpec]:
        """One spec per holder, in ring order (by first block)."""
        blocks_of: dict[str, list[int]] = {}
        for block in sorted(assignment):
            blocks_of.setdefault(assignment[block][0], []).append(block)
        peers = tuple(blocks_of)  # insertion order: by first block
        specs = {}
        for rank, address in enumerate(peers):
            blocks = tuple(blocks_of[address])
            fetch = {self._keys[b][1]: assignment[b][1] for b in blocks
                     if assignment[b][1] != address}  # fmt: skip
            index = self._initial_workers.index(address) if address in self._initial_workers \
                else len(self._initial_workers)  # fmt: skip
            specs[address] = ResidentSpec(
                run_id=self.run_id, attempt=self.attempt, rank=rank, peers=peers,
                blocks=blocks, keys=tuple(self._keys[b] for b in blocks),
                n_blocks=self.n_blocks, n_params=self.n_params, model=self.model,
                fit_intercept=self.fit_intercept, codec=self.codec, timeout=self.timeout,
                emulation=self.emulation, slowdown=self._slowdowns.get(address, 1.0),
                worker_index=index, fetch=fetch,
            )  # fmt: skip
        return specs

    async def _drop_everywhere(self) -> None:
        try:
            running = set(await self.client.scheduler.ncores_running())
        except Exception:  # noqa: BLE001 - the scheduler is gone: so are the residents
            return
        targets = sorted((self._ever | set(self._workers)) & running)
        await asyncio.gather(
            *(self._quietly(address, "daskgd_drop", run_id=self.run_id) for address in targets)
        )


def _serialized(value: Any) -> Any:
    from distributed.protocol import to_serialize

    return to_serialize(value)


def _positive_seconds(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be > 0 and finite, got {value!r}")
    return float(value)


def _check_arguments(client: Any, data: Any, model: Any, timeout: Any) -> None:
    from distributed import Client

    if not isinstance(client, Client):
        raise ValueError(f"client must be a distributed.Client, got {client!r}")
    if client.asynchronous:
        raise ValueError("the Runtime needs a synchronous distributed.Client")
    if getattr(data, "placement", None) is None or not hasattr(data, "X"):
        raise ValueError(
            "data must be a DistributedData placed on a distributed cluster "
            "(daskgd.data.distribute(X, y, client)); got one without placement"
        )
    if data.client is not None and data.client.scheduler.address != client.scheduler.address:
        raise ValueError("data was placed through another scheduler than the client's")
    if not isinstance(model, Model):
        raise ValueError(f"model must be a daskgd.models.Model, got {model!r}")
    _positive_seconds(timeout, "timeout")
