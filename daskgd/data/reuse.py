"""No copy of X per fit: persisted data used where it is, placed copies reused.

Placement used to copy X into fresh ``daskgd-X-*`` keys at every fit (~0.3 s here, and
twice the memory while the user's persisted X was alive). Now:

- :func:`persisted_placement`: a dask array whose chunks are all held by this client's
  futures on the fit's workers, each worker holding as many chunks as another (within
  one), is used where it is: only y (n x 1, a d-th of X's size) is placed beside it.
- :class:`PlacementCache`: otherwise the placed copy (and its statistics) is kept and
  reused by later fits on the same data (GridSearchCV's candidates on a split, scaling,
  ``warm_start``), keyed by the dask arrays' names (a name is a hash of the graph: the
  same data) and the worker set. An entry goes with the user's array: at once when the
  source was persisted and the client no longer holds its keys (the user released
  them); else a finalizer on the dask array object marks it orphaned, and an orphan is
  dropped :data:`ORPHAN_SECONDS` later unless a fit on an array of the same name adopts
  it first (GridSearchCV slices a new array object with the same name for every
  candidate). At most :data:`MAX_ENTRIES` entries stay (orphans, then the least recently
  used, go first), so fits on ever new data never grow it.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import Counter, OrderedDict
from typing import Any

import dask

from daskgd.data import waits

__all__ = ["CACHE", "MAX_ENTRIES", "PlacementCache", "persisted_placement"]

#: Placed copies kept at most (each holds X's chunks in the workers' memory): a 5-fold
#: GridSearchCV keeps its 5 training sets.
MAX_ENTRIES = 6
#: Seconds an orphan (its array object gone) stays for a later fit of the same name.
ORPHAN_SECONDS = 60.0


def _chunk_keys(array: Any) -> list:
    return list(dask.core.flatten(array.__dask_keys__()))


def _held_keys(client: Any, array: Any) -> list | None:
    """The chunk keys of ``array`` if this client holds a finished future for each."""
    keys = _chunk_keys(array)
    futures = getattr(client, "futures", None) or {}
    for key in keys:
        state = futures.get(key)
        if state is None or getattr(state, "status", None) != "finished":
            return None
    return keys


def persisted_placement(client: Any, X: Any, threads: dict, timeout: float) -> tuple | None:
    """Worker of each chunk of a persisted, evenly placed X on ``threads``, else None."""
    keys = _held_keys(client, X)
    if keys is None or len(keys) != X.numblocks[0]:
        return None
    what = "reading where the persisted chunks are"
    holders = waits.call(client, client.scheduler.who_has, keys=keys, what=what, timeout=timeout)
    placement = []
    for key in keys:
        on_fit_workers = [address for address in holders.get(key) or () if address in threads]
        if not on_fit_workers:
            return None  # lost, or on a worker outside the fit's set
        placement.append(on_fit_workers[0])
    counts = Counter(placement)
    if len(counts) < min(len(threads), len(keys)):
        return None  # some worker of the fit holds nothing: not even
    if max(counts.values()) - min(counts.values()) > 1:
        return None
    return tuple(placement)


class PlacementCache:
    """Placed copies of X and y by (client, X's name, y's name, workers, chunks)."""

    def __init__(self, max_entries: int = MAX_ENTRIES):
        self.max_entries = max_entries
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.RLock()  # a finalizer may run under it (gc in put)

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(client: Any, X: Any, y: Any, threads: dict) -> tuple:
        return (getattr(client, "id", id(client)), X.name, y.name, tuple(threads), X.chunks)

    def get(self, client: Any, X: Any, y: Any, threads: dict, source: Any) -> Any:
        """The cached entry (placed arrays, placement, futures, statistics), or None;
        ``source`` (the caller's array object) adopts it."""
        self.purge(client)
        key = self.key(client, X, y, threads)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            held = _held_keys(client, X) is not None
            if any(future.status != "finished" for future in entry["futures"]) or (
                entry["source_keys"] and not held  # a worker died with a chunk
            ):
                self._entries.pop(key)  # place afresh
                return None
            if held and not entry["in_place"]:
                self._entries.pop(key)  # a copy of data since persisted: use that instead
                return None
            self._entries.move_to_end(key)
        self._adopt(key, entry, source)
        return entry

    def put(self, client: Any, X: Any, y: Any, threads: dict, entry: dict, source: Any) -> None:
        """Keep ``entry`` while ``source`` (or its persisted keys) lives; see the module.

        ``entry["in_place"]``: X is the persisted source itself (y and the statistics
        are what is kept), else a copy of it.
        """
        key = self.key(client, X, y, threads)
        entry["source_keys"] = _held_keys(client, X) or []
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                orphans = [k for k, e in self._entries.items() if e.get("orphaned")]
                self._entries.pop(orphans[0] if orphans else next(iter(self._entries)))
        self._adopt(key, entry, source)

    def _adopt(self, key: tuple, entry: dict, source: Any) -> None:
        entry["orphaned"] = None
        entry["owners"] = entry.get("owners", 0) + 1
        # The finalizer names the entry, never holds it: an evicted entry's chunks must
        # be freed while the user's array lives on.
        weakref.finalize(source, self._orphan, key, id(entry))

    def _orphan(self, key: tuple, entry_id: int) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or id(entry) != entry_id:
                return
            entry["owners"] -= 1
            if entry["owners"] <= 0:
                entry["orphaned"] = time.monotonic()

    def purge(self, client: Any) -> None:
        """Drop entries whose persisted source the client no longer holds, and old orphans."""
        refcount = getattr(client, "refcount", None) or {}
        now = time.monotonic()
        with self._lock:
            for key, entry in list(self._entries.items()):
                sources = entry["source_keys"]
                released = key[0] == getattr(client, "id", None) and sources
                if released and not all(refcount.get(k) for k in sources):
                    self._entries.pop(key)
                elif entry["orphaned"] is not None and now - entry["orphaned"] > ORPHAN_SECONDS:
                    self._entries.pop(key)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


#: The process's cache of placed copies.
CACHE = PlacementCache()
