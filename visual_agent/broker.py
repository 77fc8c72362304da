"""`EmbeddedBroker`: an amqtt broker in this process, for configs that name no broker, safe to leave running.

amqtt speaks MQTT 3.1.1 only; the messager retries with 3.1.1 when a broker refuses 5, and sets TCP_NODELAY
on its socket (a QoS-1 round trip to amqtt takes ~44 ms without it). The broker runs on the daemon's event loop.

What it adds to amqtt (each found missing by trying it as an attacker would; docs/SECURITY.md lists the tests):
- Credentials: with `mqtt.username`/`mqtt.password` set, clients must present them (compared in constant time);
  bound beyond loopback they are required (`EmbeddedBrokerError` otherwise).
- Topic rights (`broker_acl.TopicRights`): the daemon's own client logs in with a random per-start credential and
  alone publishes under `<prefix>/`; others ask (`<prefix>/ask`, `<prefix>/<source>/ask`) but may not read the
  questions, and query the event store (`<prefix>/events/query`); only the daemon and the operator (the configured
  broker user) set the rules and Home Assistant's discovery configs.
- The daemon's client id is its own: amqtt takes a client id over (disconnecting its holder) and copies the
  newcomer's credentials onto the existing session before it checks them; here a newcomer is checked first, and one
  that is not the daemon may not use an id the daemon holds (else anyone who read the id in /healthz could
  disconnect the daemon, or leave its session with rights that may not publish its answers).
- Who asks (`broker_senders.QuestionSenders`): MQTT 3.1.1 has no response topic, so the broker notes the client id
  that published each question it routes to the daemon; the MQTT intake asks `sender_of` for the message it got,
  and each client is an asker of its own (`client:<id>`: its fair share, its conversations).
- Bounds (`broker_limits`): connection slots that idle sockets cannot hold, descriptors freed as soon as a socket
  ends before its CONNECT, a CONNECT window, a packet size, what waits for each session (offline, or unsent to a
  client that does not read: count and bytes), kept sessions, retained messages. Each refusal is counted in
  `describe()` (/healthz) and logged, rate-limited.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import secrets
import socket
from typing import TYPE_CHECKING, Any

from .broker_acl import DAEMON_USERNAME, TopicRights
from .broker_limits import BrokerLimits, ConnectionGate, RateLimitedLog, RateLimitFilter, SessionQueues
from .broker_senders import QuestionSenders
from .config import DEFAULT_EMBEDDED_HOST, DEFAULT_EMBEDDED_PORT
from .errors import EmbeddedBrokerError

if TYPE_CHECKING:
    from .config import MqttConfig

__all__ = ["DAEMON_USERNAME", "BrokerLimits", "EmbeddedBroker"]

logger = logging.getLogger(__name__)

_SESSION_FIELDS = ("username", "password", "will_flag", "will_message", "will_topic", "will_qos", "keep_alive")
"""What amqtt copies from a reconnecting client onto the existing session of its id (amqtt 0.12)."""
_COUNTERS = ("auth_failures", "client_id_refused", "publish_denied", "subscribe_denied", "retain_refused",
             "connect_timeouts", "closed_before_connect", "pending_evicted", "connections_refused", "message_too_large",
             "queue_dropped", "sessions_evicted")


class EmbeddedBroker:
    """Start with `await start()` (or `async with`); `port` is the bound port; `close()` is idempotent."""

    def __init__(self, port: int = DEFAULT_EMBEDDED_PORT, *, host: str = DEFAULT_EMBEDDED_HOST, username: str | None = None,
                 password: str | None = None, prefix: str | None = None, discovery_prefix: str | None = "homeassistant",
                 limits: BrokerLimits | None = None) -> None:
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self.username = username
        self._password = password
        self.prefix = prefix
        self.limits = limits or BrokerLimits()
        self.daemon_password = secrets.token_urlsafe(24)
        """The daemon's own client's password (random per start; never logged)."""
        self.counters = dict.fromkeys(_COUNTERS, 0)
        self.log = RateLimitedLog(logger)
        self.rights = TopicRights(prefix, discovery_prefix=discovery_prefix, operator=username if password else None,
                                  counters=self.counters, log=self.log)
        lim = self.limits
        self.gate = ConnectionGate(max_connections=lim.max_connections, max_pending=lim.max_pending,
                                   counters=self.counters, log=self.log)
        self.queues = SessionQueues(max_messages=lim.max_queued_messages, max_bytes=lim.max_queued_bytes,
                                    max_unsent_bytes=lim.max_unsent_bytes,
                                    counters=self.counters, log=self.log)
        self.senders = QuestionSenders()
        """Who published the questions routed to the daemon, until its MQTT intake takes them (`sender_of`)."""
        self.daemon_sessions: dict[str, dict[str, Any]] = {}
        """Client ids the daemon's own client connected with -> that session's fields as the daemon set them."""
        self._broker: Any = None
        self._closed = False

    @classmethod
    def from_config(cls, mqtt: MqttConfig) -> EmbeddedBroker:
        """The embedded broker `mqtt` asks for (address, credentials, topic rights, limits)."""
        return cls(
            mqtt.embedded_port,
            host=mqtt.embedded_host,
            username=mqtt.username,
            password=mqtt.password.get_secret_value() if mqtt.password is not None else None,
            prefix=mqtt.prefix,
            discovery_prefix=mqtt.homeassistant.discovery_prefix,
            limits=BrokerLimits.from_config(mqtt),
        )

    def __repr__(self) -> str:
        auth = "password" if self.username else "anonymous"
        return f"EmbeddedBroker({self.host}:{self.port or self.requested_port}, {auth}, running={self._broker is not None})"

    @property
    def connect_timeout_s(self) -> float:
        return self.limits.connect_timeout_s

    @property
    def max_message_bytes(self) -> int:
        return self.limits.max_message_bytes

    def daemon_client_config(self, mqtt: MqttConfig) -> MqttConfig:
        """`mqtt` with the daemon's own credentials at this broker (the only client that may publish status/answers)."""
        return mqtt.model_copy(update={"username": DAEMON_USERNAME, "password": _secret(self.daemon_password)})

    def describe(self) -> dict[str, Any]:
        """State for /healthz (no secrets): sockets, sessions, queued bytes, retained topics and the refusal counters."""
        b = self._broker
        return {"bind": f"{self.host}:{self.port}", "auth": "password" if self.username else "anonymous",
                "connected": self.gate.connected, "pending": self.gate.pending,
                "sessions": len(b._sessions) if b is not None else 0, "queued_bytes": self.queues.total_bytes(),
                "retained": len(b._retained_messages) if b is not None else 0, **self.counters}

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
        from .broker_amqtt import guarded_broker_class

        port = self.requested_port or _free_port(self.host)
        _quiet_amqtt_logs()
        config = {
            # No amqtt `max_connections`: its semaphore makes sockets beyond it wait, unbounded; `ConnectionGate` decides.
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{port}"}},
            # Authentication and topic rules are `_GuardedBroker`'s own (broker_amqtt.py), not amqtt plugins.
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        broker = guarded_broker_class(Broker)(config, guard=self)
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
        self.gate.close_pending()

    # --- the rules `broker_amqtt._GuardedBroker` asks ------------------------------------------------

    def question_routed(self, client_id: str | None, topic: str, payload: bytes, copies: int) -> None:
        """A client (not the daemon) published a question that reaches the daemon `copies` times: note who."""
        if client_id is not None and client_id not in self.daemon_sessions:
            self.senders.routed(topic, payload, client_id, copies)

    def sender_of(self, topic: str, payload: bytes) -> str | None:
        """The asker key (`client:<id>`) of a question the daemon received on `topic`, or None when unknown."""
        return self.senders.sender(topic, payload)

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
            self.log.warning("auth", "embedded broker: refused a client with a wrong user name or password")
        return ok

    def admits(self, session: Any) -> bool:
        """Credentials, then: an id the daemon holds only for the daemon, a last will only where the client may publish."""
        username = session.username
        if not self.authenticate(username, session.password):
            return False
        if session.client_id in self.daemon_sessions and username != DAEMON_USERNAME:
            self.counters["client_id_refused"] += 1
            self.log.warning("client_id", "embedded broker: refused a client (user %r) that used the daemon's client id",
                             username)
            return False
        # A last will is a publish too: no fake retained `offline` by dying on purpose.
        if session.will_flag and session.will_topic and not self.rights.may_publish(username, session.will_topic):
            return False
        if username == DAEMON_USERNAME:
            self.daemon_sessions[session.client_id] = {f: getattr(session, f, None) for f in _SESSION_FIELDS}
        return True

    def is_daemon(self, session: Any) -> bool:
        return session.username == DAEMON_USERNAME and session.client_id in self.daemon_sessions

    def undo_takeover(self, session: Any, existing: Any) -> None:
        """A refused newcomer's fields were copied onto the daemon's existing session: put the daemon's back."""
        saved = self.daemon_sessions.get(session.client_id)
        if saved is not None and session is existing:
            for field, value in saved.items():
                setattr(session, field, value)

    def may_publish(self, username: str | None, topic: str) -> bool:
        return self.rights.may_publish(username, topic)

    def may_retain(self, topic: str, size: int, retained: dict[str, Any]) -> bool:
        if self.rights.is_question(topic):
            why = "a question is never retained (a later subscriber would read it)"
        elif size > self.limits.max_retained_bytes:
            why = f"{size} bytes > mqtt.embedded_max_retained_bytes {self.limits.max_retained_bytes}"
        elif topic not in retained and len(retained) >= self.limits.max_retained:
            why = f"{len(retained)} retained topics = mqtt.embedded_max_retained"
        else:
            return True
        self.counters["retain_refused"] += 1
        self.log.warning("retain", "embedded broker: not retaining the message on %s (%s)", topic[:200], why)
        return False

    def packet_refused(self, length: int, limit: int) -> None:
        """A client sent a packet over `mqtt.embedded_max_message_bytes` (its connection is closed)."""
        self.counters["message_too_large"] += 1
        self.log.warning("too_large", "embedded broker: closed a connection that sent a packet of %d bytes "
                         "(mqtt.embedded_max_message_bytes: %d)", length, limit)

    def sessions_over_bound(self, sessions: dict[str, tuple[Any, Any]]) -> list[str]:
        """Client ids of the longest-disconnected persistent sessions beyond `max_sessions` (to be forgotten)."""
        kept = sorted((s.last_disconnect_time or 0, cid) for cid, (s, _) in sessions.items()
                      if not s.clean_session and not s.transitions.is_connected() and cid not in self.daemon_sessions)
        over = [cid for _, cid in kept[:max(0, len(kept) - self.limits.max_sessions)]]
        if over:
            self.counters["sessions_evicted"] += len(over)
            self.log.warning("sessions", "embedded broker: more than %d disconnected persistent sessions "
                             "(mqtt.embedded_max_sessions); forgot the oldest", self.limits.max_sessions)
        return over


_LOG_FILTER = RateLimitFilter()


def _quiet_amqtt_logs() -> None:
    """amqtt logs every connection at INFO and every failed one at WARNING/ERROR: keep warnings, at a bounded rate."""
    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("amqtt"):
            log = logging.getLogger(name)
            if _LOG_FILTER not in log.filters:
                log.addFilter(_LOG_FILTER)


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
