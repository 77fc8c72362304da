"""amqtt's `Broker` with `EmbeddedBroker`'s rules: the few amqtt 0.12 internals the embedded broker overrides.

Each override is checked by a test that attacks it (tests/test_va_mqtt_security.py, tests/test_broker_*.py), so an
amqtt upgrade that moves one fails there first.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from .broker_limits import PacketSizeGuard

__all__ = ["guarded_broker_class"]

_CONNACK_NOT_AUTHORIZED = b"\x20\x02\x00\x05"


def _close(transport: asyncio.WriteTransport) -> None:
    """Close now: a peer that does not read must not hold the descriptor while its unsent data waits."""
    if transport.get_write_buffer_size():
        transport.abort()
    else:
        transport.close()


def guarded_broker_class(base: type) -> type:
    """A subclass of amqtt's `Broker` (`base`) that asks `guard` (the `EmbeddedBroker` that starts it; typed `Any` here,
    as broker.py imports this module) at each step."""
    from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter
    from amqtt.contexts import Action
    from amqtt.errors import AMQTTError

    class _GuardedBroker(base):
        def __init__(self, config: dict[str, Any], *, guard: Any) -> None:
            super().__init__(config)
            self._guard = guard

        # --- connections: slots, CONNECT window, packet size, descriptors freed at once ---------------------

        async def stream_connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                   listener_name: str) -> None:
            guard, transport = self._guard, writer.transport
            adapter = StreamWriterAdapter(writer)
            if not guard.gate.admit(adapter, transport):
                transport.abort()
                return
            sized = PacketSizeGuard(StreamReaderAdapter(reader), guard.max_message_bytes, guard.packet_refused)
            try:
                await self._client_connected(listener_name, sized, adapter)
            finally:
                guard.gate.leave(adapter)
                _close(transport)  # whatever ended it (EOF before CONNECT, junk, a refusal): the descriptor goes now

        async def _initialize_client_session(self, reader: Any, writer: Any, *args: Any) -> Any:
            guard = self._guard
            try:
                return await asyncio.wait_for(super()._initialize_client_session(reader, writer, *args),
                                              guard.connect_timeout_s)
            except TimeoutError:
                guard.counters["connect_timeouts"] += 1
                guard.log.warning("timeout", "embedded broker: closed a connection that sent no CONNECT within %g s",
                                  guard.connect_timeout_s)
                raise AMQTTError(f"no CONNECT within {guard.connect_timeout_s:g} s") from None
            except Exception as exc:  # EOF, junk, a packet too large: amqtt would leave the socket open
                guard.counters["closed_before_connect"] += 1
                raise AMQTTError(f"no valid CONNECT: {exc}") from None

        async def _handle_client_session(self, reader: Any, writer: Any, client_session: Any, *args: Any) -> None:
            # amqtt would take the id over (stopping its holder's connection) before its own credential check
            guard = self._guard
            if not guard.admits(client_session):
                guard.undo_takeover(client_session, self._sessions.get(client_session.client_id, (None,))[0])
                with contextlib.suppress(Exception):
                    writer.write(_CONNACK_NOT_AUTHORIZED)
                    await writer.drain()
                return
            guard.gate.mark_connected(writer)
            if guard.is_daemon(client_session):
                if isinstance(reader, PacketSizeGuard):
                    reader.max_bytes = None  # its own evidence pictures may be larger than a client's limit
            elif args:
                guard.queues.count_sends(client_session.client_id, args[0])  # args[0]: its BrokerProtocolHandler
            await super()._handle_client_session(reader, writer, client_session, *args)

        async def _authenticate(self, session: Any, listener: Any) -> bool:
            return True  # `admits` decided before amqtt's own flow began

        # --- sessions: the daemon's id, offline queues, how many are kept ------------------------------------

        async def _delete_session(self, client_id: str) -> None:
            # a clean-session CONNECT deletes the session of its id before any credential check
            existing = self._sessions.get(client_id, (None,))[0]
            if client_id in self._guard.daemon_sessions and existing is not None and existing.transitions.is_connected():
                return
            self._guard.queues.drained(client_id)
            await super()._delete_session(client_id)

        async def _cleanup_session(self, client_id: str) -> None:
            self._guard.queues.drained(client_id)
            await super()._cleanup_session(client_id)

        async def _retain_broadcast_message(self, broadcast: dict[str, Any], qos: int, target_session: Any) -> None:
            if self._guard.queues.admit(target_session, len(broadcast.get("data") or b"")):
                await super()._retain_broadcast_message(broadcast, qos, target_session)

        async def _publish_session_retained_messages(self, session: Any) -> None:
            await super()._publish_session_retained_messages(session)
            self._guard.queues.drained(session.client_id)

        async def _handle_disconnect(self, client_session: Any, *args: Any) -> None:
            await super()._handle_disconnect(client_session, *args)
            for client_id in self._guard.sessions_over_bound(self._sessions):
                await self._cleanup_session(client_id)

        # --- topics -------------------------------------------------------------------------------------------

        async def _broadcast_message(self, session: Any, topic: str | None, data: Any, force_qos: int | None = None) -> None:
            # who published a question: its note for each copy the daemon's own subscriptions will receive
            guard = self._guard
            if session is not None and topic and data is not None and guard.rights.is_question(topic):
                copies = sum(1 for topic_filter, subscribers in self._subscriptions.items()
                             if self._matches(topic, topic_filter) for target, _ in subscribers if guard.is_daemon(target))
                guard.question_routed(session.client_id, topic, bytes(data), copies)
            await super()._broadcast_message(session, topic, data, force_qos)

        async def _topic_filtering(self, session: Any, topic: str, action: Any) -> bool:
            rights, username = self._guard.rights, getattr(session, "username", None)
            if action == Action.PUBLISH:
                return rights.may_publish(username, topic)
            if action == Action.SUBSCRIBE:
                return rights.may_subscribe(username, topic)
            if not rights.may_receive(username, topic):
                return False
            return self._guard.is_daemon(session) or self._guard.queues.may_send(session.client_id)

        async def retain_message(self, source_session: Any, topic_name: str | None, data: Any, qos: int | None = None) -> None:
            if data and topic_name is not None and source_session is not None and not self._guard.may_retain(
                    topic_name, len(data), self._retained_messages):
                return
            await super().retain_message(source_session, topic_name, data, qos)

    return _GuardedBroker
