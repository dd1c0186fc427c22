"""What a request to the residents returns besides its value: :class:`Measures`, :class:`Results`.

The workers measure (:class:`daskgd.runtime.messaging.Meter`); the client completes the
figures with what only it sees (the round trip) in :func:`per_worker`.
"""

from __future__ import annotations

from daskgd.runtime.messaging import MEASURES

__all__ = ["Measures", "Results", "per_worker"]


class Measures(dict):
    """``{worker address: {measure: value}}`` of one request, and what it took overall.

    Per worker (all measured on the worker, except the round trip): ``compute_seconds``
    (chunk sums), ``communication_seconds`` (codecs, sends, messages in flight, and the
    request's transport: round trip minus the handler's time), ``wait_seconds``
    (blocked on peers before they sent, and idle until the slowest worker answered:
    slowest round trip minus this one), ``bytes_sent``, ``bytes_received`` (payloads,
    after the codec), ``messages_sent``, ``messages_received``, ``handler_seconds``,
    ``round_trip_seconds``.

    Attributes
    ----------
    wall_seconds : float
        Client time of the whole request, all attempts and rebuilds included.
    attempts : int
        1, or more when workers were lost and residents rebuilt.
    seconds_lost : float
        Client time of the failed attempts and the rebuilds.
    workers_lost : tuple of str
        Addresses found dead or unreachable during the request.
    """

    def __init__(self, per_worker: dict, *, wall_seconds: float = 0.0, attempts: int = 1,
                 seconds_lost: float = 0.0, workers_lost: tuple = ()):  # fmt: skip
        super().__init__(per_worker)
        self.wall_seconds = wall_seconds
        self.attempts = attempts
        self.seconds_lost = seconds_lost
        self.workers_lost = tuple(workers_lost)


class Results(dict):
    """``{worker address: result}`` of :meth:`Runtime.call`; ``measures`` as for evaluate."""

    def __init__(self, results: dict, measures: Measures):
        super().__init__(results)
        self.measures = measures


def per_worker(replies: dict[str, tuple[dict, float]]) -> dict[str, dict]:
    """The workers' measures, completed with the transport and the wait for the slowest."""
    slowest = max(round_trip for _, round_trip in replies.values())
    out = {}
    for address, (reply, round_trip) in replies.items():
        measures = {name: reply["measures"][name] for name in MEASURES}
        handler = reply["measures"]["handler_seconds"]
        measures["communication_seconds"] += max(0.0, round_trip - handler)
        measures["wait_seconds"] += slowest - round_trip
        measures["handler_seconds"] = handler
        measures["round_trip_seconds"] = round_trip
        out[address] = measures
    return out
