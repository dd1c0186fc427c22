"""Strategies: how the workers' partial sums are gathered, and who updates w.

base.py          the protocol: capabilities, FitProblem, the registry
synchronous.py   the shared run of the synchronous strategies (one driver)
mapreduce.py     w to every worker, map_blocks, da.sum, update on the client (default)
direct.py        w straight to the workers' resident objects, sums back (+ backups)
allreduce.py     ring all-reduce among the workers, the step replicated on each
p2p.py           the shared loop of the peer-to-peer strategies (each worker its own w)
gossip.py        decentralised averaging with neighbours on a topology (D-PSGD)
localsgd.py      H local steps per worker, then an all-reduce average of the models
paramserver.py   a server on one worker: pull w, push sums (sync, SSP, async)
"""

from daskgd.strategies.base import (
    BUILTIN_STRATEGIES,
    STRATEGIES,
    Capabilities,
    FitProblem,
    Strategy,
    get_strategy,
    register_strategy,
)
from daskgd.strategies.synchronous import SynchronousStrategy

__all__ = [
    "AllReduce",
    "BUILTIN_STRATEGIES",
    "STRATEGIES",
    "Capabilities",
    "Direct",
    "FitProblem",
    "Gossip",
    "LocalSGD",
    "MapReduce",
    "ParameterServer",
    "Strategy",
    "SynchronousStrategy",
    "get_strategy",
    "register_strategy",
]


_CLASSES = {
    "MapReduce": "daskgd.strategies.mapreduce",
    "Direct": "daskgd.strategies.direct",
    "AllReduce": "daskgd.strategies.allreduce",
    "Gossip": "daskgd.strategies.gossip",
    "LocalSGD": "daskgd.strategies.localsgd",
    "ParameterServer": "daskgd.strategies.paramserver",
}


def __getattr__(name: str):
    # The strategy classes are imported on first use (they bring in dask and distributed).
    if name in _CLASSES:
        from importlib import import_module

        return getattr(import_module(_CLASSES[name]), name)
    raise AttributeError(f"module 'daskgd.strategies' has no attribute {name!r}")
