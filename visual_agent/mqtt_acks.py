"""`ReleaseQueue`: when to acknowledge a received QoS>0 message to the broker (PUBACK), so that one that was taken
but not yet dealt with (a question whose answer is not out) stays in the broker's session if the process dies.

MQTT requires acknowledgements in the order the messages arrived on the connection, while messages are dealt with
in any order (a short question's answer overtakes a long one's). So each message gets a place in arrival order
and a `settle` callable; settling marks it done, and the run of done messages at the head is acknowledged.

After a reconnect to a kept session the broker sends every unacknowledged message again, with its packet id and
DUP set, before new ones: the messages still waiting are set aside and each takes the place of its redelivery
(that copy is not handed out again). With a new session the broker forgot them: they are never acknowledged.
A broker that resends an unacknowledged message on the same connection (EMQX's `retry_interval`) is answered the
same way: the copy is not new, and its place is already in the queue.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

__all__ = ["ReleaseQueue", "Settle"]

Settle = Callable[[], None]
"""Marks one received message as dealt with; safe to call more than once."""

SendAck = Callable[[int, int], bool]
"""``(packet id, qos) -> sent``: send the PUBACK (QoS 1) or PUBCOMP (QoS 2)."""


def _nothing() -> None:
    return None


class _Place:
    __slots__ = ("mid", "qos", "done")

    def __init__(self, mid: int, qos: int) -> None:
        self.mid = mid
        self.qos = qos
        self.done = False


class ReleaseQueue:
    """Received QoS>0 messages in arrival order, acknowledged as the head run of settled ones."""

    def __init__(self, send_ack: SendAck) -> None:
        self._send_ack = send_ack
        self._queue: collections.deque[_Place] = collections.deque()
        self._set_aside: dict[int, _Place] = {}
        """Packet id -> a message of an earlier connection still unacknowledged (the broker sends it again)."""

    def __len__(self) -> int:
        """Messages waiting for their acknowledgement (the broker counts them against our receive maximum)."""
        return len(self._queue) + len(self._set_aside)

    def arrived(self, mid: int, qos: int, *, dup: bool) -> Settle | None:
        """A message came: its `settle`, or None for the redelivery of one that is still here (not new: drop it)."""
        if qos == 0:
            return _nothing
        if dup and any(place.mid == mid for place in self._queue):
            return None  # sent again on this connection: its place is already here
        earlier = self._set_aside.pop(mid, None) if dup else None
        if earlier is not None:
            self._queue.append(earlier)
            self._release()
            return None
        place = _Place(mid, qos)
        self._queue.append(place)
        return lambda: self._settle(place)

    def reconnected(self, *, session_present: bool) -> None:
        """A new connection: keep what is unacknowledged for its redelivery (kept session), or forget it."""
        for place in self._queue:
            self._set_aside[place.mid] = place
        self._queue.clear()
        if not session_present:
            self._set_aside.clear()

    def _settle(self, place: _Place) -> None:
        place.done = True
        self._release()

    def _release(self) -> None:
        while self._queue and self._queue[0].done:
            place = self._queue.popleft()
            self._send_ack(place.mid, place.qos)  # not sent while offline: a kept session sends the message again
