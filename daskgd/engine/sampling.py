"""Mini-batches drawn from a seed and the step number, not from a generator in a state.

Any node can then draw the batch of step t (the client, a server, every worker of a
ring) and get the same one, and a fit is reproducible from its seed alone.
"""

from __future__ import annotations

import secrets

import numpy as np


def resolve_seed(random_state: int | None) -> int:
    """The fit's seed: ``random_state``, or fresh entropy drawn once per fit."""
    if random_state is None:
        return secrets.randbits(63)
    if isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)):
        raise TypeError(f"random_state must be an integer or None, got {random_state!r}")
    if random_state < 0:
        raise ValueError(f"random_state must be >= 0, got {random_state!r}")
    return int(random_state)


def batch_size(n_blocks: int, batch_blocks: int | None) -> int:
    """Chunks per mini-batch: ``batch_blocks``, or a quarter of the chunks (at least 1)."""
    return min(batch_blocks or max(1, n_blocks // 4), n_blocks)


def batch_blocks(seed: int, step: int, n_blocks: int, size: int) -> list[int]:
    """The sorted chunk indices of step ``step``'s mini-batch (without replacement)."""
    rng = np.random.default_rng([seed, step])
    return sorted(rng.choice(n_blocks, size=size, replace=False).tolist())
