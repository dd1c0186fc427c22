"""The records of a parameter-server fit, passed to the callbacks while it runs.

A parameter-server fit is one request to the workers (:meth:`Runtime.call_soon`), the
server and the workers keeping what the trace is built from in their residents' state:
the server its rows (staleness=0: one per round) or events (one per update), every
worker what it measured for each push. While the request runs, the client polls every
:data:`POLL_SECONDS` (:func:`follow`): one :meth:`Runtime.peek` per poll, a handler run
on each worker's event loop that returns what was added since the last poll (no thread
of the worker is waited for, nothing is kept for the client: the cursors are the
client's). The client builds the new :class:`IterationRecord`\\ s with the same
functions that build the final ones (:func:`sync_records`, :func:`async_records`) and
passes them on in order. A record is passed on once the measures of every push it
applied are known (a worker files them just after its push, so at most one poll
later), counting the workers of the current attempt only, as the final build does (a
worker lost since: its pushes' measures are NaN there, and here). So after a lost
worker the records passed on before its loss keep its measures, which the final trace
no longer has (seen with ``KillAt``: records 0-9 of 40; every record still arrived live,
in order).

So the records seen live are those of the final trace, with one difference: with
staleness != 0 the full-data loss, gradient norm and optimality are evaluated after the
run (the workers are not stalled for them), so they are NaN in the records passed on
live and in the final records only; a :class:`~daskgd.viz.live.LiveTrace` takes the
final records at the fit's end. Records not yet passed on when the request ends follow
from the final ones.

Stop: if a callback raises, or the client's wait is interrupted (KeyboardInterrupt),
the client asks the server to stop (:func:`daskgd.runtime.server.request_stop`, a
peek setting a flag the server reads before each update or round), waits (bounded by
the runtime's timeout and 5 s) for the request to end (the server sends every worker
its stop, as at a normal end), then the error propagates: nothing runs on, and the
cluster serves the next fit.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Sequence
from concurrent.futures import wait
from typing import Any

from daskgd.engine.callbacks import Callback
from daskgd.engine.driver import IterationRecord
from daskgd.runtime import server as ps

__all__ = ["POLL_SECONDS", "LiveRecords", "async_records", "follow", "sync_records"]

#: Seconds between two polls of a running fit. A poll is one small message per worker,
#: answered on its event loop (the server's coroutine waits for that long): measured
#: overhead in the module docstring of :mod:`daskgd.strategies.paramserver`.
POLL_SECONDS = 0.2
#: Seconds a stopped fit may take beyond the runtime's timeout to end.
STOP_SECONDS = 5.0


# -- the records, from what the server and the workers keep ----------------------------------


def sync_record(row: dict, previous: float, started: float, records: dict) -> IterationRecord:
    """One round's record (staleness=0): the sums of its evaluations' measures."""
    per_worker: dict[str, dict] = {}
    for address, measured in records.items():
        for number in row["evaluations"]:
            if number in measured:
                into = per_worker.setdefault(address, {"staleness": 0.0})
                for name, value in measured[number].items():
                    into[name] = into.get(name, 0.0) + float(value)
    return _record(row["iteration"], row, previous, started, len(row["evaluations"]), per_worker)


def sync_records(progress: Any, records: dict) -> list[IterationRecord]:
    out, previous = [], progress.started_at
    for row in progress.rows:
        out.append(sync_record(row, previous, progress.started_at, records))
        previous = row["time"]
    return out


def first_event(started: float) -> dict:
    """The event of iteration 0 (w0) of a stale server: nothing applied yet."""
    return {"iteration": 0, "time": started, "step_size": 0.0, "applied": [], "server": {}}


def async_record(event: dict, previous: float, started: float, records: dict, exact: dict,
                 server: str) -> IterationRecord:  # fmt: skip
    """One update's record (staleness != 0); ``exact`` {version: loss, ...} as known."""
    blank = {"loss": math.nan, "grad_norm": math.nan, "optimality": math.nan}
    row = {**event, **exact.get(event["iteration"], blank)}
    per_worker = _push_measures(event, records, server)
    return _record(event["iteration"], row, previous, started, len(event["applied"]), per_worker)


def async_records(progress: Any, records: dict, exact: dict, server: str) -> list:
    out, previous = [], progress.started_at
    for event in [first_event(progress.started_at), *progress.events]:
        out.append(async_record(event, previous, progress.started_at, records, exact, server))
        previous = event["time"]
    return out


def _record(iteration, row, previous, started, n_evaluations, per_worker) -> IterationRecord:
    return IterationRecord(
        iteration=iteration, loss=row["loss"], grad_norm=row["grad_norm"],
        optimality=row["optimality"], step_size=row["step_size"],
        wall_seconds=row["time"] - previous, elapsed_seconds=row["time"] - started,
        n_evaluations=n_evaluations, evaluation_seconds=row["time"] - previous,
        attempts=n_evaluations, key_prefixes=("parameter-server",), start_time=previous,
        worker_measures=per_worker or None,
    )  # fmt: skip


def _push_measures(event: dict, records: dict, server: str) -> dict[str, dict]:
    """Per worker at one update: the applied pushes' measures and staleness; the server's
    worker adds the server's traffic (its staleness NaN unless its own sum was applied).
    A push whose worker was lost since has its staleness only (its measures went too)."""
    per_worker: dict[str, dict] = {}
    for address, staleness, version in event["applied"]:
        measured = records.get(address, {}).get(version) or dict.fromkeys(ps._TIMED, math.nan)
        into = per_worker.setdefault(address, {"staleness": float(staleness)})
        into["staleness"] = max(into["staleness"], float(staleness))
        for name, value in measured.items():
            into[name] = into.get(name, 0.0) + float(value)
    traffic = event.get("server")
    if traffic:
        into = per_worker.setdefault(server, {"staleness": math.nan, "compute_seconds": 0.0})
        for name, value in (("bytes_received", traffic.get("bytes_received", 0)),
                            ("bytes_sent", traffic.get("bytes_sent", 0)),
                            ("communication_seconds", traffic.get("seconds", 0.0))):  # fmt: skip
            into[name] = into.get(name, 0.0) + float(value)
    return per_worker


# -- on the workers: what a poll reads (a peek, on the event loop) ---------------------------


def progress_since(resident: Any, token: str, cursors: dict, n_rows: int) -> dict:
    """What fit ``token`` added here since the client's cursors: this worker's measures
    after the first ``cursors[address]``, and on the server its rows after ``n_rows``."""
    records = ps.records_of(resident, token)
    start = cursors.get(resident.address, 0)
    new: list = []
    for _ in range(3):  # the worker's thread may add one while this reads: read again
        try:
            new = list(itertools.islice(records.items(), start, None))
            break
        except RuntimeError:
            continue
    reply: dict[str, Any] = {"records": new, "cursor": start + len(new)}
    progress = resident.state.get(f"{ps.STATE}-{token}-progress")
    if progress is not None:  # the server: a slice of a list is taken at once
        rows = progress.rows if hasattr(progress, "rows") else progress.events
        reply.update(started_at=progress.started_at, rows=rows[n_rows:])
    return reply


# -- on the client ---------------------------------------------------------------------------


class LiveRecords:
    """The records of a running fit built from polls, each passed on once complete."""

    def __init__(self, token: str, server: str, synchronous: bool):
        self.token, self.server, self.synchronous = token, server, synchronous
        self.cursors: dict[str, int] = {}
        self.measured: dict[str, dict] = {}
        self.rows: list[dict] = []
        self.n_rows = 0  # the server's rows read (the async first event is not one)
        self.started_at = math.nan  # the server's clock at the start, once polled
        self.built = 0  # records built (returned by poll)
        self.delivered: list[IterationRecord] = []  # passed on to the callbacks
        #: after a stop: the server's word on how it ended ('client': it stopped when told)
        self.stopped = ""

    def poll(self, runtime: Any) -> list[IterationRecord]:
        """Read what was added since the last poll; the records now complete, in order."""
        replies = runtime.peek(progress_since, self.token, dict(self.cursors), self.n_rows)
        for address, reply in replies.items():
            self.measured.setdefault(address, {}).update(reply["records"])
            self.cursors[address] = reply["cursor"]
        reply = replies.get(self.server)
        if reply is not None and "started_at" in reply:
            if math.isnan(self.started_at):
                self.started_at = reply["started_at"]
                if not self.synchronous:
                    self.rows.append(first_event(self.started_at))
            self.rows += reply["rows"]
            self.n_rows += len(reply["rows"])
        return self._complete(runtime.workers)

    def _complete(self, workers: Sequence[str]) -> list[IterationRecord]:
        # The workers of the current attempt, as the final build has them: a worker lost
        # since has no measures there (its pushes' measures are NaN), so none here.
        current = {address: self.measured.get(address, {}) for address in workers}
        out: list[IterationRecord] = []
        while (index := self.built + len(out)) < len(self.rows):
            row = self.rows[index]
            if not self._known(row, current):
                break
            previous = self.rows[index - 1]["time"] if index else self.started_at
            if self.synchronous:
                out.append(sync_record(row, previous, self.started_at, current))
            else:
                out.append(async_record(row, previous, self.started_at, current, {},
                                        self.server))  # fmt: skip
        self.built += len(out)
        return out

    @staticmethod
    def _known(row: dict, current: dict[str, dict]) -> bool:
        if "evaluations" in row:  # a round: every worker computes every evaluation, but
            # one that joined later (a lost worker's replacement) only those after it came
            last = max(row["evaluations"], default=-1)
            return all(number in measured for measured in current.values()
                       if not measured or next(iter(measured)) <= last
                       for number in row["evaluations"])  # fmt: skip
        return all(version in current[address]
                   for address, _, version in row["applied"] if address in current)  # fmt: skip


def deliver(live: LiveRecords, records: Sequence[IterationRecord],
            callbacks: Sequence[Callback]) -> None:  # fmt: skip
    for record in records:
        live.delivered.append(record)  # before the callbacks: one that raises saw it
        for callback in callbacks:
            callback.on_iteration_end(record)


def follow(runtime: Any, function: Callable, job: Any, bound: float, live: LiveRecords,
           callbacks: Sequence[Callback]) -> Any:  # fmt: skip
    """Run ``function(resident, job)`` on the workers (the whole fit), passing the records
    to the callbacks as they are made; on any error or interrupt, stop it and re-raise."""
    future = runtime.call_soon(function, (job,), timeout=bound)
    try:
        # wait(), not result(timeout): a run failing with a TimeoutError of its own (the
        # runtime's, a recv's) must not read as "not done yet"
        while not wait([future], timeout=POLL_SECONDS).done:
            if callbacks:
                deliver(live, live.poll(runtime), callbacks)
        return future.result()
    except BaseException:
        live.stopped = stop(runtime, job.token, future, live.server)
        raise


def stop(runtime: Any, token: str, future: Any, server: str) -> str:
    """Ask the server to stop and wait, bounded, for the request to end: how the server
    says it ended ('' if it did not answer; a request that failed on its own is not
    the error to report: the caller re-raises the first)."""
    with contextlib.suppress(Exception):  # past the bound: the session's close drops the
        if not future.done():  # residents, which ends their waits
            runtime.peek(ps.request_stop, token)
        progress = future.result(timeout=runtime.timeout + STOP_SECONDS)[server]["progress"]
        return str(progress.stopped)
    return ""
