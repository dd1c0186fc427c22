"""Bounded waits on the cluster: no request daskgd makes to a Dask scheduler waits forever.

A scheduler that is alive but answers nothing (stopped with SIGSTOP, in a long garbage
collection pause, on a saturated host) keeps its TCP connections open, so none of
``distributed``'s comm timeouts fires and a plain ``client.gather`` waits forever (seen:
``daskgd run --scheduler`` still waiting after 240 s). Every request daskgd sends during a
fit goes through one of these:

- :func:`call`: one request (an RPC to the scheduler, ``run_on_scheduler``, a gather of
  finished results), answered within ``timeout`` seconds or :class:`ClusterTimeoutError`;
- :func:`result` / :func:`first_completed`: a computation, which may legitimately take
  long; it is waited for in slices and the scheduler is asked for its running workers
  between slices, so only a scheduler that stops answering, a worker that sends no
  heartbeat, tasks that no running worker may run (:class:`ClusterTimeoutError`) or a
  cluster left without workers (:class:`NoWorkersError`), each for ``timeout`` seconds,
  ends the wait;
- :func:`running_workers`: the workers, waiting up to ``wait_for_workers`` seconds for a
  first one.

A worker found frozen (no heartbeat for ``timeout`` seconds) is remembered for its client
until its heartbeat moves again: requests to every worker (the clean-up after the error,
the instrumentation's logs, restoring the cluster's settings) leave it out through
:func:`responsive_workers` instead of waiting for its answer for a bound each.

Both errors name the scheduler's address and what was being waited for, so a fit stops
with one line that says what did not answer.
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from collections.abc import Callable, Collection
from typing import Any

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "ClusterTimeoutError",
    "NoWorkersError",
    "call",
    "check_seconds",
    "first_completed",
    "frozen_workers",
    "responsive_workers",
    "result",
    "run_on_workers",
    "running_workers",
    "scheduler_workers",
]

#: Seconds a request to the scheduler may go unanswered before the fit stops. A scheduler
#: answers in milliseconds (~1 ms per RPC measured here); the bound is for the scheduler
#: that answers nothing, and leaves room for a loaded host or a long GC pause.
DEFAULT_TIMEOUT_SECONDS = 30.0

#: Longest slice of a wait on a computation between two questions to the scheduler.
_SLICE_SECONDS = 2.0

#: Period of the questions while waiting for a first worker.
_POLL_SECONDS = 0.2

#: Bound of the requests to a scheduler that already left one unanswered: the clean-up
#: after a timeout (a handful of requests) must not take a full timeout each, and a
#: scheduler that is back answers in milliseconds (and clears the mark).
_AFTER_TIMEOUT_SECONDS = 0.5

#: Clients whose scheduler left a request unanswered (cleared by the next answer).
_UNANSWERED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

#: Per client, the workers found frozen: {address: their scheduler-side ``last_seen``}.
_FROZEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

#: Per client, when each worker's ``last_seen`` was first seen at its current value:
#: {address: (last_seen, monotonic time noticed)}, kept across waits, so that a worker
#: frozen during one wait is not given a fresh ``timeout`` by the next.
_HEARD: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

# asyncio.TimeoutError is the builtin TimeoutError from Python 3.11 on, distinct before.
_TIMEOUTS = (TimeoutError, asyncio.TimeoutError)


class ClusterTimeoutError(TimeoutError):
    """The Dask scheduler did not answer a request within the bound."""


class NoWorkersError(RuntimeError):
    """The cluster has no running workers: none started yet, or all of them lost."""


def check_seconds(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """``value`` as float seconds, or a ValueError naming ``name``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number of seconds {bound}, got {value!r}")
    return float(value)


def unanswered(client: Any) -> bool:
    """Whether the client's scheduler left its latest bounded request unanswered."""
    return client in _UNANSWERED


def scheduler_address(client: Any) -> str:
    return str(getattr(getattr(client, "scheduler", None), "address", None) or "?")


def _timed_out(client: Any, what: str, timeout: float) -> ClusterTimeoutError:
    return ClusterTimeoutError(
        f"the Dask scheduler at {scheduler_address(client)} did not answer within "
        f"{timeout:g} s ({what}); it is stopped, overloaded or cut off (raise the bound "
        "with timeout=, --timeout on the command line)"
    )


def call(
    client: Any, request: Callable[..., Any], *args: Any, what: str, timeout: float, **kwargs: Any
) -> Any:
    """``await request(*args, **kwargs)`` on the client's event loop, at most ``timeout`` s.

    ``request`` returns an awaitable: an RPC such as ``client.scheduler.ncores_running``,
    or a client method called with ``asynchronous=True``.

    Raises
    ------
    ClusterTimeoutError
        When no answer came within ``timeout`` seconds; ``what`` names the request.
    """

    async def run() -> Any:
        return await request(*args, **kwargs)

    bound = min(timeout, _AFTER_TIMEOUT_SECONDS) if client in _UNANSWERED else timeout
    start = time.monotonic()
    try:
        answer = client.sync(run, callback_timeout=bound)
    except _TIMEOUTS:
        if time.monotonic() - start < 0.99 * bound:
            raise  # the request's own TimeoutError, not the bound
        _UNANSWERED[client] = True
        raise _timed_out(client, what, timeout) from None
    _UNANSWERED.pop(client, None)
    return answer


def running_workers(
    client: Any, *, what: str, timeout: float, wait_for_workers: float = 0.0
) -> dict[str, int]:
    """``{address: nthreads}`` of the running workers; wait up to ``wait_for_workers`` s.

    Raises
    ------
    NoWorkersError
        When the cluster still has no running worker after ``wait_for_workers`` seconds.
    ClusterTimeoutError
        When the scheduler does not answer.
    """
    deadline = time.monotonic() + wait_for_workers
    while True:
        workers = call(client, client.scheduler.ncores_running, what=what, timeout=timeout)
        if workers:
            return dict(workers)
        if time.monotonic() >= deadline:
            waited = f" (waited {wait_for_workers:g} s)" if wait_for_workers else ""
            raise NoWorkersError(
                f"the Dask cluster at {scheduler_address(client)} has no workers running"
                f"{waited} ({what}): start some, or wait for them with wait_for_workers="
                "SECONDS (--wait-for-workers on the command line)"
            )
        time.sleep(_POLL_SECONDS)


def scheduler_workers(
    client: Any, *, what: str, timeout: float = DEFAULT_TIMEOUT_SECONDS
) -> dict[str, dict]:
    """``{address: info}`` of every worker the scheduler knows, asked for now.

    Not ``client.scheduler_info()["workers"]``: that returns the client's cache, which
    its periodic refresh (``distributed.client.scheduler-info-interval``) replaces with
    a copy without workers, also between the fresh fetch and the read (a 2-worker
    cluster read as none in 205 of 2,000 calls at a 5 ms refresh; once in a test run
    at the default 2 s).

    Raises
    ------
    ClusterTimeoutError
        When the scheduler does not answer within ``timeout`` seconds.
    """
    info = call(client, client.scheduler.identity, n_workers=-1, what=what, timeout=timeout)
    return dict(info.get("workers", {}))


class _Liveness:
    """Between slices of a wait: the scheduler must answer, have workers in time, and hear
    from each of them.

    A worker that is alive but answers nothing (SIGSTOP, a swapping host) keeps its
    connections open: distributed removes it only after ``worker-ttl`` (5 minutes by
    default), and a computation waiting on it waits that long. Its heartbeats stop, so
    the scheduler's ``last_seen`` for it stops changing; when it has not changed for
    ``timeout`` seconds (measured on this side: no clocks are compared), the wait stops
    with :class:`ClusterTimeoutError` naming the worker.
    """

    def __init__(self, client: Any, what: str, timeout: float, keys: Collection[Any] = ()):
        self.client, self.what, self.timeout = client, what, timeout
        self.keys = list(keys)  # of the futures waited for
        self.without_workers_since: float | None = None
        self.stuck_since: float | None = None
        self._heard: dict[str, tuple[float, float]] = _HEARD.setdefault(client, {})

    def check(self) -> None:
        workers = call(
            self.client, self.client.scheduler.ncores_running, what=self.what, timeout=self.timeout
        )
        if workers:
            self.without_workers_since = None
            self._check_heartbeats(set(workers))
            self._check_runnable()
            return
        now = time.monotonic()
        self.without_workers_since = self.without_workers_since or now
        if now - self.without_workers_since >= self.timeout:
            raise NoWorkersError(
                f"all workers of the Dask cluster at {scheduler_address(self.client)} were "
                f"lost ({self.what}) and none came back within {self.timeout:g} s"
            )

    def _check_heartbeats(self, running: set[str]) -> None:
        identity = call(
            self.client, self.client.scheduler.identity, what=self.what, timeout=self.timeout
        )
        now = time.monotonic()
        workers = identity.get("workers", {})
        for address in set(self._heard) - set(workers):
            del self._heard[address]  # gone: its address is not reused with its history
        for address, info in workers.items():
            seen = info.get("last_seen")
            if address not in running or seen is None:
                continue
            previous = self._heard.get(address)
            if previous is None or previous[0] != seen:
                self._heard[address] = (seen, now)
            elif now - previous[1] >= self.timeout:
                _FROZEN.setdefault(self.client, {})[address] = seen
                raise ClusterTimeoutError(
                    f"worker {address} of the Dask cluster at {scheduler_address(self.client)} "
                    f"sent no heartbeat for {now - previous[1]:.0f} s ({self.what}): it is "
                    "frozen or its host is overloaded; restart it, or raise timeout="
                )

    def _check_runnable(self) -> None:
        """Tasks the wait depends on that no running worker may run (the scheduler's
        ``no-worker`` state: restricted to workers that left) for ``timeout`` seconds end
        the wait: they would wait for those workers for ever."""
        if not self.keys:
            return
        try:
            stuck = call(
                self.client, self.client.run_on_scheduler, _unrunnable_dependencies,
                keys=self.keys, asynchronous=True, what=self.what, timeout=self.timeout,
            )  # fmt: skip
        except ClusterTimeoutError:
            raise
        except Exception:  # noqa: BLE001 - e.g. daskgd not importable where the scheduler runs
            self.keys = []  # the other bounds still hold; this one is off for this wait
            return
        now = time.monotonic()
        if not stuck:
            self.stuck_since = None
            return
        self.stuck_since = self.stuck_since or now
        if now - self.stuck_since >= self.timeout:
            raise ClusterTimeoutError(
                f"{len(stuck)} task(s) ({self.what}) could run on none of the running workers "
                f"of the Dask cluster at {scheduler_address(self.client)} for "
                f"{now - self.stuck_since:.0f} s, e.g. {stuck[0]}: their worker restrictions "
                "name workers that are gone"
            )


def _unrunnable_dependencies(dask_scheduler: Any = None, keys: Collection[Any] = ()) -> list:
    """The tasks in the ``no-worker`` state that ``keys`` wait for (on the scheduler)."""
    stack = [dask_scheduler.tasks.get(key) for key in keys]
    seen, stuck = set(), []
    while stack:
        ts = stack.pop()
        if ts is None or ts.key in seen:
            continue
        seen.add(ts.key)
        if ts.state == "no-worker":
            stuck.append(str(ts.key))
        elif ts.state != "memory":
            stack.extend(ts.dependencies)
    return stuck


def frozen_workers(client: Any) -> set[str]:
    """The workers of ``client`` found frozen and not heard from since (no request)."""
    return set(_FROZEN.get(client, ()))


def responsive_workers(client: Any, *, what: str, timeout: float) -> list[str] | None:
    """The running workers but those found frozen; None when no worker was found frozen
    (a request to every worker then needs no list). A worker whose heartbeat moved since
    it was found frozen is forgotten (one request to the scheduler, only then)."""
    frozen = _FROZEN.get(client)
    if not frozen:
        return None
    identity = call(client, client.scheduler.identity, n_workers=-1, what=what, timeout=timeout)
    workers = identity.get("workers", {})
    for address, seen in list(frozen.items()):
        if address not in workers or workers[address].get("last_seen") != seen:
            del frozen[address]  # beating again, or gone
    return [address for address in workers if address not in frozen]


def run_on_workers(
    client: Any, function: Callable[..., Any], *args: Any, what: str, timeout: float,
    workers: Collection[str] | None = None, **kwargs: Any,
) -> dict:  # fmt: skip
    """``client.run(function, *args, **kwargs)`` on ``workers`` (default: every worker)
    but those found frozen, answered within ``timeout`` seconds; ``{}`` if none is left."""
    responsive = responsive_workers(client, what=what, timeout=timeout)
    if responsive is not None:
        workers = [a for a in (responsive if workers is None else workers) if a in responsive]
        if not workers:
            return {}
    if workers is not None:
        kwargs["workers"] = list(workers)
    try:
        return call(
            client, client.run, function, *args, asynchronous=True, what=what,
            timeout=timeout, **kwargs,
        )  # fmt: skip
    except ClusterTimeoutError as error:
        # client.run waits, through the scheduler, for every worker asked: say which side
        # was silent (a scheduler that answers now clears its mark; one that does not is
        # the error already raised).
        try:
            running = call(client, client.scheduler.ncores_running, what=what,
                           timeout=_AFTER_TIMEOUT_SECONDS)  # fmt: skip
        except ClusterTimeoutError:
            raise error from None
        asked = sorted(workers if workers is not None else running)
        raise ClusterTimeoutError(
            f"the Dask workers {asked} did not all answer within {timeout:g} s ({what}; the "
            f"scheduler at {scheduler_address(client)} does): one of them is stopped, "
            "overloaded or cut off (raise the bound with timeout=, --timeout on the command "
            "line)"
        ) from None


def result(client: Any, future: Any, *, what: str, timeout: float) -> Any:
    """The result of ``future``, however long it computes, while the scheduler answers.

    Raises
    ------
    ClusterTimeoutError, NoWorkersError
        See the module docstring; the task's own exception when it failed.
    """
    liveness = _Liveness(client, what, timeout, keys=[future.key])
    piece = min(timeout, _SLICE_SECONDS)
    while True:
        try:
            return future.result(timeout=piece)
        except _TIMEOUTS:
            # The task's own error is held by the client (no request): raise it. A future
            # that finished just as the slice ended is fetched on the next turn.
            if future.status == "error":
                return future.result()
        liveness.check()


def first_completed(client: Any, futures: Collection[Any], *, what: str, timeout: float) -> set:
    """The futures of ``futures`` that are done, waiting until at least one is."""
    from distributed import wait

    liveness = _Liveness(client, what, timeout, keys=[f.key for f in futures])
    piece = min(timeout, _SLICE_SECONDS)
    while True:
        try:
            with client.as_current():  # wait() finds its client there, not the default
                done, _ = wait(list(futures), timeout=piece, return_when="FIRST_COMPLETED")
            return set(done)
        except _TIMEOUTS:
            liveness.check()


def gather(client: Any, futures: list, *, what: str, timeout: float) -> list:
    """The results of ``futures`` in order: waited for as :func:`first_completed`."""
    pending = set(futures)
    while pending:
        pending -= first_completed(client, pending, what=what, timeout=timeout)
    return call(client, client.gather, futures, asynchronous=True, what=what, timeout=timeout)
