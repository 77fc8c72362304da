"""`MqttMessager`: paho-mqtt 2.x (`CallbackAPIVersion.VERSION2`) driven by the asyncio loop, as aiomqtt 2.x does.

paho's socket is read and written from the event loop (`add_reader`/`add_writer` call `loop_read`/`loop_write`),
so every paho callback runs on the loop's thread; only the blocking TCP/TLS connect runs in an executor.
A named task owns the connection: connect, wait for CONNACK, subscribe and wait for every SUBACK, and only then
publish the retained ``online`` status (``online`` means "questions are taken now"), flush the outbox, then wait
for the disconnect and reconnect with exponential backoff. A refused or unacknowledged subscription is a failed
attempt. Another named task calls `loop_misc` (keep-alive pings). Both are cancelled and awaited by `close()`, which is idempotent.

- MQTT 5 by default; a broker that refuses 5 (amqtt speaks only 3.1.1) is retried with 3.1.1 on the same attempt.
- QoS 1. Sessions: with a fixed client id (`mqtt.client_id`) the session outlives a clean stop (MQTT 5 session
  expiry `mqtt.session_expiry_s`, 3.1.1 clean_session False), so questions asked while the daemon is down are
  delivered at its next start. With the random default id, MQTT 5 keeps the session while connected (a broker
  restart keeps our subscription) and ends it on a clean stop; MQTT 3.1.1 uses a clean session (no orphans).
- QoS-1 redeliveries (DUP) of a message already received are dropped, so a question is answered once.
- Retained ``<prefix>/status``: ``online`` after each connect, ``offline`` on `close()` and as the last will.
- Publishing never blocks and never raises for a missing connection: while offline, messages wait in a bounded
  outbox (oldest dropped, logged, counted) and go out after the reconnect.
- Received messages wait in a bounded queue (`messages()`); when it is full they are dropped, logged, counted and
  handed to `on_inbox_full` (the agent answers them `busy`).
- `TCP_NODELAY` on the socket: a QoS-1 round trip to amqtt takes ~44 ms without it, ~0.4 ms with it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import socket
import ssl
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .config import MqttConfig, MqttProtocol
from .errors import BrokerRefusedError, MessagingError

__all__ = ["IncomingMessage", "MessagerStats", "MqttMessager", "STATUS_OFFLINE", "STATUS_ONLINE"]

logger = logging.getLogger(__name__)

STATUS_ONLINE = b"online"
STATUS_OFFLINE = b"offline"
_MISC_INTERVAL_S = 1.0
_CLOSE_FLUSH_S = 2.0
_V5_CONNACK_WAIT_S = 3.0
_SUBACK_WAIT_S = 5.0
_RECENT_KEPT = 512  # fingerprints of received messages remembered to drop QoS-1 redeliveries
# CONNACK reason codes meaning "I do not speak this protocol version" (3.1.1 code 1, MQTT 5 code 0x84).
_UNSUPPORTED_PROTOCOL = {1, 0x84}


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """A message received on a subscribed topic."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    response_topic: str | None
    """MQTT 5: where the asker wants the answer."""
    correlation_data: bytes | None
    """MQTT 5: echoed with the answer."""
    received_at: float
    """`time.monotonic()` when paho handed it over."""
    received_wall: float = 0.0
    """`time.time()` when paho handed it over (to tell how long a question waited, against its `asked_at`)."""


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
class _Outgoing:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    response_correlation: bytes | None
    response_topic: str | None = None


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
        self._recent: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.name = name
        self.protocol = config.protocol
        self.stats = MessagerStats()
        self.on_connected: list[Callable[[], Awaitable[None] | None]] = []
        """Called (on the loop) after each successful connect and subscribe, e.g. Home Assistant discovery."""
        self.on_inbox_full: Callable[[IncomingMessage], None] | None = None
        """Called (soon, on the loop) with each message the full inbox dropped, e.g. to answer it `busy`."""
        self._subscriptions: list[str] = list(subscriptions)
        self._inbox: asyncio.Queue[IncomingMessage] = asyncio.Queue(maxsize=config.inbox_max)
        self._outbox: collections.deque[_Outgoing] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: paho.Client | None = None
        self._connected = asyncio.Event()
        self._lost = asyncio.Event()
        self._connack: asyncio.Future[Any] | None = None
        self._pub_waiters: dict[int, asyncio.Future[None]] = {}
        self._sub_waiters: dict[int, asyncio.Future[Any]] = {}
        self._unsub_waiters: dict[int, asyncio.Future[Any]] = {}
        self._sock_fd: int | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._closing = False
        self._closed = False
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
            **{k: getattr(self.stats, k) for k in MessagerStats.__slots__},
        }

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
            self._loop = asyncio.get_running_loop()
            self._tasks = [
                self._loop.create_task(self._run(), name=f"{self.name}-connection"),
                self._loop.create_task(self._misc(), name=f"{self.name}-keepalive"),
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
        the tasks. Safe twice."""
        if self._closed:
            return
        self._closing = True
        client = self._client
        if client is not None and self.connected:
            if publish_offline and self.status_topic:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.publish(self.status_topic, STATUS_OFFLINE, retain=True, wait=True), _CLOSE_FLUSH_S)
            await self._flush_inflight(_CLOSE_FLUSH_S)
            props = None
            if self.protocol is MqttProtocol.V5 and not self.keeps_session:
                props = Properties(PacketTypes.DISCONNECT)
                props.SessionExpiryInterval = 0  # a clean stop of a random id: the broker may forget us now
            with contextlib.suppress(Exception):
                client.disconnect(properties=props)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._lost.wait(), 1.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._outbox:
            logger.warning("mqtt: closing with %d message(s) never delivered (the broker was away)", len(self._outbox))
        self._drop_socket()
        if client is not None:
            for name in ("on_socket_open", "on_socket_close", "on_socket_register_write", "on_socket_unregister_write"):
                setattr(client, name, None)
            with contextlib.suppress(Exception):
                client._sock_close()
        for fut in self._pub_waiters.values():
            if not fut.done():
                fut.cancel()
        self._pub_waiters.clear()
        self._connected.clear()
        self._closed = True

    async def _flush_inflight(self, timeout: float) -> None:
        """Wait until the broker acknowledged every QoS>0 message we sent (or `timeout`)."""
        deadline = time.monotonic() + timeout
        while self._client is not None and self.connected and time.monotonic() < deadline:
            with self._client._out_message_mutex:  # paho keeps unacknowledged QoS>0 messages here
                if not self._client._out_messages:
                    return
            await asyncio.sleep(0.01)

    # --- subscribing and receiving ---------------------------------------------------------------

    async def subscribe(self, topic: str, *, timeout: float = _SUBACK_WAIT_S) -> None:
        """Subscribe now (if connected: returns once the broker acknowledged it) and again after every reconnect."""
        if topic not in self._subscriptions:
            self._subscriptions.append(topic)
        if self.connected and self._client is not None and self._loop is not None:
            rc, mid = self._client.subscribe(topic, qos=self.config.qos)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
                return  # not connected after all: the reconnect subscribes
            fut = self._loop.create_future()
            self._sub_waiters[mid] = fut
            try:
                await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                logger.warning("mqtt: no SUBACK for %s within %.1f s", topic, timeout)
            finally:
                self._sub_waiters.pop(mid, None)

    async def unsubscribe(self, topic: str, *, timeout: float = _SUBACK_WAIT_S) -> None:
        """Stop receiving `topic`: now (if connected: returns once the broker acknowledged it) and after reconnects.
        Unknown topics are ignored."""
        if topic not in self._subscriptions:
            return
        self._subscriptions.remove(topic)
        if not (self.connected and self._client is not None and self._loop is not None):
            return  # the reconnect leaves it out
        rc, mid = self._client.unsubscribe(topic)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            return
        fut = self._loop.create_future()
        self._unsub_waiters[mid] = fut
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            logger.warning("mqtt: no UNSUBACK for %s within %.1f s", topic, timeout)
        finally:
            self._unsub_waiters.pop(mid, None)

    @property
    def shared_group(self) -> str | None:
        """`mqtt.shared_group`: the agent subscribes to `$share/<group>/<prefix>/ask` when set."""
        return self.config.shared_group

    async def messages(self) -> AsyncIterator[IncomingMessage]:
        """Received messages, oldest first, until the messager closes."""
        while not self._closed:
            yield await self._inbox.get()

    async def next_message(self, timeout: float | None = None) -> IncomingMessage:
        return await asyncio.wait_for(self._inbox.get(), timeout)

    def take_pending(self) -> list[IncomingMessage]:
        """Empty the queue of received messages nobody has taken yet (on shutdown, to answer them)."""
        taken: list[IncomingMessage] = []
        while not self._inbox.empty():
            taken.append(self._inbox.get_nowait())
        return taken

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
        item = _Outgoing(topic, payload, self.config.qos if qos is None else qos, retain, correlation_data, response_topic)
        if not self.connected or self._client is None:
            self._to_outbox(item)
            return
        fut = self._send(item, track=wait)
        if fut is not None:
            await fut

    def _to_outbox(self, item: _Outgoing) -> None:
        if self._closed:
            logger.warning("mqtt: closed; dropping a message for %s", item.topic)
            return
        if len(self._outbox) >= self.config.outbox_max:
            old = self._outbox.popleft()
            self.stats.outbox_dropped += 1
            logger.warning("mqtt: outbox full (%d); dropped the oldest message for %s", self.config.outbox_max, old.topic)
        self._outbox.append(item)
        self.stats.outboxed += 1

    def _send(self, item: _Outgoing, *, track: bool = False) -> asyncio.Future[None] | None:
        client = self._client
        assert client is not None and self._loop is not None
        props = None
        if self.protocol is MqttProtocol.V5 and (item.response_correlation is not None or item.response_topic):
            props = Properties(PacketTypes.PUBLISH)
            if item.response_correlation is not None:
                props.CorrelationData = item.response_correlation
            if item.response_topic:
                props.ResponseTopic = item.response_topic
        info = client.publish(item.topic, item.payload, qos=item.qos, retain=item.retain, properties=props)
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            self._to_outbox(item)
            return None
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            logger.warning("mqtt: publish to %s failed: %s", item.topic, paho.error_string(info.rc))
            return None
        self.stats.published += 1
        if item.qos == 0 or not track:
            return None
        fut = self._loop.create_future()
        self._pub_waiters[info.mid] = fut
        return fut

    # --- the connection task ---------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self.config.reconnect_min_s
        while not self._closing:
            try:
                await self._connect_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = str(exc)
                logger.warning("mqtt: %s:%d: %s; retrying in %.1f s", self.host, self.port, exc, delay)
                self._drop_socket()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.reconnect_max_s)
                continue
            delay = self.config.reconnect_min_s
            await self._lost.wait()
            if not self._closing:
                logger.warning("mqtt: connection to %s:%d lost (%s); reconnecting", self.host, self.port, self.last_error)
                await asyncio.sleep(self.config.reconnect_min_s)

    def _make_client(self) -> paho.Client:
        cfg = self.config
        v5 = self.protocol is MqttProtocol.V5
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else not self.keeps_session,
            reconnect_on_failure=False,
        )
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password.get_secret_value() if cfg.password else None)
        if cfg.tls.enabled:
            client.tls_set(ca_certs=cfg.tls.ca_certs, certfile=cfg.tls.certfile, keyfile=cfg.tls.keyfile, cert_reqs=ssl.CERT_REQUIRED)
            if cfg.tls.insecure:
                client.tls_insecure_set(True)
        if self.status_topic:
            client.will_set(self.status_topic, STATUS_OFFLINE, qos=1, retain=True)
        client.enable_logger(logging.getLogger("visual_agent.mqtt.paho"))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        return client

    async def _connect_once(self) -> None:
        assert self._loop is not None
        for attempt in range(2):
            if self._client is None:
                self._client = self._make_client()
            client = self._client
            self._lost.clear()
            self._connack = self._loop.create_future()
            props = None
            if self.protocol is MqttProtocol.V5:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = self.config.session_expiry_s if self.persistent_session else 0
                if self.persistent_session and self.config.session_expiry_s == 0:
                    logger.warning("mqtt: session_expiry_s is 0: questions asked while we are away are lost")
            kwargs: dict[str, Any] = {"keepalive": self.config.keepalive_s}
            if self.protocol is MqttProtocol.V5:
                kwargs.update(clean_start=not self.persistent_session, properties=props)
            try:
                await asyncio.wait_for(
                    self._loop.run_in_executor(None, functools.partial(client.connect, self.host, self.port, **kwargs)),
                    self.config.connect_timeout_s,
                )
                v5_first = attempt == 0 and self.protocol is MqttProtocol.V5
                # amqtt neither answers nor closes an MQTT 5 CONNECT: do not wait long before trying 3.1.1.
                connack_wait = min(self.config.connect_timeout_s, _V5_CONNACK_WAIT_S) if v5_first else self.config.connect_timeout_s
                try:
                    reason = await asyncio.wait_for(asyncio.shield(self._connack), connack_wait)
                except TimeoutError:
                    if v5_first:
                        self._fallback()
                        continue
                    raise
            except (TimeoutError, OSError, ssl.SSLError) as exc:
                if attempt == 0 and self.protocol is MqttProtocol.V5 and isinstance(exc, (ConnectionResetError, BrokenPipeError)):
                    self._fallback()
                    continue
                raise MessagingError(f"connect failed: {type(exc).__name__}: {exc or 'timed out'}") from exc
            except _ClosedBeforeConnack as exc:
                if attempt == 0 and self.protocol is MqttProtocol.V5:
                    self._fallback()
                    continue
                raise MessagingError(str(exc)) from exc
            if reason is not None:
                code, text = reason
                if attempt == 0 and self.protocol is MqttProtocol.V5 and code in _UNSUPPORTED_PROTOCOL:
                    self._fallback()
                    continue
                raise BrokerRefusedError(f"the broker refused the connection: {text}", reason=text)
            break
        self.last_error = None
        self.stats.connects += 1
        acked: set[str] = set()
        while unacked := [t for t in self._subscriptions if t not in acked]:  # `subscribe()` may add one meanwhile
            await self._subscribe_all(client, unacked)
            acked.update(unacked)
        if self.status_topic:
            self._send(_Outgoing(self.status_topic, STATUS_ONLINE, 1, True, None))
        pending, self._outbox = self._outbox, collections.deque()
        if pending:
            logger.info("mqtt: sending %d message(s) kept while offline", len(pending))
        for item in pending:
            self._send(item)
        if self._lost.is_set():  # dropped again while subscribing: the connection task reconnects
            return
        self._connected.set()
        logger.info("mqtt: connected to %s:%d (MQTT %s, client %s)", self.host, self.port, self.protocol.value, self.client_id)
        for hook in list(self.on_connected):
            try:
                result = hook()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                logger.exception("mqtt: on_connected hook failed")

    async def _subscribe_all(self, client: paho.Client, topics: list[str]) -> None:
        """Subscribe to `topics` and wait for every SUBACK; `MessagingError` (and a disconnect) if one is missing or
        refused: without its subscriptions the daemon is not ready, so it must not say ``online``."""
        assert self._loop is not None
        subacks: list[tuple[str, int, asyncio.Future[Any]]] = []
        for topic in topics:
            rc, mid = client.subscribe(topic, qos=self.config.qos)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
                raise MessagingError(f"cannot subscribe to {topic}: {paho.error_string(rc)}")
            fut = self._loop.create_future()
            self._sub_waiters[mid] = fut
            subacks.append((topic, mid, fut))
        try:
            await asyncio.wait([f for _, _, f in subacks], timeout=_SUBACK_WAIT_S)
        finally:
            for _, mid, _ in subacks:
                self._sub_waiters.pop(mid, None)
        problem = _suback_problem([(t, f) for t, _, f in subacks])
        if problem:  # drop the connection; the connection task tries again with backoff
            with contextlib.suppress(Exception):
                client.disconnect()
            raise MessagingError(problem)

    def _fallback(self) -> None:
        logger.info("mqtt: %s:%d does not speak MQTT 5; using 3.1.1", self.host, self.port)
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client._sock_close()  # paho's own close: fires on_socket_close, which unregisters the fd
        self._drop_socket()
        self.protocol = MqttProtocol.V311

    async def _misc(self) -> None:
        while True:
            await asyncio.sleep(_MISC_INTERVAL_S)
            if self._client is not None and self.connected:
                self._client.loop_misc()

    def _drop_socket(self) -> None:
        if self._sock_fd is not None and self._loop is not None:
            self._loop.remove_reader(self._sock_fd)
            self._loop.remove_writer(self._sock_fd)
            self._sock_fd = None

    # --- paho callbacks (on the loop's thread, except socket-open during connect) ----------------

    def _on_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._loop is not None
        if self._loop.is_closed():
            return
        if threading.get_ident() == getattr(self._loop, "_thread_id", None):
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        fd = sock.fileno()

        def add() -> None:
            if client is not self._client:
                return
            self._sock_fd = fd
            self._loop.add_reader(fd, self._readable, client, sock)  # type: ignore[union-attr]

        self._on_loop(add)

    def _readable(self, client: paho.Client, sock: Any) -> None:
        client.loop_read()
        # TLS may hold decrypted bytes the selector cannot see.
        while client is self._client and getattr(sock, "pending", lambda: 0)() > 0:
            client.loop_read()

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        fd = sock.fileno()

        def remove() -> None:
            if fd >= 0:
                self._loop.remove_reader(fd)  # type: ignore[union-attr]
                self._loop.remove_writer(fd)  # type: ignore[union-attr]
            if self._sock_fd == fd:
                self._sock_fd = None

        self._on_loop(remove)

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        fd = sock.fileno()
        self._on_loop(lambda: client is self._client and self._loop.add_writer(fd, client.loop_write))  # type: ignore[union-attr]

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        fd = sock.fileno()
        self._on_loop(lambda: self._loop.remove_writer(fd))  # type: ignore[union-attr]

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        fut = self._connack
        if fut is None or fut.done():
            return
        if reason_code.is_failure:
            fut.set_result((int(reason_code.value), str(reason_code)))
        else:
            fut.set_result(None)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if client is not self._client:
            return
        self.last_error = f"disconnected: {reason_code}"
        self._connected.clear()
        fut = self._connack
        if fut is not None and not fut.done():
            fut.set_exception(_ClosedBeforeConnack(f"the broker closed the connection before CONNACK ({reason_code})"))
        # QoS>0 messages in flight stay in paho's session and are re-sent after the reconnect.
        self._lost.set()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        props = getattr(message, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        msg = IncomingMessage(
            topic=message.topic,
            payload=bytes(message.payload),
            qos=message.qos,
            retain=bool(message.retain),
            response_topic=response_topic or None,
            correlation_data=bytes(correlation) if correlation is not None else None,
            received_at=time.monotonic(),
            received_wall=time.time(),
        )
        self.stats.received += 1
        fingerprint = hash((msg.topic, msg.payload, msg.correlation_data))
        if getattr(message, "dup", False) and fingerprint in self._recent:
            self.stats.duplicates_dropped += 1
            logger.info("mqtt: dropped a redelivered copy of a message on %s", msg.topic)
            return
        self._recent[fingerprint] = None
        if len(self._recent) > _RECENT_KEPT:
            self._recent.popitem(last=False)
        try:
            self._inbox.put_nowait(msg)
        except asyncio.QueueFull:
            self.stats.inbox_dropped += 1
            logger.warning("mqtt: inbox full (%d); dropped a message on %s", self.config.inbox_max, msg.topic)
            if self.on_inbox_full is not None and self._loop is not None:
                self._loop.call_soon(self.on_inbox_full, msg)  # not from inside paho's callback

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        fut = self._sub_waiters.get(mid)
        if fut is not None and not fut.done():
            fut.set_result(reason_codes)
        for code in reason_codes or ():
            if getattr(code, "is_failure", False):
                logger.warning("mqtt: the broker refused a subscription: %s", code)

    def _on_unsubscribe(self, client: paho.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        fut = self._unsub_waiters.get(mid)
        if fut is not None and not fut.done():
            fut.set_result(reason_codes)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        fut = self._pub_waiters.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)


def _suback_problem(acks: list[tuple[str, asyncio.Future[Any]]]) -> str | None:
    """Why the subscriptions are not all in place (no SUBACK in time, or a refusal), or None."""
    for topic, fut in acks:
        if not fut.done():
            return f"no SUBACK for {topic} within {_SUBACK_WAIT_S:g} s"
        for code in fut.result() or ():
            if getattr(code, "is_failure", False):
                return f"the broker refused the subscription to {topic}: {code}"
    return None


class _ClosedBeforeConnack(MessagingError):
    """The broker dropped the socket before CONNACK (amqtt does that to MQTT 5 clients)."""
