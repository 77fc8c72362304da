"""`MqttMessager`: the MQTT session policy on top of `PahoBridge` (`mqtt_bridge.py`, paho driven by the loop).

A named task owns the connection: connect, wait for CONNACK, subscribe and wait for every SUBACK, and only then
publish the retained ``online`` status (``online`` means "questions are taken now"), flush the outbox, then wait
for the disconnect and reconnect with exponential backoff. A refused or unacknowledged subscription is a failed
attempt. Another named task keeps the connection alive (paho's pings). Both are cancelled and awaited by
`close()`, which is idempotent.

- MQTT 5 by default; a broker that refuses 5 (amqtt speaks only 3.1.1) is retried with 3.1.1 on the same attempt.
- QoS 1. Sessions: with a fixed client id (`mqtt.client_id`) the session outlives a clean stop (MQTT 5 session
  expiry `mqtt.session_expiry_s`, 3.1.1 clean_session False), so questions asked while the daemon is down are
  delivered at its next start. With the random default id, MQTT 5 keeps the session while connected (a broker
  restart keeps our subscription) and ends it on a clean stop; MQTT 3.1.1 uses a clean session (no orphans).
- QoS-1 redeliveries (DUP) of a message already received are dropped, so a question is answered once. PUBACKs go
  in arrival order (`mqtt_acks`): at receipt, or (`settle_by_consumer`) when the consumer calls `msg.settle()`, so
  a question taken but not answered stays in the broker's session if the process dies. A shared group whose
  session ends with the connection starts clean, so a broker may hand a dead member's share on.
- Retained ``<prefix>/status``: ``online`` after each connect, ``offline`` on `close()` and as the last will.
- Publishing never blocks and never raises for a missing connection: while offline, messages wait in a bounded
  outbox (oldest dropped, logged, counted) and go out after the reconnect.
- Received messages wait in a bounded queue (`messages()`); when it is full they are dropped, logged, counted and
  handed to `on_inbox_full` (the agent answers them `busy`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from .config import MqttConfig, MqttProtocol
from .errors import BrokerRefusedError, MessagingError
from .mqtt_bridge import ClosedBeforeConnack, ConnackRefused, IncomingMessage, NoConnack, NotConnected, PahoBridge
from .mqtt_queues import Inbox, MessagerStats, Outbox, Outgoing
from .tasks import cancel_and_wait

__all__ = ["IncomingMessage", "MessagerStats", "MqttMessager", "STATUS_OFFLINE", "STATUS_ONLINE"]

logger = logging.getLogger(__name__)

STATUS_ONLINE = b"online"
STATUS_OFFLINE = b"offline"
_MISC_INTERVAL_S = 1.0
_CLOSE_FLUSH_S = 2.0
_V5_CONNACK_WAIT_S = 3.0
_SUBACK_WAIT_S = 5.0
# CONNACK reason codes meaning "I do not speak this protocol version" (3.1.1 code 1, MQTT 5 code 0x84).
_UNSUPPORTED_PROTOCOL = {1, 0x84}


class MqttMessager:
    """One MQTT connection: subscribe, receive into a bounded queue, publish (outboxed while offline)."""

    def __init__(
        self,
        config: MqttConfig,
        *,
        host: str | None = None,
        port: int | None = None,
        subscriptions: list[str] | tuple[str, ...] = (),
        status_topic: str | None = None,
        client_id: str | None = None,
        persistent_session: bool = True,
        settle_by_consumer: bool = False,
        name: str = "mqtt",
    ) -> None:
        default_host, default_port = config.broker_address()
        self.config = config
        self.host = host or default_host
        self.port = port or default_port
        self.status_topic = status_topic
        self.client_id = client_id or config.client_id or f"visual-agent-{socket.gethostname()[:20]}-{uuid.uuid4().hex[:8]}"
        self.persistent_session = persistent_session
        self.keeps_session = persistent_session and (client_id or config.client_id) is not None
        """A fixed client id: the broker keeps our session (and queues questions) across a clean stop too."""
        self.settle_by_consumer = settle_by_consumer
        """Each received message is acknowledged when its consumer calls `settle()`, not at receipt."""
        self.name = name
        self.protocol = config.protocol
        self.stats = MessagerStats()
        self.on_connected: list[Callable[[], Awaitable[None] | None]] = []
        """Called (on the loop) after each successful connect and subscribe, e.g. Home Assistant discovery."""
        self.on_inbox_full: Callable[[IncomingMessage], None] | None = None
        """Called (soon, on the loop) with each message the full inbox dropped, e.g. to answer it `busy`."""
        self._subscriptions: list[str] = list(subscriptions)
        self._inbox = Inbox(config.inbox_max, self.stats, self._send_ack, settle_by_consumer=settle_by_consumer,
                            on_full=lambda msg: self.on_inbox_full(msg) if self.on_inbox_full else msg.settle())
        self._outbox = Outbox(config.outbox_max, self.stats)
        self._bridge: PahoBridge | None = None
        """paho and its socket; made at the first connect, made again only to fall back to MQTT 3.1.1."""
        self._connected = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._closing = False
        self._closed = False
        self._close_done: asyncio.Future[None] | None = None
        self.last_error: str | None = None
        """Why the last connection attempt or connection failed (for /healthz and `check`)."""

    def __repr__(self) -> str:
        return f"MqttMessager({self.host}:{self.port}, protocol={self.protocol.value}, client_id={self.client_id!r}, state={self.state})"

    # --- lifecycle -------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def state(self) -> str:
        if self._closed:
            return "closed"
        return "connected" if self.connected else ("connecting" if self._tasks else "idle")

    def describe(self) -> dict[str, Any]:
        """State for /healthz."""
        return {
            "broker": f"{self.host}:{self.port}",
            "state": self.state,
            "protocol": self.protocol.value,
            "last_error": self.last_error,
            "client_id": self.client_id,
            "session": "kept across stops" if self.keeps_session else ("while connected" if self._session_while_connected() else "clean"),
            "outbox": len(self._outbox),
            "outbox_max": self.config.outbox_max,
            "unacknowledged": self._inbox.unacknowledged,
            **{k: getattr(self.stats, k) for k in MessagerStats.__slots__},
        }

    def _clean_start(self) -> bool:
        """A replica (`shared_group`) whose session ends with its connection starts clean: a broker that hands a
        dead member's unacknowledged share to the live members (EMQX, HiveMQ) does so at once."""
        return not self.persistent_session or (self.config.shared_group is not None and self.config.session_expiry_s == 0)

    def _session_while_connected(self) -> bool:
        return self.persistent_session and (self.keeps_session or self.protocol is MqttProtocol.V5)

    def response_topic_allowed(self, topic: str) -> bool:
        """Whether an MQTT 5 response topic is one we may publish an answer to (`mqtt.response_topic_prefixes`)."""
        if not topic or any(c in topic for c in "+#\0"):
            return False
        return any(topic.startswith(p) and len(topic) > len(p) for p in self.config.allowed_response_prefixes())

    async def start(self, *, wait: bool = True, timeout: float | None = None) -> None:
        """Start the connection task; with `wait`, return once connected (`MessagingError` after `timeout`)."""
        if self._closed:
            raise MessagingError("messager is closed")
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(self._run(), name=f"{self.name}-connection"),
                loop.create_task(self._misc(), name=f"{self.name}-keepalive"),
            ]
        if wait:
            await self.wait_connected(self.config.connect_timeout_s if timeout is None else timeout)

    async def wait_connected(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            raise MessagingError(
                f"cannot reach the MQTT broker at {self.host}:{self.port} within {timeout:g} s"
                + (f": {self.last_error}" if self.last_error else "")
            ) from None

    async def __aenter__(self) -> MqttMessager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self, *, publish_offline: bool = True) -> None:
        """Publish ``offline`` (if connected), end the session unless it is kept (a fixed client id), disconnect, stop
        the tasks. Safe twice: a concurrent or later call waits until the first is done."""
        if self._close_done is None:
            self._close_done = asyncio.get_running_loop().create_future()
            try:
                await self._close(publish_offline)
            finally:
                self._close_done.set_result(None)
        await asyncio.shield(self._close_done)

    async def _close(self, publish_offline: bool) -> None:
        self._closing = True
        bridge = self._bridge
        if bridge is not None and self.connected:
            if publish_offline and self.status_topic:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.publish(self.status_topic, STATUS_OFFLINE, retain=True, wait=True), _CLOSE_FLUSH_S)
            await bridge.flush(_CLOSE_FLUSH_S)
            # A clean stop of a random id ends the session (MQTT 5): the broker may forget us now.
            await bridge.disconnect(session_expiry_s=None if self.keeps_session else 0)
        await cancel_and_wait(*self._tasks)
        self._tasks = []
        if self._outbox:
            logger.warning("mqtt: closing with %d message(s) never delivered (the broker was away)", len(self._outbox))
        if bridge is not None:
            bridge.close()
        self._connected.clear()
        self._closed = True

    # --- subscribing and receiving ---------------------------------------------------------------

    async def subscribe(self, topic: str, *, timeout: float = _SUBACK_WAIT_S) -> None:
        """Subscribe now (if connected: returns once the broker acknowledged it) and again after every reconnect."""
        if topic not in self._subscriptions:
            self._subscriptions.append(topic)
        if self.connected and self._bridge is not None:
            try:
                (_, codes), = await self._bridge.subscribe([topic], self.config.qos, timeout)
            except NotConnected:
                return  # not connected after all: the reconnect subscribes
            if codes is None:
                logger.warning("mqtt: no SUBACK for %s within %.1f s", topic, timeout)

    async def unsubscribe(self, topic: str, *, timeout: float = _SUBACK_WAIT_S) -> None:
        """Stop receiving `topic`: now (if connected: returns once the broker acknowledged it) and after reconnects.
        Unknown topics are ignored."""
        if topic not in self._subscriptions:
            return
        self._subscriptions.remove(topic)
        if not (self.connected and self._bridge is not None):
            return  # the reconnect leaves it out
        with contextlib.suppress(NotConnected):
            if not await self._bridge.unsubscribe(topic, timeout):
                logger.warning("mqtt: no UNSUBACK for %s within %.1f s", topic, timeout)

    @property
    def shared_group(self) -> str | None:
        """`mqtt.shared_group`: the agent subscribes to `$share/<group>/<prefix>/ask` when set."""
        return self.config.shared_group

    async def messages(self) -> AsyncIterator[IncomingMessage]:
        """Received messages, oldest first, until the messager closes."""
        while not self._closed:
            yield await self._inbox.get(None)

    async def next_message(self, timeout: float | None = None) -> IncomingMessage:
        return await self._inbox.get(timeout)

    def take_pending(self) -> list[IncomingMessage]:
        """Empty the queue of received messages nobody has taken yet (on shutdown, to answer them)."""
        return self._inbox.take_all()

    # --- publishing ------------------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int | None = None,
        retain: bool = False,
        correlation_data: bytes | None = None,
        response_topic: str | None = None,
        wait: bool = False,
    ) -> None:
        """Publish, or keep it in the outbox while offline. With `wait` and a connection, return once the broker
        acknowledged it (while offline, `wait` does not wait: the message goes out after the reconnect).

        `correlation_data` and `response_topic` are MQTT 5 properties (dropped on 3.1.1).
        """
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        item = Outgoing(topic, payload, self.config.qos if qos is None else qos, retain, correlation_data, response_topic)
        if not self.connected or self._bridge is None:
            self._to_outbox(item)
            return
        fut = self._send(item, track=wait)
        if fut is not None:
            await fut

    def _to_outbox(self, item: Outgoing) -> None:
        if self._closed:
            logger.warning("mqtt: closed; dropping a message for %s", item.topic)
            return
        self._outbox.put(item)

    def _send(self, item: Outgoing, *, track: bool = False) -> asyncio.Future[None] | None:
        assert self._bridge is not None
        try:
            fut = self._bridge.publish(item.topic, item.payload, qos=item.qos, retain=item.retain,
                                       correlation_data=item.response_correlation, response_topic=item.response_topic)
        except NotConnected:
            self._to_outbox(item)
            return None
        except MessagingError as exc:
            logger.warning("mqtt: %s", exc)
            return None
        self.stats.published += 1
        return fut if track else None

    # --- the connection task ---------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self.config.reconnect_min_s
        while not self._closing:
            try:
                bridge = await self._connect_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = str(exc)
                logger.warning("mqtt: %s:%d: %s; retrying in %.1f s", self.host, self.port, exc, delay)
                self._drop_bridge_socket()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.reconnect_max_s)
                continue
            delay = self.config.reconnect_min_s
            await bridge.lost.wait()
            if not self._closing:
                logger.warning("mqtt: connection to %s:%d lost (%s); reconnecting", self.host, self.port, self.last_error)
                await asyncio.sleep(self.config.reconnect_min_s)

    def _new_bridge(self) -> PahoBridge:
        return PahoBridge(
            self.config,
            client_id=self.client_id,
            protocol=self.protocol,
            clean_session=not self.keeps_session or self._clean_start(),
            will_topic=self.status_topic,
            will_payload=STATUS_OFFLINE,
            on_message=self._receive,
            on_lost=self._on_lost,
            on_session=self._inbox.reconnected,
            receive_maximum=self.config.inbox_max if self.settle_by_consumer else None,
        )

    async def _connect_once(self) -> PahoBridge:
        """One connection attempt: CONNACK (falling back to 3.1.1 once), every SUBACK, ``online``, the outbox."""
        for attempt in range(2):
            if self._bridge is None:
                self._bridge = self._new_bridge()
            bridge = self._bridge
            v5_first = attempt == 0 and self.protocol is MqttProtocol.V5
            if self.protocol is MqttProtocol.V5 and self.persistent_session and self.config.session_expiry_s == 0:
                logger.warning("mqtt: session_expiry_s is 0: questions asked while we are away are lost")
            # amqtt neither answers nor closes an MQTT 5 CONNECT: do not wait long before trying 3.1.1.
            connack_wait = min(self.config.connect_timeout_s, _V5_CONNACK_WAIT_S) if v5_first else self.config.connect_timeout_s
            try:
                await bridge.connect(
                    self.host, self.port, keepalive=self.config.keepalive_s, clean_start=self._clean_start(),
                    session_expiry_s=self.config.session_expiry_s if self.persistent_session else 0,
                    connect_timeout=self.config.connect_timeout_s, connack_wait=connack_wait,
                )
            except (OSError, ssl.SSLError, NoConnack, ClosedBeforeConnack, ConnackRefused) as exc:
                if v5_first and _means_no_mqtt5(exc):
                    self._fallback()
                    continue
                if isinstance(exc, ConnackRefused):
                    raise BrokerRefusedError(str(exc), reason=exc.text) from exc
                if isinstance(exc, MessagingError):
                    raise MessagingError(str(exc)) from exc
                raise MessagingError(f"connect failed: {type(exc).__name__}: {exc or 'timed out'}") from exc
            break
        self.last_error = None
        self.stats.connects += 1
        acked: set[str] = set()
        while unacked := [t for t in self._subscriptions if t not in acked]:  # `subscribe()` may add one meanwhile
            await self._subscribe_all(bridge, unacked)
            acked.update(unacked)
        if self.status_topic:
            self._send(Outgoing(self.status_topic, STATUS_ONLINE, 1, True, None))
        pending = self._outbox.take_all()
        if pending:
            logger.info("mqtt: sending %d message(s) kept while offline", len(pending))
        for item in pending:
            self._send(item)
        if bridge.lost.is_set():  # dropped again while subscribing: the connection task reconnects
            return bridge
        self._connected.set()
        logger.info("mqtt: connected to %s:%d (MQTT %s, client %s)", self.host, self.port, self.protocol.value, self.client_id)
        for hook in list(self.on_connected):
            try:
                result = hook()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                logger.exception("mqtt: on_connected hook failed")
        return bridge

    async def _subscribe_all(self, bridge: PahoBridge, topics: list[str]) -> None:
        """Subscribe to `topics` and wait for every SUBACK; `MessagingError` (and a disconnect) if one is missing or
        refused: without its subscriptions the daemon is not ready, so it must not say ``online``."""
        try:
            acks = await bridge.subscribe(topics, self.config.qos, _SUBACK_WAIT_S)
        except NotConnected as exc:
            raise MessagingError(str(exc)) from exc
        problem = _suback_problem(acks)
        if problem:  # drop the connection; the connection task tries again with backoff
            with contextlib.suppress(Exception):
                bridge.client.disconnect()
            raise MessagingError(problem)

    def _fallback(self) -> None:
        logger.info("mqtt: %s:%d does not speak MQTT 5; using 3.1.1", self.host, self.port)
        bridge, self._bridge = self._bridge, None
        if bridge is not None:
            bridge.close()
        self.protocol = MqttProtocol.V311

    def _drop_bridge_socket(self) -> None:
        """A failed attempt: stop reading the half-open socket (paho keeps its session for the next attempt)."""
        if self._bridge is not None:
            self._bridge.release_socket()

    async def _misc(self) -> None:
        while True:
            await asyncio.sleep(_MISC_INTERVAL_S)
            if self._bridge is not None and self.connected:
                self._bridge.tick()

    # --- what the bridge reports -----------------------------------------------------------------

    def _on_lost(self, why: str) -> None:
        self.last_error = why
        self._connected.clear()

    def _send_ack(self, mid: int, qos: int) -> bool:
        return self._bridge is not None and self._bridge.ack(mid, qos)

    def _receive(self, msg: IncomingMessage, dup: bool) -> None:
        self.stats.received += 1
        self._inbox.receive(msg, dup)


def _means_no_mqtt5(exc: BaseException) -> bool:
    """Whether a failed MQTT 5 connect says "this broker does not speak 5" (then 3.1.1 is tried at once)."""
    if isinstance(exc, ConnackRefused):
        return exc.code in _UNSUPPORTED_PROTOCOL
    return isinstance(exc, (NoConnack, ClosedBeforeConnack, ConnectionResetError, BrokenPipeError))


def _suback_problem(acks: list[tuple[str, Any]]) -> str | None:
    """Why the subscriptions are not all in place (no SUBACK in time, or a refusal), or None."""
    for topic, codes in acks:
        if codes is None:
            return f"no SUBACK for {topic} within {_SUBACK_WAIT_S:g} s"
        for code in codes:
            if getattr(code, "is_failure", False):
                return f"the broker refused the subscription to {topic}: {code}"
    return None
