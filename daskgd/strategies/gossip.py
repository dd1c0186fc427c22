"""``gossip``: decentralised gradient descent among neighbours (D-PSGD, Lian et al. 2017).

Every worker keeps its own model w_i. Step t on worker i:

    send w_i to each neighbour j          (one way, not waited for)
    g_i = local gradient at w_i           (its rows, scaled by m n_i / n; overlaps the sends)
    w_i <- prox(sum_j W_ij w_j - step * g_i)

with W the mixing matrix of the topology: symmetric, doubly stochastic, connected
(its second largest eigenvalue modulus < 1, so repeated mixing reaches the average).
No node talks to all (except ``complete``): on a ring each worker sends 2 vectors and
receives 2 per step, whatever m. The result is the average of the workers' models;
with a fixed step the iterates reach a neighbourhood of the optimum whose size grows
with the step and with how much the shards' gradients differ (Yuan, Ling & Yin 2016),
a few 1e-4 of relative loss gap on shuffled data in the tests.

Topologies (weights: Metropolis-Hastings, W_ij = 1 / (1 + max(deg_i, deg_j)), the rest
on the diagonal; symmetric and doubly stochastic by construction):

- ``ring``: i talks to i - 1 and i + 1 (mod m), in the runtime's ring order;
- ``torus``: a r x c grid with wrap-around, r the largest factor of m with r <= sqrt(m),
  r >= 2; an m with no such factor (a prime, or m < 4) is refused before the run
  starts; if a lost worker leaves such an m, the survivors gossip on a ring (the trace
  attr ``topologies_used`` says so);
- ``complete``: everyone averages with everyone (W = 1/m), each step an exact average;
- a user's m x m matrix: checked before the run (m must be the number of workers
  holding data); after a lost worker it no longer fits, so the fit stops with an
  error naming the matrix.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from daskgd.strategies.base import register_strategy
from daskgd.strategies.p2p import PeerStrategy, local_gradient, optimizer_step

__all__ = ["Gossip", "check_mixing", "mixing_matrix"]

TOPOLOGIES = ("ring", "torus", "complete")
#: Tolerance of the mixing-matrix checks (sums of rows/columns, symmetry).
MIXING_TOLERANCE = 1e-9


def _torus_shape(m: int) -> tuple[int, int] | None:
    rows = max((r for r in range(2, int(np.sqrt(m)) + 1) if m % r == 0), default=None)
    return None if rows is None else (rows, m // rows)


def _metropolis(m: int, edges: set[tuple[int, int]]) -> np.ndarray:
    degree = np.zeros(m, dtype=int)
    for i, j in edges:
        degree[i] += 1
        degree[j] += 1
    W = np.zeros((m, m))
    for i, j in edges:
        W[i, j] = W[j, i] = 1.0 / (1.0 + max(degree[i], degree[j]))
    W[np.diag_indices(m)] = 1.0 - W.sum(axis=1)
    return W


def mixing_matrix(topology: str, m: int) -> np.ndarray:
    """The m x m mixing matrix of a named topology (see the module docstring)."""
    if topology not in TOPOLOGIES:
        raise ValueError(f"unknown topology {topology!r}; choose one of {list(TOPOLOGIES)}")
    if m == 1:
        return np.ones((1, 1))
    if topology == "complete":
        return np.full((m, m), 1.0 / m)
    edges: set[tuple[int, int]] = set()
    if topology == "ring":
        edges = {(min(i, (i + 1) % m), max(i, (i + 1) % m)) for i in range(m)}
    else:
        shape = _torus_shape(m)
        if shape is None:
            raise ValueError(
                f"topology 'torus' needs a number of workers m = r x c with r, c >= 2; "
                f"m = {m} has no such factors: use topology='ring' or another m"
            )
        rows, cols = shape
        for r in range(rows):
            for c in range(cols):
                i = r * cols + c
                for j in (((r + 1) % rows) * cols + c, r * cols + (c + 1) % cols):
                    edges.add((min(i, j), max(i, j)))
    return _metropolis(m, {edge for edge in edges if edge[0] != edge[1]})


def check_mixing(W: Any, name: str = "topology") -> np.ndarray:
    """``W`` as a float array, or a ValueError naming what is wrong with it."""
    W = np.asarray(W, dtype=np.float64)
    m = W.shape[0] if W.ndim == 2 else 0
    if W.ndim != 2 or W.shape != (m, m) or m == 0:
        raise ValueError(f"{name}: a mixing matrix is square (m x m), got shape {W.shape}")
    if not np.all(np.isfinite(W)) or np.any(W < 0):
        raise ValueError(f"{name}: a mixing matrix has finite, non-negative entries")
    if not np.allclose(W, W.T, rtol=0, atol=MIXING_TOLERANCE):
        raise ValueError(f"{name}: the mixing matrix must be symmetric (W_ij == W_ji)")
    rows, cols = W.sum(axis=1), W.sum(axis=0)
    if not (np.allclose(rows, 1, atol=MIXING_TOLERANCE)
            and np.allclose(cols, 1, atol=MIXING_TOLERANCE)):  # fmt: skip
        raise ValueError(
            f"{name}: the mixing matrix is not doubly stochastic (row sums {rows.round(6)}, "
            f"column sums {cols.round(6)}; both must be 1)"
        )
    if m > 1:
        moduli = np.sort(np.abs(np.linalg.eigvalsh(W)))
        if moduli[-2] >= 1 - MIXING_TOLERANCE:
            raise ValueError(
                f"{name}: the mixing matrix's graph is not connected (or it never mixes: "
                f"second largest eigenvalue modulus {moduli[-2]:.6g} >= 1), so the workers' "
                "models would not reach a consensus"
            )
    return W


@register_strategy
class Gossip(PeerStrategy):
    """Decentralised gradient descent: each worker averages its model with its neighbours'.

    Parameters
    ----------
    topology : {'ring', 'torus', 'complete'} or array of shape (m, m), default='ring'
        Who talks to whom, and the weights (see the module docstring); a matrix must be
        symmetric, doubly stochastic and connected, m the number of workers holding data.
    max_batch, timeout, transfer_dtype, emulation, tune_cluster
        As for :class:`daskgd.strategies.p2p.PeerStrategy`.
    """

    name = "gossip"

    def __init__(self, *, topology: Any = "ring", **options: Any):
        if isinstance(topology, str):
            if topology not in TOPOLOGIES:
                raise ValueError(
                    f"unknown topology {topology!r}; choose one of {list(TOPOLOGIES)} or "
                    "give a mixing matrix"
                )
            self.matrix = None
        else:
            self.matrix = check_mixing(topology)
        self.topology = topology if isinstance(topology, str) else "matrix"
        super().__init__(**options)

    @property
    def topology_name(self) -> str:  # type: ignore[override]
        return self.topology

    def check(self, optimizer: Any, *, n_workers: int | None = None) -> None:
        super().check(optimizer, n_workers=n_workers)
        if n_workers is None:
            return
        if self.matrix is not None and self.matrix.shape[0] != n_workers:
            raise ValueError(
                f"the mixing matrix is {self.matrix.shape[0]} x {self.matrix.shape[0]} but "
                f"{n_workers} workers hold the data: give an {n_workers} x {n_workers} matrix"
            )
        if self.topology == "torus":
            mixing_matrix("torus", n_workers)  # refuses an m that does not factor

    def describe(self) -> dict[str, Any]:
        extra = {"mixing_matrix": self.matrix.tolist()} if self.matrix is not None else {}
        return {**super().describe(), "local_steps": 1, **extra}

    def config(self) -> dict:
        return {"matrix": self.matrix, "topology": self.topology}

    @property
    def step_function(self) -> Any:  # type: ignore[override]
        return _gossip_step

    def __repr__(self) -> str:
        return f"Gossip(topology={self.topology!r}, max_batch={self.max_batch})"


# -- on the workers ---------------------------------------------------------------------


def _mixing_row(resident: Any, state: dict) -> tuple[np.ndarray, str]:
    """This worker's row of W for the current peers, cached per attempt."""
    cached = state.get("mixing")
    if cached is not None and cached[0] == resident.attempt:
        return cached[1], cached[2]
    m, matrix, topology = len(resident.peers), state["matrix"], state["topology"]
    if matrix is not None:
        if matrix.shape[0] != m:
            raise ValueError(
                f"the {matrix.shape[0]} x {matrix.shape[0]} mixing matrix no longer fits: "
                f"{m} workers are left after a lost worker (use a named topology, which is "
                "rebuilt over the survivors)"
            )
        W = matrix
    elif topology == "torus" and m > 1 and _torus_shape(m) is None:
        topology, W = "ring", mixing_matrix("ring", m)  # the survivors do not factor
    else:
        W = mixing_matrix(topology, m)
    row = W[resident.rank]
    state["mixing"] = (resident.attempt, row, topology)
    return row, topology


def _gossip_step(resident: Any, state: dict, t: int) -> tuple[bool, str]:
    """One D-PSGD step of this worker (module docstring)."""
    row, topology = _mixing_row(resident, state)
    neighbours = [j for j in np.flatnonzero(row) if j != resident.rank]
    w = state["w"]
    for j in neighbours:  # sent before the gradient: the messages fly while it computes
        resident.send(resident.peers[j], ("gossip", t, resident.rank), w, wait=False)
    value, grad = local_gradient(resident, state, w, t)
    mixed = row[resident.rank] * w
    for j in neighbours:  # in rank order: the same additions every run
        mixed = mixed + row[j] * resident.recv(("gossip", t, int(j)))
    with resident.timing("compute"):
        state["w"] = optimizer_step(state, grad, value, mixed)
    resident.flush()
    return bool(neighbours), topology
