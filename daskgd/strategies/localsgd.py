"""``local-sgd``: H local steps on every worker, then one average of the models.

Model averaging (Stich 2018, "Local SGD converges fast and communicates little"; Lin
et al. 2018, "Don't use large mini-batches, use local SGD"). Step t on worker i:

    g_i = local gradient at w_i          (its rows or a mini-batch of its chunks,
                                          scaled by m n_i / n)
    t not a multiple of H:  w_i <- prox(w_i - step * g_i)           (no message)
    t a multiple of H:      w_i <- prox(mean_j (w_j - step * g_j))  (ring all-reduce)

The average is the runtime's ring all-reduce (:meth:`Resident.allreduce`: every worker
gets the same bits), so after it every worker holds the same model. The prox of an L1
part is applied after the average on a communicating step, so with H = 1 every step is
exactly synchronous proximal gd with the same step (the test checks 1e-10); between
averages the local steps are proximal steps of their own. A round of communication
moves 2 (m - 1) / m times the model per worker; the trace's ``communicated`` and
``communication_rounds`` count them.
"""

from __future__ import annotations

from typing import Any

from daskgd.strategies.base import register_strategy
from daskgd.strategies.p2p import PeerStrategy, local_gradient, optimizer_step, without_prox

__all__ = ["LocalSGD"]


def check_local_steps(local_steps: Any) -> int:
    if isinstance(local_steps, bool) or not isinstance(local_steps, int) or local_steps < 1:
        raise ValueError(
            f"local_steps must be an integer >= 1 (local steps between two averages), "
            f"got {local_steps!r}"
        )
    return local_steps


@register_strategy
class LocalSGD(PeerStrategy):
    """Local steps on every worker, an all-reduce average of the models every H steps.

    Parameters
    ----------
    local_steps : int, default=8
        H, the local steps between two averages (1: average after every step, which is
        synchronous gd).
    max_batch, timeout, transfer_dtype, emulation, tune_cluster
        As for :class:`daskgd.strategies.p2p.PeerStrategy`.
    """

    name = "local-sgd"
    topology_name = "ring"

    def __init__(self, *, local_steps: int = 8, **options: Any):
        self.local_steps = check_local_steps(local_steps)
        super().__init__(**options)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "local_steps": self.local_steps}

    def config(self) -> dict:
        return {"local_steps": self.local_steps}

    @property
    def step_function(self) -> Any:  # type: ignore[override]
        return _local_step

    def __repr__(self) -> str:
        return f"LocalSGD(local_steps={self.local_steps}, max_batch={self.max_batch})"


def _local_step(resident: Any, state: dict, t: int) -> tuple[bool, str]:
    """One local step of this worker; every H-th ends with the average (module docstring)."""
    w = state["w"]
    value, grad = local_gradient(resident, state, w, t)
    if t % state["local_steps"]:
        with resident.timing("compute"):
            state["w"] = optimizer_step(state, grad, value, w)
        return False, "ring"
    objective = state["objective"]
    with resident.timing("compute"):
        moved = optimizer_step(state, grad, value, w, objective=without_prox(objective))
    total = resident.allreduce(moved, ("average", t))
    with resident.timing("compute"):
        state["w"] = objective.prox(total / len(resident.peers), state["opt_state"].step_size)
    return True, "ring"
