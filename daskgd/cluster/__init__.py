"""Clusters: connecting to a scheduler, or starting a local cluster."""

from daskgd.cluster.local import connect, make_local_cluster

__all__ = ["connect", "make_local_cluster"]
