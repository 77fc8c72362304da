"""`PahoBridge`: one paho-mqtt 2.x client (`CallbackAPIVersion.VERSION2`) driven by the asyncio loop, as aiomqtt 2.x
drives it. It knows MQTT packets, not policy: `MqttMessager` (`mqtt.py`) decides when to connect, what to
subscribe, what to keep while offline and which protocol to speak.

paho's socket is read and written from the event loop (`add_reader`/`add_writer` call `loop_read`/`loop_write`),
so every paho callback runs on the loop's thread; only the blocking TCP/TLS connect runs in an executor (paho
opens the socket there, so `on_socket_open` and the first `on_socket_register_write` may come from that thread
and are handed to the loop). Each acknowledgement (CONNACK, SUBACK, UNSUBACK, PUBACK) resolves a future.

With QoS 1 paho does not acknowledge what it receives (`manual_ack=True`): `ack()` sends a received message's
PUBACK when the session policy says it is dealt with (`mqtt_acks.ReleaseQueue`), so a message taken but not dealt
with stays in the broker's session if the process dies.

Only paho's public API is used (`socket()`, the callback attributes, `loop_read/loop_write/loop_misc`); a test
(`test_va_mqtt.py::test_bridge_uses_no_private_attributes`) fails if a private one creeps back in.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .config import MqttConfig, MqttProtocol
from .errors import MessagingError

__all__ = ["ClosedBeforeConnack", "ConnackRefused", "IncomingMessage", "NoConnack", "NotConnected", "PahoBridge"]

logger = logging.getLogger(__name__)


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
    mid: int = 0
    """The packet id (QoS>0), for its acknowledgement."""
    settle: Callable[[], None] = field(default=lambda: None, compare=False, repr=False)
    """Call once the message is dealt with (a question: its answer published), so the broker may forget it; safe
    twice. A no-op unless the messager leaves acknowledgements to its consumer (`settle_by_consumer`)."""


class ClosedBeforeConnack(MessagingError):
    """The broker dropped the socket before CONNACK (amqtt does that to MQTT 5 clients)."""


class NoConnack(MessagingError):
    """The socket is open but no CONNACK came in time (amqtt neither answers nor closes an MQTT 5 CONNECT)."""


class ConnackRefused(MessagingError):
    """The broker answered CONNACK with a failure code."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"the broker refused the connection: {text}")
        self.code = code
        self.text = text


class NotConnected(MessagingError):
    """paho has no connection to send on (the caller keeps the message for the reconnect)."""


MessageHandler = Callable[[IncomingMessage, bool], None]
"""``(message, dup)``: every message paho received, with its DUP flag; called on the loop's thread."""


class PahoBridge:
    """One paho client and its socket on the asyncio loop; lives until `close()` (reconnects reuse it, so QoS 1
    messages in flight are re-sent from paho's session)."""

    def __init__(
        self,
        config: MqttConfig,
        *,
        client_id: str,
        protocol: MqttProtocol,
        clean_session: bool,
        will_topic: str | None,
        will_payload: bytes,
        on_message: MessageHandler,
        on_lost: Callable[[str], None],
        on_session: Callable[[bool], None] = lambda present: None,
        receive_maximum: int | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.protocol = protocol
        self._on_message_cb = on_message
        self._on_lost_cb = on_lost
        self._on_session_cb = on_session
        self._receive_maximum = receive_maximum
        self.lost = asyncio.Event()
        """Set when the connection drops (or `disconnect()` completed); cleared by `connect()`."""
        self._connack: asyncio.Future[tuple[int, str] | None] | None = None
        self._sub_waiters: dict[int, asyncio.Future[Any]] = {}
        self._unsub_waiters: dict[int, asyncio.Future[Any]] = {}
        self._pub_waiters: dict[int, asyncio.Future[None]] = {}
        """A future per QoS>0 message the broker has not acknowledged yet (for `publish(track=True)` and `flush`)."""
        self._sock_fd: int | None = None
        self._closed = False
        v5 = protocol is MqttProtocol.V5
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else clean_session,
            reconnect_on_failure=False,
            # QoS 2 is acknowledged (PUBREC) at receipt anyway, and paho leaves an unknown PUBREL unanswered in this mode.
            manual_ack=config.qos == 1,
        )
        if config.username is not None:
            client.username_pw_set(config.username, config.password.get_secret_value() if config.password else None)
        if config.tls.enabled:
            client.tls_set(ca_certs=config.tls.ca_certs, certfile=config.tls.certfile, keyfile=config.tls.keyfile,
                           cert_reqs=ssl.CERT_REQUIRED)
            if config.tls.insecure:
                client.tls_insecure_set(True)
        if will_topic:
            client.will_set(will_topic, will_payload, qos=1, retain=True)
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
        self.client = client

    # --- connecting ------------------------------------------------------------------------------

    async def connect(self, host: str, port: int, *, keepalive: int, clean_start: bool, session_expiry_s: int | None,
                      connect_timeout: float, connack_wait: float) -> None:
        """TCP/TLS connect (in an executor, at most `connect_timeout`), then wait for CONNACK (`connack_wait`).

        Raises `OSError`/`ssl.SSLError`/`TimeoutError` from the connect, `NoConnack`, `ClosedBeforeConnack`, or
        `ConnackRefused`."""
        self.lost.clear()
        self._connack = self._loop.create_future()
        kwargs: dict[str, Any] = {"keepalive": keepalive}
        if self.protocol is MqttProtocol.V5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = session_expiry_s or 0
            if self._receive_maximum is not None:  # at most this many unacknowledged messages sent to us
                props.ReceiveMaximum = self._receive_maximum
            kwargs.update(clean_start=clean_start, properties=props)
        await asyncio.wait_for(
            self._loop.run_in_executor(None, functools.partial(self.client.connect, host, port, **kwargs)), connect_timeout)
        try:
            reason = await asyncio.wait_for(asyncio.shield(self._connack), connack_wait)
        except TimeoutError:
            raise NoConnack(f"no CONNACK within {connack_wait:g} s") from None
        if reason is not None:
            raise ConnackRefused(*reason)

    async def disconnect(self, *, session_expiry_s: int | None = None, timeout: float = 1.0) -> None:
        """Send DISCONNECT (MQTT 5: with a new session expiry when given) and wait until paho closed the socket."""
        props = None
        if self.protocol is MqttProtocol.V5 and session_expiry_s is not None:
            props = Properties(PacketTypes.DISCONNECT)
            props.SessionExpiryInterval = session_expiry_s
        with contextlib.suppress(Exception):
            self.client.disconnect(properties=props)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.lost.wait(), timeout)

    def close(self) -> None:
        """Stop driving the socket and close it (no DISCONNECT: a dead process sends none either). Safe twice."""
        self._closed = True
        client = self.client
        for name in ("on_socket_open", "on_socket_close", "on_socket_register_write", "on_socket_unregister_write"):
            setattr(client, name, None)
        sock = client.socket()
        self._drop_socket(sock.fileno() if sock is not None else None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        for fut in self._pub_waiters.values():
            if not fut.done():
                fut.cancel()
        self._pub_waiters.clear()

    def release_socket(self) -> None:
        """Stop reading the socket of a failed attempt (paho closes it at its next connect)."""
        sock = self.client.socket()
        self._drop_socket(sock.fileno() if sock is not None else None)

    def tick(self) -> None:
        """Keep-alive pings and timeouts (paho's `loop_misc`); call about once a second while connected."""
        self.client.loop_misc()

    def socket(self) -> Any:
        """paho's socket (None when not connected)."""
        return self.client.socket()

    def ack(self, mid: int, qos: int) -> bool:
        """Acknowledge a received message (PUBACK, or PUBCOMP for QoS 2); False when there is no connection (the
        broker sends it again after the reconnect when it keeps the session)."""
        return self.client.ack(mid, qos) == MQTTErrorCode.MQTT_ERR_SUCCESS

    # --- subscribing -----------------------------------------------------------------------------

    async def subscribe(self, topics: list[str], qos: int, timeout: float) -> list[tuple[str, Any]]:
        """Subscribe to `topics` and wait up to `timeout` for their SUBACKs: ``(topic, reason codes or None when
        no SUBACK came)`` for each. `NotConnected` if paho cannot send."""
        sent: list[tuple[str, int, asyncio.Future[Any]]] = []
        try:
            for topic in topics:
                rc, mid = self.client.subscribe(topic, qos=qos)
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
                    raise NotConnected(f"cannot subscribe to {topic}: {paho.error_string(rc)}")
                fut = self._loop.create_future()
                self._sub_waiters[mid] = fut
                sent.append((topic, mid, fut))
            await asyncio.wait([f for _, _, f in sent], timeout=timeout)
            return [(t, f.result() if f.done() and not f.cancelled() else None) for t, _, f in sent]
        finally:
            for _, mid, _ in sent:
                self._sub_waiters.pop(mid, None)

    async def unsubscribe(self, topic: str, timeout: float) -> bool:
        """Unsubscribe and wait up to `timeout` for the UNSUBACK (False when none came). `NotConnected` if paho
        cannot send."""
        rc, mid = self.client.unsubscribe(topic)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise NotConnected(f"cannot unsubscribe from {topic}: {paho.error_string(rc)}")
        fut = self._loop.create_future()
        self._unsub_waiters[mid] = fut
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._unsub_waiters.pop(mid, None)

    # --- publishing ------------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool, correlation_data: bytes | None = None,
                response_topic: str | None = None) -> asyncio.Future[None] | None:
        """Hand a message to paho. Returns a future resolved by the broker's PUBACK (QoS>0), else None.
        `NotConnected` when there is no connection; `MessagingError` when paho refuses it otherwise.
        `correlation_data` and `response_topic` are MQTT 5 properties (dropped on 3.1.1)."""
        props = None
        if self.protocol is MqttProtocol.V5 and (correlation_data is not None or response_topic):
            props = Properties(PacketTypes.PUBLISH)
            if correlation_data is not None:
                props.CorrelationData = correlation_data
            if response_topic:
                props.ResponseTopic = response_topic
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            raise NotConnected(f"no connection to publish to {topic}")
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MessagingError(f"publish to {topic} failed: {paho.error_string(info.rc)}")
        if qos == 0:
            return None
        fut = self._pub_waiters.get(info.mid)
        if fut is None or fut.done():
            fut = self._pub_waiters[info.mid] = self._loop.create_future()
        return fut

    async def flush(self, timeout: float) -> None:
        """Wait until the broker acknowledged every QoS>0 message we sent (or `timeout`)."""
        deadline = time.monotonic() + timeout
        while (pending := [f for f in self._pub_waiters.values() if not f.done()]) and not self.lost.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.wait([*pending], timeout=left)

    # --- paho callbacks (on the loop's thread, except socket-open during connect) ----------------

    def _on_loop(self, fn: Callable[[], Any]) -> None:
        if self._loop.is_closed():
            return
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:  # paho's connect, in the executor's thread
            here = None
        if here is self._loop:
            fn()
        else:
            self._loop.call_soon_threadsafe(fn)

    def _drop_socket(self, fd: int | None = None) -> None:
        for each in {fd, self._sock_fd} - {None}:
            assert each is not None
            if each >= 0:
                self._loop.remove_reader(each)
                self._loop.remove_writer(each)
        self._sock_fd = None

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        with contextlib.suppress(OSError, AttributeError):
            # A QoS-1 round trip to amqtt takes ~44 ms without it, ~0.4 ms with it.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        fd = sock.fileno()

        def add() -> None:
            if not self._closed:
                self._sock_fd = fd
                self._loop.add_reader(fd, self._readable, sock)

        self._on_loop(add)

    def _readable(self, sock: Any) -> None:
        self.client.loop_read()
        # TLS may hold decrypted bytes the selector cannot see.
        while not self._closed and self.client.socket() is sock and getattr(sock, "pending", lambda: 0)() > 0:
            self.client.loop_read()

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        fd = sock.fileno()

        def remove() -> None:
            if fd >= 0:
                self._loop.remove_reader(fd)
                self._loop.remove_writer(fd)
            if self._sock_fd == fd:
                self._sock_fd = None

        self._on_loop(remove)

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        fd = sock.fileno()
        self._on_loop(lambda: self._closed or self._loop.add_writer(fd, client.loop_write))

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        fd = sock.fileno()
        self._on_loop(lambda: self._loop.remove_writer(fd))

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        fut = self._connack
        if fut is None or fut.done():
            return
        if not reason_code.is_failure:  # before any message of this connection is read
            self._on_session_cb(bool(getattr(flags, "session_present", False)))
        fut.set_result((int(reason_code.value), str(reason_code)) if reason_code.is_failure else None)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if self._closed:
            return
        fut = self._connack
        if fut is not None and not fut.done():
            fut.set_exception(ClosedBeforeConnack(f"the broker closed the connection before CONNACK ({reason_code})"))
        # QoS>0 messages in flight stay in paho's session and are re-sent after the reconnect.
        self._on_lost_cb(f"disconnected: {reason_code}")
        self.lost.set()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        """The one place a paho message becomes an `IncomingMessage` (and where its acknowledgement belongs)."""
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
            mid=message.mid,
        )
        self._on_message_cb(msg, bool(getattr(message, "dup", False)))

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
