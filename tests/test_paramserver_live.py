"""A parameter-server fit's records reach the callbacks while it runs; a stop ends it.

Real LocalCluster (the session's, 2 workers x 1 thread). Oracles: the fit's own final
records (``FitResult.records``, what ``trace_`` is built from) against those the
callbacks saw live; the clock of the callbacks against the fit's end; the server's own
word on how its run ended (``stopped_by``), the workers' residents (none left), and a
next fit on the same cluster.
"""

from __future__ import annotations

import _thread
import math
import threading
import time
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

import daskgd
from daskgd.data.synthetic import make_classification
from daskgd.engine.callbacks import Callback
from daskgd.engine.driver import IterationRecord
from daskgd.runtime.emulation import Emulation
from daskgd.strategies import get_strategy
from daskgd.strategies.pslive import POLL_SECONDS, LiveRecords
from daskgd.viz.live import LiveTrace
from daskgd.viz.plots import TraceDashboard

#: 4 chunks per worker at 20 ms each: a push every ~80 ms per worker (2 workers), a round
#: of the synchronous server ~90 ms: 30 updates last ~1.2-2.7 s here, several polls.
SLOW = Emulation(chunk_compute_seconds=0.02)
#: Computed only after a stale server's run (NaN in the records passed on live).
EXACT_AFTER = ("loss", "grad_norm", "optimality")


@pytest.fixture(scope="module")
def data(session_client):
    return make_classification(8_000, 6, chunks=1_000, random_state=5)


class Recorder(Callback):
    """Every record with the time it arrived; the result and the fit's end."""

    def __init__(self, raise_at=None, error=None, live=None, snapshot_at=3):
        self.seen: list[tuple[float, IterationRecord]] = []
        self.raise_at, self.error = raise_at, error
        self.live, self.snapshot_at, self.snapshot = live, snapshot_at, None
        self.result, self.ended = None, None

    def on_iteration_end(self, record):
        self.seen.append((time.monotonic(), record))
        if self.live is not None and len(self.seen) == self.snapshot_at:
            self.snapshot = (time.monotonic(), self.live.snapshot())
        if record.iteration == self.raise_at:
            raise self.error

    def on_fit_end(self, result):
        self.result, self.ended = result, time.monotonic()


def _fit(X, y, staleness, callbacks, max_iter=30, emulation=SLOW):
    strategy = get_strategy("parameter-server", staleness=staleness, emulation=emulation,
                            timeout=20)  # fmt: skip
    model = daskgd.LogisticRegression(solver="gd", learning_rate=2.0, max_iter=max_iter,
                                      tol=0.0, strategy=strategy)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", daskgd.ConvergenceWarning)
        return model.fit(X, y, callbacks=callbacks)


def _plain(value):
    """NaN made comparable (equal to NaN), inside the per-worker dicts too."""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _same(live: IterationRecord, final: IterationRecord, skip=()) -> bool:
    return all(_plain(getattr(live, name)) == _plain(getattr(final, name))
               for name in IterationRecord.__dataclass_fields__ if name not in skip)  # fmt: skip


def _differences(live: IterationRecord, final: IterationRecord) -> dict:
    return {name: (getattr(live, name), getattr(final, name))
            for name in IterationRecord.__dataclass_fields__
            if _plain(getattr(live, name)) != _plain(getattr(final, name))}  # fmt: skip


@pytest.mark.parametrize("staleness", [0, 2, None])
def test_records_reach_the_callbacks_during_the_fit(cluster_client, data, staleness):
    X, y = data
    live = LiveTrace()
    recorder = Recorder(live=live)
    model = _fit(X, y, staleness, [live, recorder])
    final = recorder.result.records
    seen = [record for _, record in recorder.seen]
    assert [r.iteration for r in seen] == list(range(31))  # each once, in order
    # Several arrived well before the fit's end (before the last polls): live.
    early = [t for t, _ in recorder.seen if recorder.ended - t > 2 * POLL_SECONDS]
    assert len(early) >= 3, [round(recorder.ended - t, 3) for t, _ in recorder.seen]
    # What was seen live is what the final trace is built from (a stale server's exact
    # losses come after its run: NaN in the records passed on live, then in the final).
    skip = EXACT_AFTER if staleness != 0 else ()
    differ = [(a, b) for a, b in zip(seen, final, strict=True) if not _same(a, b, skip)]
    assert not differ, _differences(*differ[0])
    if staleness != 0:  # those passed on by the polls: no loss yet; the final: measured
        assert all(math.isnan(r.loss) for r in seen[: len(early)])
        assert not math.isnan(final[0].loss) and not math.isnan(final[-1].loss)
    trace = model.trace_
    assert trace.iteration.values.tolist() == [r.iteration for r in seen]
    np.testing.assert_array_equal(trace.elapsed_seconds.values, [r.elapsed_seconds for r in seen])
    staleness_seen = [max((m["staleness"] for m in (r.worker_measures or {}).values()
                           if not math.isnan(m["staleness"])), default=math.nan)
                      for r in seen]  # fmt: skip
    np.testing.assert_array_equal(trace.staleness.max("worker").values, staleness_seen)
    # A LiveTrace snapshot taken mid-fit holds some iterations, not all; at the end it
    # holds the final records (the exact losses included).
    taken, snapshot = recorder.snapshot
    assert recorder.ended - taken > POLL_SECONDS
    assert 0 < snapshot.sizes["iteration"] < trace.sizes["iteration"]
    assert snapshot.attrs["daskgd_live"] == 1
    TraceDashboard().update(snapshot)  # the dashboard takes it (a stale server's: no loss yet)
    np.testing.assert_array_equal(live.snapshot().loss.values, trace.loss.values)
    assert live.snapshot().attrs["daskgd_live"] == 0


def _residents(client) -> dict:
    """{worker: number of daskgd runs it holds}."""

    def count(dask_worker):
        plugin = dask_worker.plugins.get("daskgd-runtime")
        return len(getattr(plugin, "residents", {}))

    return client.run(count)


@pytest.mark.parametrize("staleness", [0, 2, None])
def test_a_raising_callback_stops_the_fit_on_the_cluster(cluster_client, data, staleness):
    """A callback raising at iteration 5 of a fit of 3,000 updates (two minutes or
    more): the error is raised, the server said it stopped when told (not at max_iter),
    no resident is left, and the next fit runs on the same workers."""
    X, y = data
    recorder = Recorder(raise_at=5, error=RuntimeError("a callback fails at 5"))
    with pytest.raises(RuntimeError, match="a callback fails at 5"):
        _fit(X, y, staleness, [recorder], max_iter=3_000)
    assert [r.iteration for _, r in recorder.seen] == list(range(6))
    assert recorder.result.info["stopped_by"] == "client"  # the server's own word
    assert recorder.result.n_iter == 5 and len(recorder.result.records) == 6
    assert set(_residents(cluster_client).values()) == {0}
    following = Recorder()
    assert _fit(X, y, staleness, [following], max_iter=3).n_iter_[0] == 3
    assert [r.iteration for _, r in following.seen] == [0, 1, 2, 3]


def test_an_interrupted_wait_stops_the_fit(cluster_client, data, request):
    """KeyboardInterrupt in the client's thread while it waits (as Ctrl-C in a notebook
    delivers it), a few records into a long asynchronous fit."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("KeyboardInterrupt is delivered to the main thread only")
    X, y = data

    class Interrupter(Recorder):
        def on_iteration_end(self, record):
            super().on_iteration_end(record)
            if record.iteration == 3:  # from another thread, as a signal arrives
                threading.Timer(0.05, _thread.interrupt_main).start()

    # Python's own SIGINT handler, as in a notebook or a shell: dask_jobqueue's import
    # replaces it by one calling sys.exit() (seen here after another module imported it)
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    recorder = Interrupter()
    with pytest.raises(KeyboardInterrupt):
        _fit(X, y, None, [recorder], max_iter=3_000)
        time.sleep(30)  # not reached; else the interrupt lands here, and the asserts fail
    assert recorder.result.info["stopped_by"] == "client"
    assert set(_residents(cluster_client).values()) == {0}
    assert _fit(X, y, None, [], max_iter=2).n_iter_[0] == 2


def wait_for_go(resident, seconds):
    """A call that holds the worker's only thread until a peek says go (bounded)."""
    deadline = time.monotonic() + seconds
    while not resident.state.get("go"):
        if time.monotonic() > deadline:
            return "no go"
        time.sleep(0.01)
    return resident.rank


def say_go(resident):
    resident.state["go"] = True
    return resident.address


def fail(resident):
    raise RuntimeError("a peek that fails")


def test_a_peek_runs_beside_a_call_that_holds_the_workers_thread(cluster_client):
    """The workers have one thread each, held by the call: the peek runs on their event
    loops (in a thread it would wait for the call, which waits for it: 'no go')."""
    from daskgd.data import distribute
    from daskgd.models import Logistic
    from daskgd.runtime.handle import Runtime

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(400, 3)), (rng.random(400) < 0.5).astype(float)
    data = distribute(X, y, cluster_client, chunks_per_worker=1)
    with Runtime(cluster_client, data, Logistic(), True, timeout=20) as runtime:
        future = runtime.call_soon(wait_for_go, (15.0,))
        assert runtime.peek(fail) == {}  # a failing peek: no answer, no error
        assert sorted(runtime.peek(say_go)) == sorted(runtime.workers)
        results = future.result(timeout=30)
        assert sorted(results.values()) == list(range(len(runtime.workers)))
        assert runtime.peek(say_go)  # and it serves the next requests
        assert sorted(runtime.call(say_go).values()) == sorted(runtime.workers)


class _Polls:
    """A runtime whose peeks answer from a script: one {address: reply} per poll."""

    workers = ("a", "b")

    def __init__(self, replies):
        self.replies = list(replies)

    def peek(self, function, *args):
        return self.replies.pop(0)


def _measures(compute):
    return {"compute_seconds": compute, "bytes_sent": 8.0}


def test_a_record_is_passed_on_once_the_measures_of_its_pushes_are_known():
    """An update applying b's push waits for b's measures of that push; the records
    then are those the final build makes from the same data."""
    from daskgd.strategies.pslive import async_records

    events = [
        {"iteration": 1, "time": 11.0, "step_size": 0.5, "applied": [("a", 0, 0), ("b", 0, 0)],
         "server": {"bytes_received": 16, "bytes_sent": 16, "seconds": 0.001}},
        {"iteration": 2, "time": 12.0, "step_size": 0.5, "applied": [("a", 1, 1)],
         "server": {"bytes_received": 8, "bytes_sent": 8, "seconds": 0.001}},
    ]  # fmt: skip
    polls = _Polls([
        {"a": {"records": [(0, _measures(1.0))], "cursor": 1, "started_at": 10.0,
               "rows": events[:1]}, "b": {"records": [], "cursor": 0}},
        {"a": {"records": [(1, _measures(2.0))], "cursor": 2, "started_at": 10.0,
               "rows": events[1:]}, "b": {"records": [], "cursor": 0}},
        {"a": {"records": [], "cursor": 2, "started_at": 10.0, "rows": []},
         "b": {"records": [(0, _measures(3.0))], "cursor": 1}},
    ])  # fmt: skip
    live = LiveRecords("token", "a", synchronous=False)
    assert [r.iteration for r in live.poll(polls)] == [0]  # update 1 waits for b's push
    assert live.poll(polls) == []  # update 2 is complete but comes after update 1
    ready = live.poll(polls)
    assert [r.iteration for r in ready] == [1, 2]

    records = {"a": {0: _measures(1.0), 1: _measures(2.0)}, "b": {0: _measures(3.0)}}
    final = async_records(SimpleNamespace(started_at=10.0, events=events), records, {}, "a")
    assert all(_same(a, b) for a, b in zip(ready, final[1:], strict=True))
    assert ready[0].worker_measures["b"]["compute_seconds"] == 3.0
    assert ready[1].wall_seconds == pytest.approx(1.0)


def test_a_run_failing_with_a_timeout_of_its_own_is_raised_not_waited_on():
    """A TimeoutError of the run (the runtime's 'did not answer', a recv's) is its
    result, not "not done yet": follow raises it (it looped on it before: a hang)."""
    from concurrent.futures import Future

    from daskgd.strategies.pslive import follow

    class Failed:
        timeout = 1.0
        workers = ("a",)

        def call_soon(self, function, args, timeout):
            future = Future()
            future.set_exception(TimeoutError("workers ['a'] did not answer within 1 s"))
            return future

        def peek(self, function, *args):
            raise AssertionError("a finished run is not polled nor stopped")

    live = LiveRecords("token", "a", synchronous=False)
    job = SimpleNamespace(token="token")
    with pytest.raises(TimeoutError, match="did not answer"):
        follow(Failed(), print, job, 10.0, live, [Callback()])
    assert live.stopped == ""


def test_a_server_failing_with_a_timeout_of_its_own_is_raised_as_it_is(monkeypatch):
    """The server's coroutine ending in a RecvTimeoutError (no push for its timeout) is
    that error, not "the server did not end" (both are TimeoutErrors: it was caught so)."""
    import asyncio

    from daskgd.runtime import server as ps
    from daskgd.runtime.messaging import RecvTimeoutError

    async def no_push(resident, job, progress):
        raise RecvTimeoutError("no push within 1 s")

    monkeypatch.setattr(ps, "serve", no_push)
    monkeypatch.setattr(ps, "work", lambda *args: None)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        resident = SimpleNamespace(address="a", peers=("a",), state={}, _loop=loop)
        job = SimpleNamespace(token="t", server="a", w0=np.zeros(2), timeout=1.0)
        with pytest.raises(RecvTimeoutError, match="no push within"):
            ps.run_async(resident, job)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
