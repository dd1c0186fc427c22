"""The worker-resident object of one run: a worker's chunks, the model, a strategy's state.

One :class:`Resident` lives on every worker holding chunks of a run, created by the
handlers of :class:`daskgd.runtime.plugin.RuntimePlugin` when the client's
:class:`daskgd.runtime.handle.Runtime` enters. It keeps

- references to the persisted X and y blocks the worker already holds (no copy; a y block
  recomputed on another worker than its X block after a failure is fetched once);
- the model, the codec, the ordered ring of peers and this resident's rank in it;
- ``state``, a dict a strategy may fill (local w, optimizer state, residuals), carried
  over to the next attempt's resident on the same worker after a rebuild;
- a :class:`Meter` of what it did for the current request: compute seconds (inside
  :meth:`Resident.local_sums` or a ``timing("compute")`` block), communication seconds
  (encoding, sending, decoding, a message's time in flight while this resident waited
  for it), wait seconds (blocked in :meth:`Resident.recv` before the awaited message was
  even sent), bytes and messages sent and received (payload bytes, after the codec).

Its methods run in a worker thread (the worker's own executor): :meth:`Resident.send`
hands the message to the worker's event loop, which writes it through the worker's
pooled connections (``worker.rpc``, one way: no reply) to the ``daskgd_message`` handler
of the peer; that handler files it in the peer's
:class:`~daskgd.runtime.messaging.Mailbox`, where :meth:`Resident.recv` (blocked on a
condition variable) picks it up. :meth:`Resident.allreduce` runs its steps as one
coroutine on the event loop. Messages are keyed by the call they belong to and a tag, so
late messages of an aborted call or of an older attempt (a failure, a rebuild) are
dropped, never read by the next call.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Hashable, Iterator, Mapping, Sequence
from concurrent.futures import Future as ConcurrentFuture
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from dask.sizeof import sizeof

from daskgd.models.losses import Model, packed_loss_grad
from daskgd.runtime.codecs import Codec, encode_partial_with_residual, to_wire
from daskgd.runtime.emulation import Emulation, worker_slowdown
from daskgd.runtime.messaging import (
    MEASURES,
    CallAbortedError,
    ChunkMissingError,
    Mailbox,
    Message,
    Meter,
    PeerLostError,
    RecvTimeoutError,
    ResidentMissingError,
    loop_result,
    recv_timeout,
    retrieve,
)

__all__ = [
    "MEASURES",
    "CallAbortedError",
    "ChunkMissingError",
    "PeerLostError",
    "RecvTimeoutError",
    "Resident",
    "ResidentMissingError",
    "ResidentSpec",
]


# -- what a resident is told when it is created ---------------------------------------------


@dataclass(frozen=True)
class ResidentSpec:
    """Everything a worker needs to build its resident of one run attempt.

    ``keys[i]`` are the (X, y) keys of global block ``blocks[i]``; ``fetch`` maps a key
    this worker does not hold to the worker that does (a y block recomputed elsewhere).
    """

    run_id: str
    attempt: int
    rank: int
    peers: tuple[str, ...]
    blocks: tuple[int, ...]
    keys: tuple[tuple[Any, Any], ...]
    n_blocks: int
    n_params: int
    model: Model
    fit_intercept: bool
    codec: Codec
    timeout: float
    emulation: Emulation | None = None
    slowdown: float = 1.0
    worker_index: int = 0
    fetch: Mapping[Any, str] = field(default_factory=dict)


# -- the resident --------------------------------------------------------------------------


def _check_tag(tag: Any) -> Hashable:
    """Tags travel through msgpack: strings, integers and (nested) tuples of them only."""
    if isinstance(tag, (str, int)) and not isinstance(tag, bool):
        return tag
    if isinstance(tag, (tuple, list)):
        try:
            return tuple(_check_tag(part) for part in tag)
        except TypeError:
            pass
    raise TypeError(f"a message tag is a str, an int or a tuple of them, got {tag!r}")


class Resident:
    """A run's object on one worker: its chunks, the model, state, and messaging to peers.

    Attributes
    ----------
    address : str
        The worker's address.
    rank : int
        Position in ``peers``.
    peers : tuple of str
        The residents of this attempt, in the order of their first block: the ring.
    blocks : tuple of int
        Global indices of the chunks this resident holds, increasing.
    state : dict
        Free for the strategy; survives a rebuild on the same worker.
    attempt : int
        The run's attempt this resident belongs to (1, then one more per rebuild).
    meter : Meter
        What the current request measured so far.
    """

    def __init__(
        self,
        spec: ResidentSpec,
        chunks: Mapping[int, tuple[np.ndarray, np.ndarray]],
        *,
        address: str,
        loop: asyncio.AbstractEventLoop,
        rpc: Any,
    ):
        self.run_id = spec.run_id
        self.attempt = spec.attempt
        self.address = address
        self.rank = spec.rank
        self.peers = tuple(spec.peers)
        self.blocks = tuple(spec.blocks)
        self._held_blocks = frozenset(self.blocks)
        self.n_blocks = spec.n_blocks
        self.n_params = spec.n_params
        self.model = spec.model
        self.fit_intercept = spec.fit_intercept
        self.codec = spec.codec
        self.timeout = spec.timeout
        self.emulation = spec.emulation
        self.state: dict[str, Any] = {}
        self.meter = Meter()
        self.mailbox = Mailbox()
        self._chunks = dict(chunks)
        self._nbytes = {block: _nbytes(X) + _nbytes(y) for block, (X, y) in self._chunks.items()}
        self._loop = loop
        self._rpc = rpc
        self._call = 0
        self._pending: list[tuple[str, ConcurrentFuture]] = []
        self._sequence: dict[tuple[str, Hashable], int] = {}  # per (peer, tag), this call
        self._residual: np.ndarray | None = None  # top-k error feedback of the partials
        self._closed: str | None = None
        self._slowdown = None
        if spec.emulation is not None and spec.emulation.slows_chunks:
            self._slowdown = worker_slowdown(spec.emulation, spec.slowdown, spec.worker_index)

    def __repr__(self) -> str:
        return (
            f"<Resident run={self.run_id} attempt={self.attempt} rank={self.rank}/"
            f"{len(self.peers)} blocks={list(self.blocks)} at {self.address}>"
        )

    # -- compute ---------------------------------------------------------------------------

    def local_sums(
        self, w: np.ndarray, blocks: Sequence[int] | None = None, *, slowed: bool = True
    ) -> np.ndarray:
        """``[loss_sum, grad_sum..., n_rows]`` over this resident's chunks (timed as compute).

        ``blocks`` are global chunk indices; the resident sums those it holds, in the
        order given (a repeated index counts twice), and ignores the others. An emulated
        straggler then sleeps ``(factor - 1)`` times the compute (plus its random delay;
        with emulated compute, the compute is at least ``chunk_compute_seconds`` per
        chunk, the rest slept), unless ``slowed`` is False (a measurement after the fit,
        outside the algorithm). The seconds slept count as compute and as
        ``meter.emulated_seconds``.
        """
        w = self._check_w(w)
        chosen = self.blocks if blocks is None else self._held(blocks)
        start = time.perf_counter()
        total = np.zeros(self.n_params + 2)
        for block in chosen:
            chunk = self._chunks.get(block)
            if chunk is None:  # closed under us: the worker is closing, or the run ended
                raise ResidentMissingError(f"{self!r} was closed: {self._closed}")
            X, y = chunk
            partial = packed_loss_grad(X, y, w, model=self.model, fit_intercept=self.fit_intercept)
            total += partial[0]
            self.meter.data_bytes += self._nbytes[block]
        if self._slowdown is not None and slowed:
            extra = self._slowdown.extra_seconds(time.perf_counter() - start, len(chosen))
            if extra > 0:
                time.sleep(extra)
                self.meter.emulated_seconds += extra
        self.meter.compute_seconds += time.perf_counter() - start
        return total

    @contextlib.contextmanager
    def timing(self, kind: str) -> Iterator[None]:
        """Count the block's seconds as ``'compute'``, ``'communication'`` or ``'wait'``.

        For a strategy's own work inside a call, e.g. the optimizer step every worker takes.
        """
        if kind not in ("compute", "communication", "wait"):
            raise ValueError(f"kind must be 'compute', 'communication' or 'wait', got {kind!r}")
        start = time.perf_counter()
        try:
            yield
        finally:
            name = f"{kind}_seconds"
            setattr(self.meter, name, getattr(self.meter, name) + time.perf_counter() - start)

    def _check_w(self, w: Any) -> np.ndarray:
        w = np.asarray(w, dtype=np.float64)
        if w.ndim != 1 or w.shape[0] != self.n_params:
            raise ValueError(
                f"w must be a vector of {self.n_params} parameters, got shape {w.shape}"
            )
        return w

    def _held(self, blocks: Sequence[int]) -> list[int]:
        chosen = []
        for block in blocks:
            if isinstance(block, bool) or not isinstance(block, (int, np.integer)):
                raise ValueError(f"a block index is an integer, got {block!r}")
            if not 0 <= block < self.n_blocks:
                raise ValueError(
                    f"unknown block index {block}: the data has {self.n_blocks} chunks "
                    f"(0..{self.n_blocks - 1})"
                )
            if int(block) in self._held_blocks:
                chosen.append(int(block))
        return chosen

    # -- point to point --------------------------------------------------------------------

    def send(
        self, peer: str, tag: Any, vector: Any, *, wait: bool = True, exact: bool = False
    ) -> None:
        """Send a float64 vector to the resident of this run on ``peer``.

        The codec applies unless ``exact``. With ``wait`` (default) this returns once the
        message is written to the peer's connection; otherwise it returns at once and
        :meth:`flush` (called at the end of every call) waits for the writes; a failed
        write also ends the current call's waits. Messages from one sender under one tag
        are received in the order they were sent. Raises :class:`PeerLostError`.
        """
        if peer not in self.peers:
            raise ValueError(f"unknown peer {peer!r}; the peers are {list(self.peers)}")
        tag = _check_tag(tag)
        start = time.perf_counter()
        vector = np.asarray(vector, dtype=np.float64).reshape(-1)
        payload, lossless = self._encoded(vector, exact)
        header = self._header(peer, tag, payload, vector.size, lossless)
        if peer == self.address:  # no network to cross: file it from the event loop
            now = time.time()
            message = Message(payload, vector.size, lossless, peer, now, now, header["seq"])
            self._loop.call_soon_threadsafe(self.mailbox.put, self._call, tag, message)
        else:
            future = asyncio.run_coroutine_threadsafe(self._post(peer, header, payload), self._loop)
            if wait:
                self._settle(peer, future)
            else:
                self._pending.append((peer, future))
        self.meter.communication_seconds += time.perf_counter() - start

    def recv(self, tag: Any, timeout: float | None = None) -> np.ndarray:
        """The next vector sent to this resident under ``tag`` in the current call.

        Blocks at most ``timeout`` seconds (default: the runtime's timeout), then raises
        :class:`RecvTimeoutError`; raises :class:`CallAbortedError` if the client aborts the call
        and :class:`PeerLostError` if one of this call's sends failed.
        """
        tag = _check_tag(tag)
        timeout = self.timeout if timeout is None else float(timeout)
        blocked_from = time.time()
        message = self.mailbox.get(self._call, tag, timeout, self._who())
        self._account_wait(message, blocked_from, time.time())
        start = time.perf_counter()
        vector = self._decode(message)
        self.meter.communication_seconds += time.perf_counter() - start
        return vector

    def flush(self) -> None:
        """Wait (bounded) until every message sent with ``wait=False`` was delivered."""
        pending, self._pending = self._pending, []
        start = time.perf_counter()
        try:
            for peer, future in pending:
                self._settle(peer, future)
        finally:
            self.meter.communication_seconds += time.perf_counter() - start

    def allreduce(self, vector: Any, tag: Any, *, algorithm: str = "ring") -> np.ndarray:
        """The sum of ``vector`` over every resident, the same bits on each.

        ``algorithm='ring'``: reduce-scatter then all-gather over ``peers`` (m residents,
        2 (m - 1) steps), each resident sending one m-th of the vector per step to the
        next one, so each sends and receives 2 (m - 1) / m times the vector's size. The
        total of segment j is formed on one resident and forwarded unchanged (the same
        encoded payload: a lossy codec cannot make the copies differ).

        ``algorithm='exchange'``: every resident sends its whole vector to every other
        one and adds the m vectors in rank order: one step, (m - 1) times the vector's
        size. At m = 2 it moves the ring's bytes in half the ring's latency (measured
        here: 1.9 ms against 2.9 ms for 21 values); the ring wins at large m.

        The steps run on the worker's event loop, each arrival triggering the next send
        (no thread switch per step). Seconds blocked before a sender sent count as wait,
        the rest as communication. m = 1 returns a copy.
        """
        if algorithm not in ("ring", "exchange"):
            raise ValueError(f"algorithm must be 'ring' or 'exchange', got {algorithm!r}")
        vector = np.asarray(vector, dtype=np.float64).reshape(-1)
        tag = _check_tag(tag)
        m = len(self.peers)
        if m == 1:
            return vector.copy()
        steps = 2 * (m - 1) if algorithm == "ring" else 1
        method = self._ring if algorithm == "ring" else self._exchange
        start, waited = time.perf_counter(), self.meter.wait_seconds
        future = asyncio.run_coroutine_threadsafe(method(vector, tag), self._loop)
        try:
            # every arrival is bounded by the timeout; this bound is a backstop
            bound = steps * self.timeout
            total = loop_result(future, bound + 1.0, lambda: recv_timeout(self._who(), tag, bound))
        finally:
            elapsed = time.perf_counter() - start
            self.meter.communication_seconds += elapsed - (self.meter.wait_seconds - waited)
        return total

    async def _ring(self, vector: np.ndarray, tag: Hashable) -> np.ndarray:
        m, rank = len(self.peers), self.rank
        successor = self.peers[(rank + 1) % m]
        bounds = np.linspace(0, vector.size, m + 1).astype(int)
        segments = [vector[bounds[i] : bounds[i + 1]].copy() for i in range(m)]
        sends = []
        for step in range(m - 1):
            payload, exact = self._encoded(segments[(rank - step) % m])
            size = segments[(rank - step) % m].size
            sends.append(self._send_soon(successor, (tag, "reduce", step), payload, size, exact))
            received = self._decode(await self._arrival((tag, "reduce", step)))
            index = (rank - step - 1) % m
            if received.size != segments[index].size:
                raise ValueError(
                    f"allreduce {tag!r}: the residents passed vectors of different lengths "
                    f"(this one {vector.size})"
                )
            segments[index] = segments[index] + received
        index = (rank + 1) % m  # the segment whose total this resident now holds
        payload, exact = self._encoded(segments[index])
        for step in range(m - 1):
            size = segments[index].size
            segments[index] = self._decode(Message(payload, size, exact, "", 0.0, 0.0))
            sends.append(self._send_soon(successor, (tag, "gather", step), payload, size, exact))
            message = await self._arrival((tag, "gather", step))
            payload, exact = message.payload, message.exact
            index = (index - 1) % m
        segments[index] = self._decode(message)
        await asyncio.gather(*sends)
        return np.concatenate(segments)

    async def _exchange(self, vector: np.ndarray, tag: Hashable) -> np.ndarray:
        payload, exact = self._encoded(vector)
        others = [peer for peer in self.peers if peer != self.address]
        sends = [self._send_soon(peer, (tag, "exchange"), payload, vector.size, exact)
                 for peer in others]  # fmt: skip
        parts: list[Any] = [None] * len(self.peers)  # every slot filled below
        parts[self.rank] = self._decode(Message(payload, vector.size, exact, "", 0.0, 0.0))
        for _ in others:
            message = await self._arrival((tag, "exchange"))
            if message.n_values != vector.size:
                raise ValueError(
                    f"allreduce {tag!r}: the residents passed vectors of different lengths "
                    f"(this one {vector.size}, {message.source} {message.n_values})"
                )
            parts[self.peers.index(message.source)] = self._decode(message)
        total = parts[0].copy()
        for part in parts[1:]:  # rank order on every resident: the same bits
            total += part
        await asyncio.gather(*sends)
        return total

    def _send_soon(self, peer: str, tag: Hashable, payload: np.ndarray, n: int, exact: bool):
        """On the event loop: start delivering a message; return the task."""
        header = self._header(peer, tag, payload, n, exact)
        task = asyncio.ensure_future(self._post(peer, header, payload))
        task.add_done_callback(retrieve)  # a failure also fails the waits: seen there
        return task

    # -- from a coroutine on the event loop (a parameter server beside this worker's work) -

    def post_soon(self, peer: str, tag: Any, vector: Any, *, exact: bool = False) -> int:
        """On the event loop: start delivering ``vector`` to ``peer``; its payload bytes.

        :meth:`send` for a coroutine that serves the other residents while this worker's
        thread computes (:mod:`daskgd.runtime.server`). The meter is left alone (it is the
        thread's request); the caller counts what it returns. A failed write ends the
        call's waits with :class:`PeerLostError`, as for :meth:`send`.
        """
        if peer not in self.peers:
            raise ValueError(f"unknown peer {peer!r}; the peers are {list(self.peers)}")
        tag = _check_tag(tag)
        vector = np.asarray(vector, dtype=np.float64).reshape(-1)
        payload, lossless = self._encoded(vector, exact)
        header = self._header(peer, tag, payload, vector.size, lossless, count=False)
        if peer == self.address:
            now = time.time()
            message = Message(payload, vector.size, lossless, peer, now, now, header["seq"])
            self.mailbox.put(self._call, tag, message)
        else:
            task = asyncio.ensure_future(self._post(peer, header, payload))
            task.add_done_callback(retrieve)
        return int(payload.nbytes)

    async def next_message(self, tag: Any, timeout: float) -> tuple[str, np.ndarray, int]:
        """On the event loop: (sender, decoded vector, payload bytes) of the next message
        under ``tag`` in the current call, from any sender, waiting at most ``timeout``."""
        message = await self.mailbox.get_async(self._call, _check_tag(tag), timeout, self._who())
        return message.source, self._decode(message), int(message.payload.nbytes)

    async def _arrival(self, tag: Hashable) -> Message:
        blocked_from = time.time()
        message = await self.mailbox.get_async(self._call, tag, self.timeout, self._who())
        self._account_wait(message, blocked_from, time.time())
        return message

    def _header(self, peer: str, tag: Hashable, payload: np.ndarray, n: int, exact: bool,
                count: bool = True) -> dict:  # fmt: skip
        if count:
            self.meter.bytes_sent += int(payload.nbytes)
            self.meter.messages_sent += 1
        seq = self._sequence.get((peer, tag), 0)
        self._sequence[(peer, tag)] = seq + 1
        return {"run_id": self.run_id, "attempt": self.attempt, "call": self._call,
                "tag": tag, "source": self.address, "n_values": n, "exact": exact,
                "sent_at": time.time(), "seq": seq}  # fmt: skip

    def _encoded(self, vector: np.ndarray, exact: bool = False) -> tuple[np.ndarray, bool]:
        lossless = exact or self.codec.is_exact
        return (vector.copy() if lossless else self.codec.encode(vector)), lossless

    async def _post(self, peer: str, header: dict, payload: np.ndarray) -> None:
        """On the event loop: write the message to the peer's ``daskgd_message`` handler.

        One way (``reply=False``): the sender does not wait for the peer to file it. The
        reply would cross back for nothing on the critical path of the ring and cost
        both processes a message: measured here (load 3.9 on 2 cores), a ring
        all-reduce of 21 values took 3.0 ms with replies and 2.2 ms without. A message
        the peer cannot file (its run rebuilt, dropped) is dropped there; the waits of
        the call are bounded and the client aborts them when it sees a worker lost. A
        failed write also fails this call's waits here: that peer is likely lost.
        """
        try:
            await asyncio.wait_for(
                self._rpc(peer).daskgd_message(payload=to_wire(payload), reply=False, **header),
                self.timeout,
            )
        except (OSError, asyncio.TimeoutError) as error:  # CommClosedError is an OSError
            failure = PeerLostError(peer, f"{type(error).__name__}: {error}")
            self.mailbox.abort(header["call"], failure)
            raise failure from None

    def _settle(self, peer: str, future: ConcurrentFuture) -> None:
        try:
            future.result(timeout=self.timeout + 1.0)  # _post is bounded by the timeout
        except PeerLostError:
            raise
        except Exception as error:  # noqa: BLE001 - a timeout, or a loop shutting down
            raise PeerLostError(peer, f"{type(error).__name__}: {error}") from None

    def _account_wait(self, message: Message, blocked_from: float, blocked_until: float) -> None:
        """Split the time blocked for ``message``: waiting for its sender, then its flight.

        The part of the block after the message left its sender was its flight (network,
        emulated delay): communication. Before that the sender was not ready: waiting.
        Stamps are ``time.time()`` of sender and receiver (one clock on one host).
        """
        blocked = max(0.0, blocked_until - blocked_from)
        flight = min(message.delivered_at, blocked_until) - max(blocked_from, message.sent_at)
        flight = min(max(flight, 0.0), blocked)
        self.meter.communication_seconds += flight
        self.meter.wait_seconds += blocked - flight
        self.meter.bytes_received += int(message.payload.nbytes)
        self.meter.messages_received += 1

    def _decode(self, message: Message) -> np.ndarray:
        if message.exact:
            return np.array(message.payload, dtype=np.float64).reshape(-1)
        return self.codec.decode(message.payload, message.n_values)

    def _who(self) -> str:
        return f"resident {self.rank} of run {self.run_id} on {self.address}"

    # -- serving requests (called by the plugin's handlers, in a worker thread) -------------

    def serve_evaluate(self, payload: np.ndarray, blocks: Sequence[int] | None) -> tuple:
        """Decode w, sum the chunks, encode the partial: (encoded partial, measures)."""
        self.meter.reset()
        start = time.perf_counter()
        self.meter.bytes_received += int(payload.nbytes)
        self.meter.bytes_from_client += int(payload.nbytes)
        self.meter.messages_received += 1
        if self.codec.compresses_w:
            w = self.codec.decode(payload, self.n_params)
        else:
            w = payload
        partial = self.local_sums(w, blocks)
        if not self.codec.is_exact:
            partial, self._residual = encode_partial_with_residual(
                partial, self.codec, self._residual
            )
        self.meter.bytes_sent += int(partial.nbytes)
        self.meter.bytes_to_client += int(partial.nbytes)
        self.meter.messages_sent += 1
        elapsed = time.perf_counter() - start
        self.meter.communication_seconds += max(0.0, elapsed - self.meter.compute_seconds)
        return partial, self.meter.as_dict()

    def serve_call(self, call: int, function: Any, args: tuple, kwargs: dict) -> tuple:
        """Run ``function(self, *args, **kwargs)`` as call number ``call``: (result, measures)."""
        self.meter.reset()
        self._call = call
        self._sequence = {}
        self.mailbox.begin(call)
        try:
            result = function(self, *args, **kwargs)
            self.flush()
            self.meter.bytes_to_client += int(sizeof(result))
        finally:
            self._pending = []
            self.mailbox.end(call)
        return result, self.meter.as_dict()

    def deliver(self, call: int, tag: Hashable, message: Message) -> None:
        """File a message from a peer (on the event loop)."""
        self.mailbox.put(call, tag, message)

    def close(self, reason: str) -> None:
        """Release the chunks and the state; wake any wait with :class:`CallAbortedError`."""
        self._closed = reason
        self.mailbox.close(reason)
        self._chunks.clear()
        self.state = {}
        self._residual = None


def _nbytes(array: Any) -> int:
    """Bytes of a dense chunk, or of a CSR chunk's three arrays."""
    if hasattr(array, "indptr"):
        return int(array.data.nbytes + array.indices.nbytes + array.indptr.nbytes)
    return int(np.asarray(array).nbytes)
