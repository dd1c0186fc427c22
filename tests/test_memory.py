"""No copy of X per fit (daskgd/data/reuse.py), on a real LocalCluster.

The oracle is the scheduler's own task table: which ``daskgd-X-*`` keys (placed copies of
X) exist, and that a fit on reused data gives the coefficients of a fresh placement.
"""

from __future__ import annotations

import gc
import time

import dask.array as da
import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV

import daskgd
from daskgd.data import distribute, reuse


def _copies(client):
    """Names of the placed copies of X the scheduler holds."""

    def names(dask_scheduler=None):
        return sorted(
            {str(k[0]) for k in dask_scheduler.tasks if str(k[0]).startswith("daskgd-X-")}
        )

    return client.run_on_scheduler(names)


def _settled(client, predicate, seconds=15.0):
    """Whether ``predicate(copies)`` holds within ``seconds`` (releases reach the
    scheduler in the client's next batch of messages)."""
    deadline = time.monotonic() + seconds
    while True:
        copies = _copies(client)
        if predicate(copies) or time.monotonic() > deadline:
            return predicate(copies)
        time.sleep(0.2)


def _problem(seed, n=4000, d=5):
    rng = da.random.RandomState(seed)
    X = rng.normal(size=(n, d), chunks=(n // 4, d))
    y = (X @ np.arange(1.0, d + 1) > 0).astype(np.int64)
    return X, y


@pytest.fixture
def cache(cluster_client):
    reuse.CACHE.clear()
    gc.collect()
    yield reuse.CACHE
    reuse.CACHE.clear()


def test_persisted_evenly_placed_data_is_used_where_it_is(cluster_client, cache):
    with cluster_client.as_current():
        X, y = _problem(0)
        placed = distribute(X, y)  # persisted, evenly placed: what a user may hold
        before = _copies(cluster_client)
        model = daskgd.LogisticRegression(max_iter=50).fit(placed.X, y)
        again = distribute(placed.X, y)
        assert again.X.name == placed.X.name  # the user's keys, not a copy
        assert _copies(cluster_client) == before
        fresh = daskgd.LogisticRegression(max_iter=50).fit(X.compute(), y.compute())
        np.testing.assert_allclose(model.coef_, fresh.coef_, rtol=1e-10)


def test_a_placed_copy_is_reused_by_later_fits_and_released_with_its_array(
    cluster_client, cache, monkeypatch
):
    with cluster_client.as_current():
        X, y = _problem(1)
        first = daskgd.LogisticRegression(max_iter=50, warm_start=True).fit(X, y)
        copies = _copies(cluster_client)
        assert len(copies) == 1 and len(cache) == 1
        first.set_params(C=0.5).fit(X, y)  # warm start, another C: the same copy
        assert _copies(cluster_client) == copies
        reused = daskgd.LogisticRegression(max_iter=50, C=0.5).fit(X, y)
        assert _copies(cluster_client) == copies
        cache.clear()  # the oracle: the same fit on a fresh placement
        reference = daskgd.LogisticRegression(max_iter=50, C=0.5).fit(X, y)
        np.testing.assert_allclose(reused.coef_, reference.coef_, rtol=1e-12)
        monkeypatch.setattr(reuse, "ORPHAN_SECONDS", 0.0)
        del X, y, first, reference
        gc.collect()
        cache.purge(cluster_client)
        assert len(cache) == 0
        assert _settled(cluster_client, lambda copies: copies == [])


def test_a_released_persisted_source_drops_its_entry(cluster_client, cache):
    with cluster_client.as_current():
        X, y = _problem(2)
        users = distribute(X, y).X  # persisted and evenly placed, held by the user only
        cache.clear()
        distribute(users, y)
        assert len(cache) == 1 and cache._entries[next(iter(cache._entries))]["in_place"]
        del users
        gc.collect()
        cache.purge(cluster_client)
        assert len(cache) == 0  # the entry went with the user's keys
        assert _settled(cluster_client, lambda copies: copies == [])


def test_the_cache_does_not_grow_across_fits_on_different_data(cluster_client, cache):
    with cluster_client.as_current():
        kept = []
        for seed in range(reuse.MAX_ENTRIES + 3):
            X, y = _problem(10 + seed, n=800)
            kept.append((X, y))  # alive: nothing is orphaned, the bound alone acts
            daskgd.LinearRegression(max_iter=5).fit(X, y)
            assert len(cache) <= reuse.MAX_ENTRIES
        assert _settled(cluster_client, lambda copies: len(copies) <= reuse.MAX_ENTRIES)


def test_the_worker_set_is_part_of_the_key(cluster_client, cache):
    with cluster_client.as_current():
        X, y = _problem(3)
        one = sorted(cluster_client.ncores())[:1]
        everywhere = distribute(X, y)
        alone = distribute(X, y, workers=one)
        assert set(alone.placement) == set(one)
        assert len(set(everywhere.placement)) == 2
        assert len(cache) == 2


def test_grid_search_places_each_split_once(cluster_client, cache):
    with cluster_client.as_current():
        X, y = _problem(4, n=2000)
        search = GridSearchCV(
            daskgd.LogisticRegression(max_iter=30), {"C": [0.1, 1.0, 10.0]}, cv=2, refit=False
        )
        search.fit(X, y)
        # 2 training splits x 3 candidates = 6 fits on 2 copies (and 2 test sets, scored)
        assert len(_copies(cluster_client)) <= 2
        assert np.isfinite(search.cv_results_["mean_test_score"]).all()
