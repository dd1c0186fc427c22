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
is left, so that the scheduler then runs them on the new worker.
"""

from __future__ import annotations

from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

__all__ = ["StaleRestrictions", "register_stale_restrictions"]

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


def register_stale_restrictions(client: Any) -> None:
    """Register :class:`StaleRestrictions` on the scheduler of ``client`` (idempotent)."""
    client.register_plugin(StaleRestrictions(), name=PLUGIN_NAME)
