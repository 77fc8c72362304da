"""What `MqttMessager` keeps between the broker and the agent: the bounded outbox of messages published while
offline, the bounded inbox of received messages (which drops QoS-1 redeliveries and says when each may be
acknowledged), and their counters."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .mqtt_acks import ReleaseQueue, SendAck
from .mqtt_bridge import IncomingMessage

__all__ = ["Inbox", "MessagerStats", "Outbox", "Outgoing", "RecentMessages"]

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


class Inbox:
    """Received messages for the consumer, oldest first, at most `maxsize`; a full inbox hands the message to
    `on_full` (which answers or settles it). Each QoS>0 message has its place in a `ReleaseQueue`: settled at
    receipt, or (`settle_by_consumer`) when the consumer calls its `settle()`."""

    def __init__(self, maxsize: int, stats: MessagerStats, send_ack: SendAck, *, settle_by_consumer: bool,
                 on_full: Callable[[IncomingMessage], None]) -> None:
        self.maxsize = maxsize
        self._stats = stats
        self._settle_by_consumer = settle_by_consumer
        self._on_full = on_full
        self._queue: asyncio.Queue[IncomingMessage] = asyncio.Queue(maxsize=maxsize)
        self._recent = RecentMessages()
        self._acks = ReleaseQueue(send_ack)

    @property
    def unacknowledged(self) -> int:
        return len(self._acks)

    def reconnected(self, session_present: bool) -> None:
        """A new connection (before any of its messages): see `ReleaseQueue.reconnected`."""
        self._acks.reconnected(session_present=session_present)

    def receive(self, msg: IncomingMessage, dup: bool) -> None:
        """Drop a QoS-1 redelivery of a message already taken (acknowledged in its turn), else queue it."""
        settle = self._acks.arrived(msg.mid, msg.qos, dup=dup)
        if settle is None or self._recent.is_redelivery(msg, dup):
            self._stats.duplicates_dropped += 1
            logger.info("mqtt: dropped a redelivered copy of a message on %s", msg.topic)
            if settle is not None:
                settle()
            return
        if self._settle_by_consumer:
            msg = dataclasses.replace(msg, settle=settle)
        else:
            settle()
        try:
            self._queue.put_nowait(msg)
        except asyncio.QueueFull:
            self._stats.inbox_dropped += 1
            logger.warning("mqtt: inbox full (%d); dropped a message on %s", self.maxsize, msg.topic)
            asyncio.get_running_loop().call_soon(self._on_full, msg)  # not from inside paho's callback

    async def get(self, timeout: float | None) -> IncomingMessage:
        return await asyncio.wait_for(self._queue.get(), timeout)

    def qsize(self) -> int:
        return self._queue.qsize()

    def take_all(self) -> list[IncomingMessage]:
        taken: list[IncomingMessage] = []
        while not self._queue.empty():
            taken.append(self._queue.get_nowait())
        return taken
