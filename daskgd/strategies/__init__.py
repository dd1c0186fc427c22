"""Strategies: how the workers' partial gradients are gathered (and who updates w)."""

from daskgd.strategies.mapreduce import STRATEGIES, MapReduce, Strategy, get_strategy

__all__ = ["STRATEGIES", "MapReduce", "Strategy", "get_strategy"]
