"""The worker-resident runtime on real clusters: sums against numpy on the whole array,
the ring all-reduce against the plain sum, measures, isolation of concurrent runs,
cleanup, a worker killed with SIGKILL, bad arguments.

Every cluster here is a LocalCluster of worker processes (nannies), every wait bounded
(the runtime's own timeouts, pytest-timeout as a backstop).
"""

from __future__ import annotations

import gc
import threading
import time

import numpy as np
import pytest
from scipy.special import expit

from daskgd.data import distribute
from daskgd.models import LeastSquares, Logistic
from daskgd.runtime.codecs import HEAD
from daskgd.runtime.emulation import Emulation, kill_worker
from daskgd.runtime.handle import Runtime
from daskgd.runtime.plugin import PLUGIN_NAME
from daskgd.runtime.resident import CallAbortedError, RecvTimeoutError

pytestmark = pytest.mark.timeout(400)

N_ROWS, N_FEATURES = 2_000, 5


def _problem(seed=0, n=N_ROWS, d=N_FEATURES, classification=True):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    coef = rng.normal(size=d)
    if classification:
        y = (rng.random(n) < expit(X @ coef)).astype(np.float64)
    else:
        y = X @ coef + rng.normal(scale=0.5, size=n)
    return X, y


def _numpy_totals(model, X, y, w, fit_intercept):
    """[loss_sum, grad..., n_rows] written out with numpy on the whole array."""
    coef, intercept = (w[:-1], w[-1]) if fit_intercept else (w, 0.0)
    z = X @ coef + intercept
    if isinstance(model, LeastSquares):
        loss, residual = 0.5 * np.sum((z - y) ** 2), z - y
    else:
        loss = np.sum(np.logaddexp(0.0, z) - y * z)
        residual = expit(z) - y
    grad = X.T @ residual
    if fit_intercept:
        grad = np.append(grad, residual.sum())
    return np.concatenate([[loss], grad, [len(y)]])


# -- functions run on the residents (module level: pickled by reference) -------------------


def ring_of_ranks(resident, vector, tag="sum"):
    """Each resident contributes vector * (rank + 1); returns the ring total."""
    return resident.allreduce(np.asarray(vector) * (resident.rank + 1), tag)


def ring_with_bytes(resident, vector):
    total = resident.allreduce(vector * (resident.rank + 1), "sum")
    return total, resident.meter.bytes_sent, resident.meter.bytes_received


def ring_gradient(resident, w):
    """The allreduce strategy's shape: local sums, then the ring total on every worker."""
    return resident.allreduce(resident.local_sums(w), "gradient")


def ring_both_ways(resident, vector):
    """The ring and the exchange on the same contributions."""
    mine = vector * (resident.rank + 1)
    return resident.allreduce(mine, "r"), resident.allreduce(mine, "e", algorithm="exchange")


def many_in_order(resident, count):
    """Rank 0 fires ``count`` messages under one tag without waiting; rank 1 reads them."""
    if resident.rank == 0:
        for index in range(count):
            resident.send(resident.peers[1], "stream", np.array([float(index)]), wait=False)
        return None
    return [float(resident.recv("stream")[0]) for _ in range(count)]


def describe(resident):
    return {"rank": resident.rank, "peers": resident.peers, "blocks": resident.blocks}


def count_calls(resident):
    resident.state["calls"] = resident.state.get("calls", 0) + 1
    return resident.state["calls"]


def wait_forever(resident, timeout):
    return resident.recv("never sent", timeout=timeout)


def fail_on_rank_zero(resident):
    if resident.rank == 0:
        raise ValueError("rank zero refuses")
    return resident.recv("from rank zero")  # blocked until the client aborts the call


def slow_sender(resident, seconds):
    """Rank 1 sends to rank 0 after ``seconds``; rank 0 waits for it."""
    if len(resident.peers) == 1:  # every chunk was recomputed on the survivor
        return np.ones(3)
    if resident.rank == 1:
        time.sleep(seconds)
        resident.send(resident.peers[0], "late", np.ones(3))
        return None
    return resident.recv("late")


def residents_alive(run_id, dask_worker=None):
    from daskgd.runtime.resident import Resident

    return sum(1 for obj in gc.get_objects() if isinstance(obj, Resident) and obj.run_id == run_id)


def runs_on_worker(dask_worker=None):
    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    return [] if plugin is None else sorted(plugin.residents)


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classification(session_client):
    X, y = _problem(0)
    return X, y, distribute(X, y, session_client, chunks_per_worker=3)


@pytest.fixture(scope="module")
def three_workers():
    """A Client on its own LocalCluster of 3 worker processes (a ring of three)."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=3, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        client.wait_for_workers(3, timeout=60)
        yield client


# -- evaluate ----------------------------------------------------------------------------


@pytest.mark.parametrize("model", [LeastSquares(), Logistic()], ids=["least_squares", "logistic"])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_evaluate_matches_numpy_on_the_whole_array(cluster_client, model, fit_intercept):
    X, y = _problem(1, classification=isinstance(model, Logistic))
    data = distribute(X, y, cluster_client, chunks_per_worker=2)
    w = np.random.default_rng(2).normal(size=N_FEATURES + fit_intercept)
    with Runtime(cluster_client, data, model, fit_intercept) as runtime:
        total, measures = runtime.evaluate(w)
        assert len(runtime.workers) == 2
        assert set(measures) == set(runtime.workers)
    np.testing.assert_allclose(total, _numpy_totals(model, X, y, w, fit_intercept), rtol=1e-10)


def test_evaluate_on_blocks_sums_those_chunks_only(cluster_client, classification):
    X, y, data = classification
    w = np.random.default_rng(3).normal(size=N_FEATURES + 1)
    offsets = np.cumsum((0,) + data.chunk_rows)
    with Runtime(cluster_client, data, Logistic(), True) as runtime:
        for blocks in ([0], [1, 4], [5, 0, 2], [3, 3]):
            total, measures = runtime.evaluate(w, blocks=blocks)
            rows = np.concatenate([np.arange(offsets[b], offsets[b + 1]) for b in blocks])
            expected = _numpy_totals(Logistic(), X[rows], y[rows], w, True)
            np.testing.assert_allclose(total, expected, rtol=1e-10)
            holders = {runtime.owners[b] for b in blocks}
            assert set(measures) == holders  # only the holders were asked


def test_evaluate_is_deterministic(cluster_client, classification):
    _, _, data = classification
    w = np.full(N_FEATURES + 1, 0.1)
    with Runtime(cluster_client, data, Logistic(), True) as runtime:
        first = runtime.evaluate(w)[0]
        assert all(np.array_equal(runtime.evaluate(w)[0], first) for _ in range(5))


def test_measures_are_taken_on_the_workers(cluster_client, classification):
    _, _, data = classification
    n_params = N_FEATURES + 1
    with Runtime(cluster_client, data, Logistic(), True) as runtime:
        total, measures = runtime.evaluate(np.zeros(n_params))
    assert measures.attempts == 1 and measures.workers_lost == ()
    assert measures.wall_seconds > 0 and measures.seconds_lost == 0
    for values in measures.values():
        assert values["compute_seconds"] > 0
        assert values["communication_seconds"] > 0
        assert values["wait_seconds"] >= 0
        assert values["bytes_received"] == 8 * n_params  # w
        assert values["bytes_sent"] == 8 * (n_params + 2)  # the packed partial
        assert values["messages_sent"] == values["messages_received"] == 1
        assert values["round_trip_seconds"] >= values["handler_seconds"] > 0
    # the slowest worker waited for nobody
    assert min(values["wait_seconds"] for values in measures.values()) == 0


def test_a_codec_on_the_wire(cluster_client, classification):
    X, y, data = classification
    w = np.random.default_rng(4).normal(size=N_FEATURES + 1)
    exact = _numpy_totals(Logistic(), X, y, w, True)
    with Runtime(cluster_client, data, Logistic(), True, codec="float32") as runtime:
        total, measures = runtime.evaluate(w)
        # w and the gradient cross as float32; loss and row count stay exact
        np.testing.assert_allclose(total, exact, rtol=1e-5)
        assert total[-1] == N_ROWS
        for values in measures.values():
            assert values["bytes_received"] == 4 * (N_FEATURES + 1)
            assert values["bytes_sent"] == 8 * HEAD + 4 * (N_FEATURES + 1)
        results = runtime.call(ring_of_ranks, np.linspace(-1, 1, 9))
    first = next(iter(results.values()))
    assert all(np.array_equal(first, other) for other in results.values())
    np.testing.assert_allclose(first, 3 * np.linspace(-1, 1, 9), rtol=1e-6)


def test_emulated_latency_shows_as_communication(cluster_client, classification):
    _, _, data = classification
    latency = 0.02
    with Runtime(cluster_client, data, Logistic(), True,
                 emulation=Emulation(latency_seconds=latency)) as runtime:  # fmt: skip
        _, measures = runtime.evaluate(np.zeros(N_FEATURES + 1))
        results = runtime.call(ring_with_bytes, np.ones(4))
    for values in measures.values():  # w out and the partial back: two trips
        assert values["communication_seconds"] >= 2 * latency
    for values in results.measures.values():  # two ring messages received per worker
        assert values["communication_seconds"] + values["wait_seconds"] >= 2 * latency


def test_an_emulated_straggler_computes_slower(cluster_client, classification):
    _, _, data = classification
    workers = sorted(cluster_client.ncores())
    emulation = Emulation(stragglers={1: 10.0})  # worker index 1 of the sorted workers
    with Runtime(cluster_client, data, Logistic(), True, emulation=emulation) as runtime:
        samples = [runtime.evaluate(np.zeros(N_FEATURES + 1))[1] for _ in range(7)]
    slow, other = workers[1], workers[0]
    ratios = [m[slow]["compute_seconds"] / m[other]["compute_seconds"] for m in samples]
    # 10x by construction; the median stays far above 1 however loaded the machine is
    assert np.median(ratios) > 3


# -- call and allreduce ------------------------------------------------------------------


def test_allreduce_on_two_workers(cluster_client, classification):
    _, _, data = classification
    vector = np.random.default_rng(5).normal(size=21)
    with Runtime(cluster_client, data, Logistic(), True) as runtime:
        results = runtime.call(ring_with_bytes, vector)
    totals = [total for total, _, _ in results.values()]
    np.testing.assert_allclose(totals[0], 3 * vector, rtol=1e-14)
    assert all(np.array_equal(totals[0], total) for total in totals)
    for _, sent, received in results.values():
        # 2 (m - 1) / m x size with m = 2: the whole vector once out and once in
        assert sent == received == vector.nbytes


def test_allreduce_on_a_ring_of_three(three_workers):
    client = three_workers
    X, y = _problem(6, n=3_000)
    data = distribute(X, y, client, chunks_per_worker=2)
    vector = np.random.default_rng(7).normal(size=300)
    with Runtime(client, data, Logistic(), True) as runtime:
        assert len(runtime.workers) == 3
        workers = runtime.workers
        ranks = runtime.call(describe)
        results = runtime.call(ring_with_bytes, vector)
        gradients = runtime.call(ring_gradient, np.zeros(N_FEATURES + 1))
        total, _ = runtime.evaluate(np.zeros(N_FEATURES + 1))
    assert sorted(r["rank"] for r in ranks.values()) == [0, 1, 2]
    assert all(r["peers"] == workers for r in ranks.values())
    assert [ranks[address]["rank"] for address in workers] == [0, 1, 2]
    totals = [total for total, _, _ in results.values()]
    np.testing.assert_allclose(totals[0], (1 + 2 + 3) * vector, rtol=1e-13)
    assert all(np.array_equal(totals[0], other) for other in totals)  # the same bits
    for _, sent, received in results.values():
        assert sent == received == 2 * (3 - 1) * vector.nbytes // 3  # 2 (m-1)/m x size
    first = next(iter(gradients.values()))
    assert all(np.array_equal(first, other) for other in gradients.values())
    np.testing.assert_allclose(first, total, rtol=1e-12)


def test_exchange_gives_the_ring_total_in_one_step(three_workers):
    client = three_workers
    X, y = _problem(13, n=1_500)
    data = distribute(X, y, client)
    vector = np.random.default_rng(14).normal(size=50)
    with Runtime(client, data, Logistic(), True, codec="bfloat16") as runtime:
        results = runtime.call(ring_both_ways, vector)
    rings = [ring for ring, _ in results.values()]
    exchanges = [exchange for _, exchange in results.values()]
    assert all(np.array_equal(rings[0], other) for other in rings)  # lossy codec, same bits
    assert all(np.array_equal(exchanges[0], other) for other in exchanges)
    np.testing.assert_allclose(exchanges[0], 6 * vector, rtol=2e-2, atol=1e-2)
    np.testing.assert_allclose(rings[0], 6 * vector, rtol=2e-2, atol=1e-2)


def test_messages_of_one_sender_arrive_in_order(cluster_client, classification):
    _, _, data = classification
    with Runtime(cluster_client, data, Logistic(), True) as runtime:
        results = runtime.call(many_in_order, 200)
    assert results[runtime_rank_one(results)] == [float(i) for i in range(200)]


def runtime_rank_one(results):
    return next(address for address, value in results.items() if value is not None)


def test_allreduce_on_one_worker_returns_the_vector(cluster_client):
    X, y = _problem(8, n=500)
    one = sorted(cluster_client.ncores())[:1]
    data = distribute(X, y, cluster_client, workers=one, chunks_per_worker=2)
    with Runtime(cluster_client, data, Logistic(), True) as runtime:
        assert runtime.workers == tuple(one)
        results = runtime.call(ring_of_ranks, np.arange(5.0))
    np.testing.assert_array_equal(results[one[0]], np.arange(5.0))


def test_state_persists_between_calls(cluster_client, classification):
    _, _, data = classification
    with Runtime(cluster_client, data, Logistic(), True) as runtime:
        counts = [runtime.call(count_calls) for _ in range(3)]
    assert [set(c.values()) for c in counts] == [{1}, {2}, {3}]


# -- isolation and cleanup ---------------------------------------------------------------


def test_two_concurrent_runtimes_do_not_interfere(cluster_client, classification):
    X, y, data = classification
    w = np.full(N_FEATURES + 1, -0.2)
    expected = _numpy_totals(Logistic(), X, y, w, True)
    vectors = [np.arange(7.0), -np.arange(7.0) * 10]
    outcomes: dict[int, list] = {0: [], 1: []}

    def work(index, runtime):
        for _ in range(15):  # the same tags in both runs, at the same time
            outcomes[index].append(runtime.call(ring_of_ranks, vectors[index]))
            outcomes[index].append(runtime.evaluate(w)[0])

    with (
        Runtime(cluster_client, data, Logistic(), True) as first,
        Runtime(cluster_client, data, Logistic(), True) as second,
    ):
        assert first.run_id != second.run_id
        threads = [threading.Thread(target=work, args=pair) for pair in enumerate([first, second])]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads)
        plugins = cluster_client.run(lambda dask_worker: list(dask_worker.plugins))
        assert all(names.count(PLUGIN_NAME) == 1 for names in plugins.values())
    for index in (0, 1):
        assert len(outcomes[index]) == 30
        for outcome in outcomes[index]:
            if isinstance(outcome, dict):
                for total in outcome.values():
                    np.testing.assert_allclose(total, 3 * vectors[index], rtol=1e-14)
            else:
                np.testing.assert_allclose(outcome, expected, rtol=1e-10)


def test_close_leaves_nothing_on_the_workers(cluster_client, classification):
    _, _, data = classification
    with Runtime(cluster_client, data, Logistic(), True) as runtime:
        runtime.call(count_calls)
        run_id = runtime.run_id
        held = cluster_client.run(runs_on_worker)
        assert all(run_id in runs for runs in held.values())
    assert all(run_id not in runs for runs in cluster_client.run(runs_on_worker).values())
    cluster_client.run(gc.collect)
    alive = cluster_client.run(residents_alive, run_id)
    assert set(alive.values()) == {0}  # no reference to the chunks left behind


# -- bad input and bounded waits ---------------------------------------------------------


def test_bad_arguments_give_clear_errors(cluster_client, classification):
    _, _, data = classification
    with Runtime(cluster_client, data, Logistic(), True) as runtime:
        with pytest.raises(ValueError, match="unknown block index 6 .* 6 chunks"):
            runtime.evaluate(np.zeros(N_FEATURES + 1), blocks=[0, 6])
        with pytest.raises(ValueError, match="vector of 6 parameters"):
            runtime.evaluate(np.zeros(N_FEATURES))
        with pytest.raises(ValueError, match="blocks is empty"):
            runtime.evaluate(np.zeros(N_FEATURES + 1), blocks=[])
        with pytest.raises(TypeError, match="callable"):
            runtime.call("not a function")
        # still usable after the errors
        assert runtime.evaluate(np.zeros(N_FEATURES + 1))[0][-1] == N_ROWS
    with pytest.raises(ValueError, match="timeout"):
        Runtime(cluster_client, data, Logistic(), True, timeout=0)
    with pytest.raises(ValueError, match="Model"):
        Runtime(cluster_client, data, "logistic", True)
    with pytest.raises(ValueError, match="distributed.Client"):
        Runtime(None, data, Logistic(), True)


def test_the_runtime_needs_placed_data(cluster_client, local_scheduler):
    X, y = _problem(9, n=100)
    local = distribute(X, y)  # no distributed client: persisted locally, no placement
    with pytest.raises(ValueError, match="placement"):
        Runtime(cluster_client, local, Logistic(), True)


def test_errors_on_a_worker_reach_the_client_and_abort_the_others(cluster_client, classification):
    _, _, data = classification
    with Runtime(cluster_client, data, Logistic(), True, timeout=60) as runtime:
        started = time.monotonic()
        with pytest.raises(ValueError, match="rank zero refuses"):
            runtime.call(fail_on_rank_zero)
        # rank 1 was woken by the abort, not by its 60 s timeout
        assert time.monotonic() - started < 30
        assert set(runtime.call(count_calls).values()) == {1}  # the run goes on


def test_recv_is_bounded(cluster_client, classification):
    _, _, data = classification
    with Runtime(cluster_client, data, Logistic(), True) as runtime:
        with pytest.raises((RecvTimeoutError, CallAbortedError), match="never sent|aborted"):
            runtime.call(wait_forever, 0.5)


# -- failures ----------------------------------------------------------------------------


#: Bound of the runtimes under kills: a nanny restart took up to ~60 s at load 15 here.
KILL_TIMEOUT = 150


def test_evaluate_and_allreduce_after_a_killed_worker(client):
    client.wait_for_workers(2, timeout=60)
    X, y = _problem(10, n=4_000)
    data = distribute(X, y, client, chunks_per_worker=3)
    w = np.random.default_rng(11).normal(size=N_FEATURES + 1)
    with Runtime(client, data, Logistic(), True, timeout=KILL_TIMEOUT) as runtime:
        before, _ = runtime.evaluate(w)
        victim = runtime.workers[1]
        kill_worker(client, victim)  # SIGKILL: its chunks and its resident are lost
        after, measures = runtime.evaluate(w)
        assert measures.attempts >= 2
        assert victim in measures.workers_lost
        assert measures.seconds_lost > 0
        assert victim not in runtime.workers
        assert sorted(runtime.owners) == list(range(data.n_chunks))
        results = runtime.call(ring_gradient, w)
    np.testing.assert_allclose(after, before, rtol=1e-12)
    np.testing.assert_allclose(after, _numpy_totals(Logistic(), X, y, w, True), rtol=1e-10)
    totals = list(results.values())
    assert all(np.array_equal(totals[0], other) for other in totals)
    np.testing.assert_allclose(totals[0], before, rtol=1e-12)


def test_a_call_survives_a_worker_killed_during_it(client):
    client.wait_for_workers(2, timeout=60)
    X, y = _problem(12, n=4_000)
    data = distribute(X, y, client, chunks_per_worker=2)
    with Runtime(client, data, Logistic(), True, timeout=KILL_TIMEOUT) as runtime:
        victim = runtime.workers[1]
        killer = threading.Timer(0.5, kill_worker, args=(client, victim))
        killer.start()  # rank 1 dies while it sleeps; rank 0 is blocked in recv
        try:
            results = runtime.call(slow_sender, 2.0)
        finally:
            killer.join()
        assert results.measures.attempts >= 2
        assert victim in results.measures.workers_lost
        assert victim not in runtime.workers
        first = runtime.workers[0]
    np.testing.assert_array_equal(results[first], np.ones(3))


# -- the mailbox on its own (no cluster) -------------------------------------------------


def _message(seq, source="tcp://a:1", value=0.0):
    from daskgd.runtime.messaging import Message

    return Message(np.array([value]), 1, True, source, 0.0, 0.0, seq)


def test_mailbox_files_each_senders_messages_in_order():
    from daskgd.runtime.messaging import Mailbox

    mailbox = Mailbox()
    mailbox.begin(1)
    for seq in (2, 0, 3, 1):  # handled out of order, as two connections may do
        mailbox.put(1, "t", _message(seq, value=float(seq)))
    mailbox.put(1, "t", _message(0, source="tcp://b:1", value=10.0))
    values = [mailbox.get(1, "t", 1.0, "test").payload[0] for _ in range(5)]
    assert [v for v in values if v < 10] == [0.0, 1.0, 2.0, 3.0]
    assert 10.0 in values


def test_mailbox_drops_stale_calls_and_bounds_waits():
    from daskgd.runtime.messaging import Mailbox

    mailbox = Mailbox()
    mailbox.begin(2)
    mailbox.put(1, "t", _message(0))  # a message of an earlier call
    assert mailbox.dropped == 1 and len(mailbox) == 0
    mailbox.put(3, "t", _message(0))  # the next call's: kept until that call begins
    assert len(mailbox) == 1
    started = time.monotonic()
    with pytest.raises(RecvTimeoutError, match="waited 0.2 s"):
        mailbox.get(2, "t", 0.2, "test")
    assert time.monotonic() - started < 5
    mailbox.end(2)
    mailbox.begin(3)
    assert mailbox.get(3, "t", 1.0, "test").seq == 0


def test_mailbox_abort_wakes_a_waiting_thread():
    from daskgd.runtime.messaging import Mailbox

    mailbox = Mailbox()
    mailbox.begin(1)
    errors = []

    def wait():
        try:
            mailbox.get(1, "t", 30.0, "test")
        except CallAbortedError as error:
            errors.append(error)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.1)
    mailbox.abort(1, CallAbortedError("stop"))
    waiter.join(timeout=10)
    assert not waiter.is_alive() and str(errors[0]) == "stop"


def _gradient_descent(runtime, n_params, iterations, on_iteration=None):
    """Plain gd on the mean loss through runtime.evaluate (the direct strategy's loop)."""
    w = np.zeros(n_params)
    attempts = 0
    for iteration in range(iterations):
        total, measures = runtime.evaluate(w)
        attempts += measures.attempts
        w = w - 1.0 * total[1:-1] / total[-1]
        if on_iteration is not None:
            on_iteration(iteration)
    return w, attempts


@pytest.mark.slow
def test_a_fit_under_a_killed_worker_ends_where_an_undisturbed_one_does(client):
    client.wait_for_workers(2, timeout=60)
    X, y = _problem(15, n=6_000)
    data = distribute(X, y, client, chunks_per_worker=3)
    n_params = N_FEATURES + 1
    with Runtime(client, data, Logistic(), True, timeout=KILL_TIMEOUT) as runtime:
        undisturbed, calm = _gradient_descent(runtime, n_params, 12)
        victim = runtime.workers[0]

        def kill_at_four(iteration):
            if iteration == 4:
                kill_worker(client, victim)

        disturbed, attempts = _gradient_descent(runtime, n_params, 12, kill_at_four)
    assert calm == 12 and attempts > 12  # the kill cost at least one more attempt
    np.testing.assert_allclose(disturbed, undisturbed, rtol=1e-8)


def test_a_retired_worker_is_replaced_by_a_rebuild(client):
    client.wait_for_workers(2, timeout=60)
    X, y = _problem(16, n=3_000)
    data = distribute(X, y, client, chunks_per_worker=2)
    w = np.full(N_FEATURES + 1, 0.05)
    with Runtime(client, data, Logistic(), True, timeout=60) as runtime:
        before, _ = runtime.evaluate(w)
        leaving = runtime.workers[1]
        # a worker holding residents can be retired (an Actor pins its worker): its
        # chunks move to the other worker first, then it closes
        client.retire_workers([leaving], close_workers=True)
        deadline = time.monotonic() + 30
        while leaving in client.ncores() and time.monotonic() < deadline:
            time.sleep(0.1)
        started = time.monotonic()
        after, measures = runtime.evaluate(w)
        assert time.monotonic() - started < 30  # found out at once, not by a timeout
        assert leaving not in runtime.workers
        assert measures.attempts >= 2
    np.testing.assert_allclose(after, before, rtol=1e-12)
