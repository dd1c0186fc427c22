"""Workers that replace lost ones get the lost chunks' tasks, even when every worker went.

daskgd places each data chunk on a worker with a *loose* restriction
(``allow_other_workers=True``): when that worker is lost, the scheduler recomputes the
chunk from its lineage on another one. When every worker is lost at once (the common
walltime of batch jobs), the recomputed chunks wait in the scheduler's ``no-worker``
state, and a worker that joins later is offered only the tasks whose restrictions name
it (``Scheduler.bulk_schedule_unrunnable_after_adding_worker`` reads the restrictions,
not their looseness): they stayed there (seen with dask-jobqueue's replacement jobs, 8
chunks stuck, the fit waiting for ever). :class:`StaleRestrictions` drops the
restrictions of those loose tasks when a worker joins and none of the workers they name
is left, so that the scheduler then runs them on the new worker. The same happens on any
cluster: a LocalCluster whose workers are all killed at once comes back under new
addresses (their nannies restart them). So :func:`ensure_registered` registers it, once
per client, whenever data is placed.
"""

from __future__ import annotations

import weakref
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

__all__ = ["StaleRestrictions", "ensure_registered"]

#: Name of the plugin on the scheduler (registering it again replaces it).
PLUGIN_NAME = "daskgd-stale-restrictions"


class StaleRestrictions(SchedulerPlugin):
    """Scheduler plugin: loose restrictions to workers that are all gone are dropped."""

    name = PLUGIN_NAME

    def add_worker(self, scheduler: Any = None, worker: str = "", **kwargs: Any) -> None:
        # Runs before the scheduler offers its no-worker tasks to the new worker.
        present = scheduler.workers
        for ts in list(scheduler.unrunnable):
            restrictions = ts.worker_restrictions
            if (
                ts.loose_restrictions
                and restrictions
                and not any(a in present for a in restrictions)
            ):
                ts.worker_restrictions = set()


#: The clients whose scheduler has the plugin (registered by this process), with the
#: scheduler's address then: a client reconnected to a new scheduler registers it again.
_REGISTERED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def ensure_registered(client: Any, timeout: float) -> None:
    """Register :class:`StaleRestrictions` on ``client``'s scheduler unless this process
    already did; one request, bounded by ``timeout`` (:mod:`daskgd.data.waits`)."""
    from daskgd.data import waits

    address = waits.scheduler_address(client)
    if _REGISTERED.get(client) == address:
        return
    from distributed.protocol.pickle import dumps

    try:
        waits.call(
            client,
            client.scheduler.register_scheduler_plugin,
            plugin=dumps(StaleRestrictions()),
            name=PLUGIN_NAME,
            idempotent=True,  # a second process (a CLI on the same scheduler) keeps the first
            what="registering the stale-restrictions plugin",
            timeout=timeout,
        )
    except waits.ClusterTimeoutError:
        raise
    except Exception:  # noqa: BLE001 - e.g. daskgd not importable where the scheduler runs
        pass  # fits work without it; only losing every worker at once then needs the bound
    _REGISTERED[client] = address
