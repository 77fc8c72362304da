"""The embedded broker's resource bounds: connection slots, pre-CONNECT sockets, packet size, offline queues.

Each bound refuses with a counter (in `EmbeddedBroker.describe()`, so in /healthz) and a rate-limited log line:
a flood must not grow memory or descriptors, nor the log.

- `ConnectionGate`: at most `max_connections` sockets at once, of which at most `max_pending` have not sent their
  CONNECT yet; a new socket evicts the oldest silent one when either is full (a client sends CONNECT within
  milliseconds of connecting, so the oldest silent socket is the likeliest attacker), and is refused only when
  every slot holds a connected client. Idle sockets therefore cannot lock a client out, whatever their number.
- `PacketSizeGuard`: reads the MQTT fixed header of each packet as amqtt reads it and stops a packet longer than
  `max_bytes` before its body is read into memory.
- `SessionQueues`: what waits for each session, bounded in messages and bytes: the offline queue of a disconnected
  persistent session (amqtt's has no bound), and the packets not yet written to a connected client that does not
  read (amqtt starts one task per message, each waiting for the connection's write lock).
- `RateLimitedLog`: one line per kind of refusal per interval, saying how many were not logged.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from .config_mqtt import (
    DEFAULT_EMBEDDED_CONNECT_TIMEOUT_S,
    DEFAULT_EMBEDDED_MAX_CONNECTIONS,
    DEFAULT_EMBEDDED_MAX_MESSAGE_BYTES,
    DEFAULT_EMBEDDED_MAX_PENDING,
    DEFAULT_EMBEDDED_MAX_QUEUED_BYTES,
    DEFAULT_EMBEDDED_MAX_QUEUED_MESSAGES,
    DEFAULT_EMBEDDED_MAX_RETAINED,
    DEFAULT_EMBEDDED_MAX_RETAINED_BYTES,
    DEFAULT_EMBEDDED_MAX_SESSIONS,
    DEFAULT_EMBEDDED_MAX_UNSENT_BYTES,
)

__all__ = ["BrokerLimits", "ConnectionGate", "PacketSizeGuard", "PacketTooLarge", "RateLimitFilter", "RateLimitedLog", "SessionQueues"]

LOG_INTERVAL_S = 10.0
UNSENT_TOTAL_FACTOR = 8
"""All connected clients together hold at most this many times `max_unsent_bytes` waiting to be written."""


class RateLimitedLog:
    """`warning(kind, msg, *args)` logs at most once per `interval_s` per kind; the next line says how many were held back."""

    def __init__(self, logger: logging.Logger, interval_s: float = LOG_INTERVAL_S) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: collections.Counter[str] = collections.Counter()

    def warning(self, kind: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -self.interval_s) < self.interval_s:
            self._held[kind] += 1
            return
        self._last[kind] = now
        held = self._held.pop(kind, 0)
        suffix = f" ({held} more not logged in the last {self.interval_s:g} s)" if held else ""
        self.logger.warning(msg + suffix, *args)


class RateLimitFilter(logging.Filter):
    """At most `per_interval` records per `interval_s` through a logger (amqtt logs every failed connection)."""

    def __init__(self, per_interval: int = 10, interval_s: float = LOG_INTERVAL_S) -> None:
        super().__init__()
        self.per_interval, self.interval_s = per_interval, interval_s
        self._window_start, self._count = 0.0, 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self._window_start >= self.interval_s:
            self._window_start, self._count = now, 0
        self._count += 1
        return self._count <= self.per_interval


class ConnectionGate:
    """Who holds the broker's sockets: connected clients, and sockets that have not sent CONNECT yet (oldest first)."""

    def __init__(self, *, max_connections: int, max_pending: int, counters: dict[str, int], log: RateLimitedLog) -> None:
        self.max_connections = max_connections
        self.max_pending = min(max_pending, max_connections)
        self._counters = counters
        self._log = log
        self._pending: collections.OrderedDict[object, asyncio.WriteTransport] = collections.OrderedDict()
        """ticket -> its transport, oldest first."""
        self._connected: set[object] = set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def connected(self) -> int:
        return len(self._connected)

    def admit(self, ticket: object, transport: asyncio.WriteTransport) -> bool:
        """A new socket: True when it may wait for its CONNECT (the oldest silent socket is evicted to make room);
        False when every slot holds a connected client (the caller closes it)."""
        full = len(self._pending) >= self.max_pending or len(self._pending) + len(self._connected) >= self.max_connections
        if full:
            if not self._pending:
                self._counters["connections_refused"] += 1
                self._log.warning("refused", "embedded broker: all %d connection slots hold connected clients; "
                                  "refused a new connection", self.max_connections)
                return False
            self._evict_oldest()
        self._pending[ticket] = transport
        return True

    def mark_connected(self, ticket: object) -> None:
        """The socket's CONNECT was accepted: it no longer counts as silent."""
        if self._pending.pop(ticket, None) is not None:
            self._connected.add(ticket)

    def leave(self, ticket: object) -> None:
        """The socket is closed (whatever happened to it)."""
        self._pending.pop(ticket, None)
        self._connected.discard(ticket)

    def close_pending(self) -> None:
        for transport in self._pending.values():
            transport.abort()
        self._pending.clear()

    def _evict_oldest(self) -> None:
        _, transport = self._pending.popitem(last=False)
        transport.abort()  # its reader sees the connection lost; the broker's task ends and frees the descriptor
        self._counters["pending_evicted"] += 1
        self._log.warning("evicted", "embedded broker: connection slots full; closed the oldest connection that had "
                          "sent no CONNECT (%d silent, %d connected)", len(self._pending) + 1, len(self._connected))


class PacketTooLarge(Exception):
    """An MQTT packet longer than the broker takes (the connection is closed before its body is read)."""


class PacketSizeGuard:
    """An amqtt reader adapter that knows where each packet starts: amqtt reads a packet's fixed header one byte at
    a time, then its body; the remaining length is checked as soon as its last byte is read.

    `max_bytes` None: no limit (the daemon's own connection). A read that does not fit the framing (amqtt reading
    past a packet's end, or more than one byte of a header) raises too: the guard fails closed.
    """

    def __init__(self, reader: Any, max_bytes: int | None, on_too_large: Callable[[int, int], None]) -> None:
        self._reader = reader
        self.max_bytes = max_bytes
        self._on_too_large = on_too_large
        """Called with (packet length, limit) before the refusal is raised (count it, log it)."""
        self._header_bytes = 0
        """Bytes of the current fixed header read so far (0: the next read starts a packet)."""
        self._length = 0
        self._multiplier = 1
        self._body_left = 0

    async def read(self, n: int = -1) -> bytes:
        if n == 0:
            return b""
        if self._body_left == 0 and n != 1:
            raise PacketTooLarge(f"a read of {n} bytes where an MQTT fixed header starts")
        if self._body_left and n > self._body_left:
            raise PacketTooLarge(f"a read of {n} bytes past the packet's end ({self._body_left} left)")
        data: bytes = await self._reader.read(n)
        if self._body_left:
            self._body_left -= len(data)
        elif data:
            self._header_byte(data[0])
        return data

    def _header_byte(self, byte: int) -> None:
        self._header_bytes += 1
        if self._header_bytes == 1:  # packet type and flags
            self._length, self._multiplier = 0, 1
            return
        self._length += (byte & 0x7F) * self._multiplier
        self._multiplier *= 128
        if byte & 0x80:
            return
        self._header_bytes = 0
        if self.max_bytes is not None and self._length > self.max_bytes:
            self._on_too_large(self._length, self.max_bytes)
            raise PacketTooLarge(f"a packet of {self._length} bytes > {self.max_bytes}")
        self._body_left = self._length

    def feed_eof(self) -> None:
        self._reader.feed_eof()


class SessionQueues:
    """Messages and bytes waiting for each session: queued while it is away, or being sent while it is connected."""

    def __init__(self, *, max_messages: int, max_bytes: int, max_unsent_bytes: int, counters: dict[str, int],
                 log: RateLimitedLog) -> None:
        self.max_messages, self.max_bytes = max_messages, max_bytes
        self.max_unsent_bytes = max_unsent_bytes
        """Per connected client; all together at most `UNSENT_TOTAL_FACTOR` times this. A reading client under load
        may lag several megabytes in a burst; one that does not read holds at most this."""
        self._counters = counters
        self._log = log
        self._queued: dict[str, int] = {}
        """client id -> payload bytes in its offline queue."""
        self._sending: dict[str, list[int]] = {}
        """client id -> [packets not written yet, their payload bytes]."""

    def admit(self, session: Any, size: int) -> bool:
        """True when a message of `size` bytes may join `session`'s offline queue (then counted in it)."""
        queued = self._queued.get(session.client_id, 0)
        if session.retained_messages.qsize() >= self.max_messages:
            why = f"{self.max_messages} messages (mqtt.embedded_max_queued_messages)"
        elif queued + size > self.max_bytes:
            why = f"{self.max_bytes} bytes (mqtt.embedded_max_queued_bytes)"
        else:
            self._queued[session.client_id] = queued + size
            return True
        self._refused(session.client_id, f"its offline queue is full ({why})")
        return False

    def drained(self, client_id: str) -> None:
        """The session's offline queue was delivered or deleted."""
        self._queued.pop(client_id, None)

    def count_sends(self, client_id: str, handler: Any) -> None:
        """Wrap amqtt's `handler._send_packet` so the packets to `client_id` not written yet are counted (each waits
        for the connection's write lock, then for its socket to drain: a client that does not read holds them all)."""
        send, sending = handler._send_packet, self._sending

        async def counted(packet: Any) -> Any:
            entry = sending.setdefault(client_id, [0, 0])
            size = len(getattr(packet, "data", None) or b"")
            entry[0] += 1
            entry[1] += size
            try:
                return await send(packet)
            finally:
                entry[0] -= 1
                entry[1] -= size
                if entry[0] <= 0 and sending.get(client_id) is entry:
                    del sending[client_id]

        handler._send_packet = counted

    def may_send(self, client_id: str) -> bool:
        """False when a connected client already has `max_unsent_bytes` waiting to be written, or all clients
        together `UNSENT_TOTAL_FACTOR` times that."""
        size = self._sending.get(client_id, (0, 0))[1]
        if size < self.max_unsent_bytes and self._unsent_total() < UNSENT_TOTAL_FACTOR * self.max_unsent_bytes:
            return True
        self._refused(client_id, f"it does not read fast enough ({size} bytes not written yet; "
                                 "mqtt.embedded_max_unsent_bytes)")
        return False

    def _unsent_total(self) -> int:
        return sum(size for _, size in self._sending.values())

    def total_bytes(self) -> int:
        return sum(self._queued.values()) + sum(size for _, size in self._sending.values())

    def _refused(self, client_id: str, why: str) -> None:
        self._counters["queue_dropped"] += 1
        self._log.warning("queue", "embedded broker: dropped a message for client %r: %s", str(client_id)[:100], why)


@dataclass(frozen=True)
class BrokerLimits:
    """The embedded broker's bounds (the `mqtt.embedded_*` keys, whose defaults these are; docs/SECURITY.md lists them)."""

    connect_timeout_s: float = DEFAULT_EMBEDDED_CONNECT_TIMEOUT_S
    """A socket that sends no CONNECT within this is closed."""
    max_connections: int = DEFAULT_EMBEDDED_MAX_CONNECTIONS
    """Sockets held at once, connected or not."""
    max_pending: int = DEFAULT_EMBEDDED_MAX_PENDING
    """Sockets that have not sent CONNECT yet; a new one beyond it closes the oldest of them."""
    max_message_bytes: int = DEFAULT_EMBEDDED_MAX_MESSAGE_BYTES
    """Largest packet read from a client other than the daemon's own; a larger one closes the connection."""
    max_queued_messages: int = DEFAULT_EMBEDDED_MAX_QUEUED_MESSAGES
    """Messages waiting for one session (offline, or not yet written to it)."""
    max_queued_bytes: int = DEFAULT_EMBEDDED_MAX_QUEUED_BYTES
    """Payload bytes waiting for one session (offline, or not yet written to it)."""
    max_unsent_bytes: int = DEFAULT_EMBEDDED_MAX_UNSENT_BYTES
    """Payload bytes waiting to be written to one connected client; all clients together: 8 times this."""
    max_sessions: int = DEFAULT_EMBEDDED_MAX_SESSIONS
    """Disconnected persistent sessions kept; beyond it the longest-disconnected one is forgotten."""
    max_retained: int = DEFAULT_EMBEDDED_MAX_RETAINED
    """Retained topics kept."""
    max_retained_bytes: int = DEFAULT_EMBEDDED_MAX_RETAINED_BYTES
    """Largest retained payload kept (larger ones are delivered, not retained)."""

    @classmethod
    def from_config(cls, mqtt: Any) -> BrokerLimits:
        """The `mqtt.embedded_*` keys of an `MqttConfig`."""
        return cls(**{f.name: getattr(mqtt, f"embedded_{f.name}") for f in fields(cls)})
