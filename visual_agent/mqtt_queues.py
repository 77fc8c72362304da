"""What `MqttMessager` keeps between the broker and the agent: the bounded outbox of messages published while
offline, the memory of recent messages that drops QoS-1 redeliveries, and the counters of both."""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from .mqtt_bridge import IncomingMessage

__all__ = ["MessagerStats", "Outbox", "Outgoing", "RecentMessages"]

logger = logging.getLogger("visual_agent.mqtt")

RECENT_KEPT = 512
"""Fingerprints of received messages remembered to drop QoS-1 redeliveries."""


@dataclass(slots=True)
class MessagerStats:
    """Counters for /healthz and logs."""

    connects: int = 0
    received: int = 0
    published: int = 0
    inbox_dropped: int = 0
    outbox_dropped: int = 0
    outboxed: int = 0
    duplicates_dropped: int = 0


@dataclass(slots=True)
class Outgoing:
    """A message to publish (now, or after the reconnect)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    response_correlation: bytes | None
    response_topic: str | None = None


class Outbox:
    """Messages published while offline, oldest first; at `maxlen` the oldest is dropped (logged, counted)."""

    def __init__(self, maxlen: int, stats: MessagerStats) -> None:
        self.maxlen = maxlen
        self._stats = stats
        self._items: collections.deque[Outgoing] = collections.deque()

    def put(self, item: Outgoing) -> None:
        if len(self._items) >= self.maxlen:
            old = self._items.popleft()
            self._stats.outbox_dropped += 1
            logger.warning("mqtt: outbox full (%d); dropped the oldest message for %s", self.maxlen, old.topic)
        self._items.append(item)
        self._stats.outboxed += 1

    def take_all(self) -> list[Outgoing]:
        taken = list(self._items)
        self._items.clear()
        return taken

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Outgoing]:
        return iter(self._items)


class RecentMessages:
    """Fingerprints of the last `RECENT_KEPT` messages, to tell a QoS-1 redelivery (DUP) of one already taken."""

    def __init__(self, kept: int = RECENT_KEPT) -> None:
        self._kept = kept
        self._seen: collections.OrderedDict[int, None] = collections.OrderedDict()

    def is_redelivery(self, msg: IncomingMessage, dup: bool) -> bool:
        """True for a DUP copy of a message seen before; otherwise remember it and return False."""
        fingerprint = hash((msg.topic, msg.payload, msg.correlation_data))
        if dup and fingerprint in self._seen:
            return True
        self._seen[fingerprint] = None
        if len(self._seen) > self._kept:
            self._seen.popitem(last=False)
        return False
