"""Never leak, never silently wrong: what a fit leaves on the cluster, top-k residuals
under concurrency and failures, the retry path forced by a real worker death."""

from __future__ import annotations

import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import daskgd
from daskgd.data.synthetic import make_classification
from daskgd.runtime.codecs import decode_partial, encode_partial, get_codec, partial_resets


def _scheduler_state(dask_scheduler=None):
    spans = dask_scheduler.extensions["spans"].spans
    return {
        "spans": len(spans),
        "span_groups": sum(len(span.groups) for span in spans.values()),
        "task_groups": len(dask_scheduler.task_groups),
        "task_prefixes": len(dask_scheduler.task_prefixes),
        "tasks": len(dask_scheduler.tasks),
    }


def _worker_digests(dask_worker=None):
    return len(dask_worker.digests_total)


def _state(client):
    state = client.run_on_scheduler(_scheduler_state)
    digests = client.run(_worker_digests)
    state["digests"] = max(digests.values())
    return state


def _quiet(client, tasks_before, timeout=30.0):
    """Wait (bounded) until the fit's tasks are released; its spans are never freed."""
    deadline = time.monotonic() + timeout
    while client.run_on_scheduler(_scheduler_state)["tasks"] > tasks_before:
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)


def _gd(client, X, y, max_iter, **options):
    model = daskgd.LogisticRegression(
        solver="gd", learning_rate=1.0, tol=0.0, max_iter=max_iter, client=client, **options
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", daskgd.ConvergenceWarning)
        return model.fit(X, y)


def test_a_long_fit_leaves_nothing_that_grows_with_its_iterations(cluster_client):
    """distributed keeps every span and its task groups for the scheduler's lifetime (and
    the workers' metric digests per span): a span per evaluation grew the scheduler by
    ~14 KB per iteration, for good. The growth of a 300-iteration fit must be that of a
    10-iteration one."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2_000, 5))
    y = (X[:, 0] + 0.5 * rng.standard_normal(2_000) > 0).astype(int)
    _gd(cluster_client, X, y, 2)  # first-use state (prefixes, default span) out of the way
    growth = {}
    for n_iterations in (10, 300):
        before = _state(cluster_client)
        model = _gd(cluster_client, X, y, n_iterations)
        assert model.n_iter_[0] == n_iterations
        del model
        _quiet(cluster_client, before["tasks"])
        after = _state(cluster_client)
        growth[n_iterations] = {name: after[name] - before[name] for name in after}
    short, long = growth[10], growth[300]
    # Spans open when the cluster goes from idle to busy: a fit's phases (placement,
    # checks, the iterations) open a few, whatever the number of iterations.
    assert long["spans"] <= short["spans"] + 3, growth
    assert long["span_groups"] <= short["span_groups"] + 6, growth
    assert long["digests"] <= short["digests"] + 40, growth
    for name in ("task_groups", "task_prefixes", "tasks"):
        assert long[name] <= max(short[name], 0), (name, growth)


# -- top-k error feedback ------------------------------------------------------------------


def test_topk_residuals_survive_a_retried_attempt_and_report_a_loss():
    codec = get_codec("topk:0.2")
    g = np.random.default_rng(3).normal(size=20)
    packed = np.concatenate([[1.0], g, [10.0]])
    first = encode_partial(packed, codec, ("fit-a", 0, 0))
    second = encode_partial(packed, codec, ("fit-a", 0, 1))
    # The same evaluation again (a retried attempt) starts from the same residual.
    np.testing.assert_array_equal(encode_partial(packed, codec, ("fit-a", 0, 1)), second)
    assert partial_resets(first) == partial_resets(second) == 0
    # Another fit's chunk 0 is another residual: fit-a's is untouched by it.
    encode_partial(2 * packed, codec, ("fit-b", 0, 0))
    np.testing.assert_array_equal(encode_partial(packed, codec, ("fit-a", 0, 1)), second)
    # Evaluation 5 of a chunk whose residual this process never had: lost, counted.
    lost = encode_partial(packed, codec, ("fit-a", 7, 4))
    assert partial_resets(lost) == 1
    np.testing.assert_array_equal(decode_partial(lost, codec, 20), decode_partial(first, codec, 20))


TOPK = {"transfer_dtype": "topk:0.1", "C": 0.1}


def _topk_problem(seed):
    return make_classification(8_000, 40, chunks=1_000, random_state=seed)


def test_concurrent_topk_fits_give_exactly_their_solo_results(cluster_client):
    """Two top-k fits at once on one cluster: each keeps its own residuals (a
    per-process store overwritten by the other fit made them differ by 15-68 %)."""
    problems = [_topk_problem(seed) for seed in (11, 12)]

    def fit(problem):
        return _gd(cluster_client, *problem, 40, **TOPK)

    solo = [fit(problem) for problem in problems]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(fit, problems))
    starts = [float(m.trace_.start_time[0]) for m in together]
    ends = [float(m.trace_.start_time[-1] + m.trace_.wall_seconds[-1]) for m in together]
    assert max(starts) < min(ends), "the two fits did not overlap"
    for alone, concurrent in zip(solo, together, strict=True):
        np.testing.assert_array_equal(concurrent.coef_, alone.coef_)
        assert int(concurrent.trace_.residual_resets.sum()) == 0
