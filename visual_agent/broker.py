"""`EmbeddedBroker`: an amqtt broker in this process, for configs that name no broker, safe to leave running.

amqtt speaks MQTT 3.1.1 only; the messager retries with 3.1.1 when a broker refuses 5, and sets TCP_NODELAY
on its socket (a QoS-1 round trip to amqtt takes ~44 ms without it). The broker runs on the daemon's event loop.

What it adds to amqtt (each found missing by trying it as an attacker would):
- Credentials: with `mqtt.username`/`mqtt.password` set, clients must present them (compared in constant time);
  bound beyond loopback they are required (`EmbeddedBrokerError` otherwise).
- The daemon's own client logs in with a random per-start credential; only it may publish under `<prefix>/`
  (status, answers, replies, descriptions, Home Assistant's state topics, rule states); other clients there only
  ask, on `<prefix>/ask` or `<prefix>/<source>/ask`, query the event store on `<prefix>/events/query` and set the
  rules on `<prefix>/rules/set` (no fake answers,
  no fake ``offline``, no fake sensor or rule state).
- The daemon's client id is its own: amqtt takes a client id over (disconnecting its holder) and copies the
  newcomer's credentials onto the existing session before it checks them; here a newcomer is checked first, and one
  that is not the daemon may not use an id the daemon holds (else anyone who read the id in /healthz could
  disconnect the daemon, or leave its session with rights that may not publish its answers).
- A CONNECT timeout: a TCP connection that sends no CONNECT within `mqtt.embedded_connect_timeout_s` is closed
  (idle sockets would otherwise hold all `max_connections` slots and lock every client out).
- Retained messages are bounded: at most `mqtt.embedded_max_retained` topics of at most
  `mqtt.embedded_max_retained_bytes` each; beyond that a message is delivered but not retained (logged, counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import secrets
import socket
from typing import TYPE_CHECKING, Any

from .config import (
    DEFAULT_EMBEDDED_CONNECT_TIMEOUT_S,
    DEFAULT_EMBEDDED_HOST,
    DEFAULT_EMBEDDED_MAX_RETAINED,
    DEFAULT_EMBEDDED_MAX_RETAINED_BYTES,
    DEFAULT_EMBEDDED_PORT,
)
from .errors import EmbeddedBrokerError

if TYPE_CHECKING:
    from .config import MqttConfig

__all__ = ["DAEMON_USERNAME", "EmbeddedBroker"]

logger = logging.getLogger(__name__)

MAX_CONNECTIONS = 256
DAEMON_USERNAME = "visual-agent-daemon"
"""The user name of the daemon's own client at its embedded broker (its password is random per start)."""
_SESSION_FIELDS = ("username", "password", "will_flag", "will_message", "will_topic", "will_qos", "keep_alive")
"""What amqtt copies from a reconnecting client onto the existing session of its id (amqtt 0.12)."""
_CONNACK_NOT_AUTHORIZED = b"\x20\x02\x00\x05"


class EmbeddedBroker:
    """Start with `await start()` (or `async with`); `port` is the bound port; `close()` is idempotent."""

    def __init__(
        self,
        port: int = DEFAULT_EMBEDDED_PORT,
        *,
        host: str = DEFAULT_EMBEDDED_HOST,
        username: str | None = None,
        password: str | None = None,
        prefix: str | None = None,
        connect_timeout_s: float = DEFAULT_EMBEDDED_CONNECT_TIMEOUT_S,
        max_retained: int = DEFAULT_EMBEDDED_MAX_RETAINED,
        max_retained_bytes: int = DEFAULT_EMBEDDED_MAX_RETAINED_BYTES,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self.username = username
        self._password = password
        self.prefix = prefix
        self.connect_timeout_s = connect_timeout_s
        self.max_retained = max_retained
        self.max_retained_bytes = max_retained_bytes
        self.daemon_password = secrets.token_urlsafe(24)
        """The daemon's own client's password (random per start; never logged)."""
        self.counters = {"connect_timeouts": 0, "auth_failures": 0, "publish_denied": 0, "retain_refused": 0,
                         "client_id_refused": 0}
        self.daemon_sessions: dict[str, dict[str, Any]] = {}
        """Client ids the daemon's own client connected with -> that session's fields as the daemon set them."""
        self._broker: Any = None
        self._closed = False

    @classmethod
    def from_config(cls, mqtt: MqttConfig) -> EmbeddedBroker:
        """The embedded broker `mqtt` asks for (address, credentials, limits)."""
        return cls(
            mqtt.embedded_port,
            host=mqtt.embedded_host,
            username=mqtt.username,
            password=mqtt.password.get_secret_value() if mqtt.password is not None else None,
            prefix=mqtt.prefix,
            connect_timeout_s=mqtt.embedded_connect_timeout_s,
            max_retained=mqtt.embedded_max_retained,
            max_retained_bytes=mqtt.embedded_max_retained_bytes,
        )

    def __repr__(self) -> str:
        auth = "password" if self.username else "anonymous"
        return f"EmbeddedBroker({self.host}:{self.port or self.requested_port}, {auth}, running={self._broker is not None})"

    def daemon_client_config(self, mqtt: MqttConfig) -> MqttConfig:
        """`mqtt` with the daemon's own credentials at this broker (the only client that may publish status/answers)."""
        return mqtt.model_copy(update={"username": DAEMON_USERNAME, "password": _secret(self.daemon_password)})

    def describe(self) -> dict[str, Any]:
        """State for /healthz (no secrets)."""
        return {"bind": f"{self.host}:{self.port}", "auth": "password" if self.username else "anonymous",
                "retained": len(self._broker._retained_messages) if self._broker is not None else 0, **self.counters}

    async def start(self) -> EmbeddedBroker:
        if not _is_loopback(self.host) and not (self.username and self._password):
            raise EmbeddedBrokerError(
                f"the embedded MQTT broker would listen on {self.host}, beyond this machine, without a password: set "
                "mqtt.username and mqtt.password (VISUAL_AGENT__MQTT__PASSWORD), or mqtt.embedded_host: 127.0.0.1"
            )
        if bool(self.username) != bool(self._password):
            raise EmbeddedBrokerError("set both mqtt.username and mqtt.password for the embedded broker, or neither")
        try:
            from amqtt.broker import Broker
        except ImportError as exc:  # pragma: no cover - amqtt is a core dependency
            raise EmbeddedBrokerError("amqtt is not installed; install it or configure mqtt.host") from exc
        port = self.requested_port or _free_port(self.host)
        # amqtt logs every connection at INFO; keep the daemon's log readable.
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{port}", "max_connections": MAX_CONNECTIONS}},
            # Authentication and topic rules are `_GuardedBroker`'s own (below), not amqtt plugins.
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        broker = _guarded_broker_class(Broker)(config, guard=self)
        try:
            await broker.start()
        except Exception as exc:
            raise EmbeddedBrokerError(
                f"cannot start the embedded MQTT broker on {self.host}:{port}: {exc} "
                "(is another broker on that port? set mqtt.embedded_port, or mqtt.host to use it)"
            ) from exc
        self._broker = broker
        self.port = port
        logger.info("embedded MQTT broker (amqtt, MQTT 3.1.1) on %s:%d, %s", self.host, port,
                    "password required" if self.username else "anonymous clients allowed (loopback only)")
        return self

    async def __aenter__(self) -> EmbeddedBroker:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        broker, self._broker = self._broker, None
        if broker is not None:
            with contextlib.suppress(Exception):
                await broker.shutdown()

    # --- the rules `_GuardedBroker` asks -------------------------------------------------------------

    def authenticate(self, username: str | None, password: str | None) -> bool:
        """The daemon's own client, the configured user, or (without a configured user) anyone."""
        given = (password or "").encode()
        if username == DAEMON_USERNAME:
            ok = hmac.compare_digest(given, self.daemon_password.encode())
        elif self.username:
            ok = hmac.compare_digest((username or "").encode(), self.username.encode()) & hmac.compare_digest(
                given, (self._password or "").encode())
        else:
            ok = True
        if not ok:
            self.counters["auth_failures"] += 1
            logger.warning("embedded broker: refused a client with a wrong user name or password")
        return ok

    def admits(self, session: Any) -> bool:
        """Credentials, then: an id the daemon holds only for the daemon, a last will only where the client may publish."""
        username = session.username
        if not self.authenticate(username, session.password):
            return False
        if session.client_id in self.daemon_sessions and username != DAEMON_USERNAME:
            self.counters["client_id_refused"] += 1
            logger.warning("embedded broker: refused a client (user %r) that used the daemon's client id", username)
            return False
        # A last will is a publish too: no fake retained `offline` by dying on purpose.
        if session.will_flag and session.will_topic and not self.may_publish(username, session.will_topic):
            return False
        if username == DAEMON_USERNAME:
            self.daemon_sessions[session.client_id] = {f: getattr(session, f, None) for f in _SESSION_FIELDS}
        return True

    def undo_takeover(self, session: Any, existing: Any) -> None:
        """A refused newcomer's fields were copied onto the daemon's existing session: put the daemon's back."""
        saved = self.daemon_sessions.get(session.client_id)
        if saved is not None and session is existing:
            for field, value in saved.items():
                setattr(session, field, value)

    def may_publish(self, username: str | None, topic: str) -> bool:
        """Under `<prefix>/` only the daemon's own client publishes, except what others are meant to send: questions
        (`<prefix>/ask`, `<prefix>/<source>/ask`), event queries (`<prefix>/events/query`) and the rule set
        (`<prefix>/rules/set`)."""
        if username == DAEMON_USERNAME or self.prefix is None:
            return True
        if not topic.startswith(self.prefix + "/") or self._is_inbound(topic[len(self.prefix) + 1:]):
            return True
        self.counters["publish_denied"] += 1
        logger.warning("embedded broker: a client (user %r) may not publish to %s; dropped", username, topic[:200])
        return False

    @staticmethod
    def _is_inbound(rest: str) -> bool:
        """`rest` (the topic after `<prefix>/`) is one the daemon takes from other clients."""
        parts = rest.split("/")
        return rest in ("ask", "rules/set", "events/query") or (len(parts) == 2 and parts[1] == "ask" and parts[0] not in ("", "rules"))

    def may_retain(self, topic: str, size: int, retained: dict[str, Any]) -> bool:
        if size > self.max_retained_bytes:
            why = f"{size} bytes > mqtt.embedded_max_retained_bytes {self.max_retained_bytes}"
        elif topic not in retained and len(retained) >= self.max_retained:
            why = f"{len(retained)} retained topics = mqtt.embedded_max_retained"
        else:
            return True
        self.counters["retain_refused"] += 1
        logger.warning("embedded broker: not retaining the message on %s (%s)", topic, why)
        return False


def _guarded_broker_class(base: type) -> type:
    """amqtt's `Broker` with `EmbeddedBroker`'s rules (amqtt 0.11-0.12 internals; tests/test_va_mqtt_security.py checks each)."""
    from amqtt.contexts import Action
    from amqtt.errors import AMQTTError

    class _GuardedBroker(base):
        def __init__(self, config: dict[str, Any], *, guard: EmbeddedBroker) -> None:
            super().__init__(config)
            self._guard = guard

        async def _initialize_client_session(self, reader: Any, writer: Any, *args: Any) -> Any:
            try:
                return await asyncio.wait_for(super()._initialize_client_session(reader, writer, *args),
                                              self._guard.connect_timeout_s)
            except TimeoutError:
                self._guard.counters["connect_timeouts"] += 1
                with contextlib.suppress(Exception):
                    await writer.close()
                raise AMQTTError(f"no CONNECT within {self._guard.connect_timeout_s:g} s") from None

        async def _handle_client_session(self, reader: Any, writer: Any, client_session: Any, *args: Any) -> None:
            # amqtt would take the id over (stopping its holder's connection) before its own credential check
            if not self._guard.admits(client_session):
                self._guard.undo_takeover(client_session, self._sessions.get(client_session.client_id, (None,))[0])
                with contextlib.suppress(Exception):
                    writer.write(_CONNACK_NOT_AUTHORIZED)
                    await writer.drain()
                with contextlib.suppress(Exception):
                    await writer.close()
                return
            await super()._handle_client_session(reader, writer, client_session, *args)

        async def _authenticate(self, session: Any, listener: Any) -> bool:
            return True  # `admits` decided before amqtt's own flow began

        async def _delete_session(self, client_id: str) -> None:
            # a clean-session CONNECT deletes the session of its id before any credential check
            existing = self._sessions.get(client_id, (None,))[0]
            if client_id in self._guard.daemon_sessions and existing is not None and existing.transitions.is_connected():
                return
            await super()._delete_session(client_id)

        async def _topic_filtering(self, session: Any, topic: str, action: Any) -> bool:
            if action == Action.PUBLISH:
                return self._guard.may_publish(getattr(session, "username", None), topic)
            return True

        async def retain_message(self, source_session: Any, topic_name: str | None, data: Any, qos: int | None = None) -> None:
            if data and topic_name is not None and source_session is not None and not self._guard.may_retain(
                    topic_name, len(data), self._retained_messages):
                return
            await super().retain_message(source_session, topic_name, data, qos)

    return _GuardedBroker


def _secret(value: str) -> Any:
    from pydantic import SecretStr

    return SecretStr(value)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return False


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
