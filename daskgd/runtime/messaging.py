"""Messages between residents: the mailbox, the meter, and the errors that reach the client.

:class:`Mailbox` files the vectors a resident receives by (call, tag); the resident's
thread or a coroutine on the worker's event loop waits on it, always with a bound.
:class:`Meter` holds what a resident measured for one request (:data:`MEASURES`). The
exceptions travel back to the client inside distributed's error messages; the client's
:class:`daskgd.runtime.handle.Runtime` treats ``ResidentMissingError``,
``ChunkMissingError``, ``PeerLostError`` and ``CallAbortedError`` as signs of lost workers
(rebuild and retry), anything else as the caller's error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "MEASURES",
    "CallAbortedError",
    "ChunkMissingError",
    "Mailbox",
    "Message",
    "Meter",
    "PeerLostError",
    "RecvTimeoutError",
    "ResidentMissingError",
]

#: The per-worker figures a resident measures, in the order of the trace's variables.
MEASURES = (
    "compute_seconds",
    "communication_seconds",
    "wait_seconds",
    "bytes_sent",
    "bytes_received",
    "messages_sent",
    "messages_received",
    # the client's share of the bytes above: w (or a call's arguments) in, sums out
    "bytes_from_client",
    "bytes_to_client",
    # the part of compute_seconds that was an emulated sleep (a straggler, emulated compute)
    "emulated_seconds",
    # bytes of the chunks summed (the straggler rule compares compute per byte: a worker
    # holding more rows, e.g. a survivor after a rebuild, is not slow for that)
    "data_bytes",
)


# -- errors that travel from the workers to the client -----------------------------------


class ResidentMissingError(LookupError):
    """The worker has no resident of this run and attempt (dropped, or rebuilt since)."""


class ChunkMissingError(LookupError):
    """A chunk the client expected on a worker is not in its memory (moved or lost)."""


class PeerLostError(ConnectionError):
    """A message to a peer could not be delivered: the peer died or dropped the run."""

    def __init__(self, peer: str, detail: str = ""):
        super().__init__(peer, detail)
        self.peer = peer
        self.detail = detail

    def __str__(self) -> str:
        return f"could not deliver a message to peer {self.peer}: {self.detail}"


class CallAbortedError(RuntimeError):
    """The client aborted the call (another resident failed during it)."""


class RecvTimeoutError(TimeoutError):
    """:meth:`Resident.recv` waited longer than its timeout for a message."""


# -- measurements --------------------------------------------------------------------------


class Meter:
    """What a resident did for one request; reset at the start of every request."""

    __slots__ = MEASURES
    # Declared for type checkers (reset() sets every one of MEASURES).
    compute_seconds: float
    communication_seconds: float
    wait_seconds: float
    bytes_sent: int
    bytes_received: int
    messages_sent: int
    messages_received: int
    bytes_from_client: int
    bytes_to_client: int
    emulated_seconds: float
    data_bytes: int

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        for name in MEASURES:
            setattr(self, name, 0.0 if name.endswith("seconds") else 0)

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in MEASURES}


# -- the mailbox ---------------------------------------------------------------------------


class Message(NamedTuple):
    payload: np.ndarray
    n_values: int
    exact: bool
    source: str
    sent_at: float  # time.time() on the sender: same clock on one host
    delivered_at: float
    seq: int = 0  # per (sender, call, tag): the order the sender sent them in


class Mailbox:
    """Messages of one resident, filed by (call, tag) on the event loop.

    They are read either by the resident's thread (:meth:`get`, blocking on a condition)
    or by a coroutine on the event loop (:meth:`get_async`, the ring all-reduce).
    Messages of calls older than the current one are dropped on arrival (and the current
    call's leftovers when it ends); a newer call's messages wait for that call to begin
    (a peer may start the next call before this worker has received it). An aborted call
    makes every wait in it raise the abort's exception.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._queues: dict[tuple[int, Hashable], deque[Message]] = {}
        self._waiters: dict[tuple[int, Hashable], asyncio.Future] = {}
        self._expected: dict[tuple, int] = {}  # next seq per ((call, tag), sender)
        self._early: dict[tuple, dict[int, Message]] = {}  # arrived before a predecessor
        self._call = 0
        self._aborted: dict[int, BaseException] = {}
        self._closed: str | None = None
        self.dropped = 0

    def put(self, call: int, tag: Hashable, message: Message) -> None:
        """File a message (on the event loop), in its sender's order.

        Two messages of one sender under one tag may come over two pooled connections
        and be handled out of order: a message waits until its predecessors are filed.
        """
        with self._condition:
            if self._closed is not None or call < self._call:
                self.dropped += 1
                return
            key = (call, tag)
            order = (key, message.source)
            expected = self._expected.get(order, 0)
            early = self._early.setdefault(order, {})
            early[message.seq] = message
            while expected in early:
                self._file(key, early.pop(expected))
                expected += 1
            if not early:
                del self._early[order]
            self._expected[order] = expected

    def _file(self, key: tuple[int, Hashable], message: Message) -> None:
        waiter = self._waiters.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(message)
            return
        self._queues.setdefault(key, deque()).append(message)
        self._condition.notify_all()

    def _take(self, key: tuple[int, Hashable]) -> Message | None:
        self._raise_if_stopped(key[0])
        queue = self._queues.get(key)
        if not queue:
            return None
        message = queue.popleft()
        if not queue:
            del self._queues[key]
        return message

    def get(self, call: int, tag: Hashable, timeout: float, who: str) -> Message:
        """The next message of (call, tag), waiting at most ``timeout`` (a worker thread)."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while True:
                message = self._take((call, tag))
                if message is not None:
                    return message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise recv_timeout(who, tag, timeout)
                self._condition.wait(remaining)

    async def get_async(self, call: int, tag: Hashable, timeout: float, who: str) -> Message:
        """:meth:`get` for a coroutine on the event loop."""
        key = (call, tag)
        with self._condition:
            message = self._take(key)
            if message is not None:
                return message
            waiter = asyncio.get_running_loop().create_future()
            self._waiters[key] = waiter
        try:
            return await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            raise recv_timeout(who, tag, timeout) from None
        finally:
            with self._condition:
                if self._waiters.get(key) is waiter:
                    del self._waiters[key]

    def _raise_if_stopped(self, call: int) -> None:
        if self._closed is not None:
            raise CallAbortedError(self._closed)
        if call in self._aborted:
            raise self._aborted[call]

    def begin(self, call: int) -> None:
        """Start call ``call``: older calls' messages go; raise if it was aborted already."""
        with self._condition:
            self._call = call
            self._forget(lambda c: c < call)
            self._aborted = {c: e for c, e in self._aborted.items() if c >= call}
            self._raise_if_stopped(call)

    def end(self, call: int) -> None:
        """The call is over: drop what it left unread."""
        with self._condition:
            self._forget(lambda c: c <= call)
            self._call = max(self._call, call + 1)

    def _forget(self, old) -> None:
        """Drop the messages and ordering of the calls ``old(call)`` is true of."""
        for key in [key for key in self._queues if old(key[0])]:
            self.dropped += len(self._queues.pop(key))
        for order in [order for order in self._early if old(order[0][0])]:
            self.dropped += len(self._early.pop(order))
        for order in [order for order in self._expected if old(order[0][0])]:
            del self._expected[order]

    def abort(self, call: int, error: BaseException) -> None:
        """Make every wait of ``call`` raise ``error`` (on the event loop)."""
        with self._condition:
            self._aborted.setdefault(call, error)
            for key in [key for key in self._waiters if key[0] == call]:
                waiter = self._waiters.pop(key)
                if not waiter.done():
                    waiter.set_exception(self._aborted[call])
            self._condition.notify_all()

    def close(self, reason: str) -> None:
        """No more messages; every wait raises :class:`CallAbortedError` (on the event loop)."""
        with self._condition:
            self._closed = reason
            self._forget(lambda c: True)
            for waiter in self._waiters.values():
                if not waiter.done():
                    waiter.set_exception(CallAbortedError(reason))
            self._waiters.clear()
            self._condition.notify_all()

    def __len__(self) -> int:
        with self._condition:
            return sum(len(queue) for queue in self._queues.values())


def retrieve(task: asyncio.Future) -> None:
    """Done-callback of a send nobody awaits (its failure is raised in the waits)."""
    if not task.cancelled():
        task.exception()


def recv_timeout(who: str, tag: Hashable, timeout: float) -> RecvTimeoutError:
    return RecvTimeoutError(
        f"{who} waited {timeout:g} s for a message tagged {tag!r} "
        "(raise the Runtime's timeout, or check that a peer sends it)"
    )


def loop_result(
    future: concurrent.futures.Future, seconds: float, late: Callable[[], Exception]
) -> Any:
    """The result of a coroutine run on a worker's event loop, waited for ``seconds``; if
    it is not done by then, it is cancelled and ``late()`` is raised. ``wait``, not
    ``result(timeout)``: a coroutine ending in a TimeoutError of its own (a RecvTimeoutError)
    is its result, raised as it is, not "not done yet"."""
    if not concurrent.futures.wait([future], timeout=seconds).done:
        future.cancel()
        raise late()
    return future.result()
