"""The `mqtt` section: the broker connection, the embedded broker's bounds, TLS and Home Assistant discovery, with
one named default per setting (`visual_agent.config` re-exports all of it)."""

from __future__ import annotations

import enum
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator

from .strict_numbers import Section

__all__ = ["HomeAssistantConfig", "MqttConfig", "MqttProtocol", "TlsConfig"]

DEFAULT_PREFIX = "visual_agent"
DEFAULT_MQTT_PORT = 1883
DEFAULT_EMBEDDED_PORT = 1883
DEFAULT_KEEPALIVE_S = 30
DEFAULT_RECONNECT_MIN_S = 0.5
DEFAULT_RECONNECT_MAX_S = 30.0
DEFAULT_OUTBOX_MAX = 256
DEFAULT_INBOX_MAX = 256
DEFAULT_MAX_PAYLOAD_BYTES = 16 * 1024
DEFAULT_SESSION_EXPIRY_S = 3600
DEFAULT_MQTT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_EMBEDDED_HOST = "127.0.0.1"
DEFAULT_EMBEDDED_CONNECT_TIMEOUT_S = 5.0
DEFAULT_EMBEDDED_MAX_RETAINED = 1000
DEFAULT_EMBEDDED_MAX_RETAINED_BYTES = 64 * 1024
DEFAULT_EMBEDDED_MAX_CONNECTIONS = 256
DEFAULT_EMBEDDED_MAX_PENDING = 128
DEFAULT_EMBEDDED_MAX_MESSAGE_BYTES = 256 * 1024
DEFAULT_EMBEDDED_MAX_QUEUED_MESSAGES = 100
DEFAULT_EMBEDDED_MAX_QUEUED_BYTES = 1024 * 1024
DEFAULT_EMBEDDED_MAX_SESSIONS = 64
DEFAULT_EMBEDDED_MAX_UNSENT_BYTES = 8 * 1024 * 1024
DEFAULT_HA_DISCOVERY_PREFIX = "homeassistant"


class MqttProtocol(str, enum.Enum):
    """MQTT protocol version."""

    V5 = "5"
    """MQTT 5 (response topics, correlation data, session expiry)."""
    V311 = "3.1.1"
    """MQTT 3.1.1 (the embedded broker speaks only this)."""


class TlsConfig(Section):
    """TLS to the broker."""

    enabled: bool = False
    """Use TLS (port 8883 is usual)."""
    ca_certs: str | None = None
    """CA bundle that signed the broker's certificate; None: the system's."""
    certfile: str | None = None
    """Client certificate (PEM) for mutual TLS."""
    keyfile: str | None = None
    """Key of the client certificate."""
    insecure: bool = False
    """Skip host-name verification (testing only)."""


class HomeAssistantConfig(Section):
    """Home Assistant MQTT discovery."""

    enabled: bool = False
    """Publish discovery configs: a sensor per source and availability from `<prefix>/status`."""
    discovery_prefix: str = DEFAULT_HA_DISCOVERY_PREFIX
    """Home Assistant's discovery prefix."""
    node_id: str | None = None
    """Device id in Home Assistant; None: the topic prefix."""


class MqttConfig(Section):
    """The MQTT connection; with no `host`, `visual-agent run` starts an embedded broker on 127.0.0.1."""

    enabled: bool = True
    """Off: no MQTT at all (only the page's data channel)."""
    host: str | None = None
    """Broker host; None: the embedded broker on 127.0.0.1:`embedded_port`."""
    port: int = Field(DEFAULT_MQTT_PORT, ge=1, le=65535)
    """Broker port."""
    embedded_port: int = Field(DEFAULT_EMBEDDED_PORT, ge=0, le=65535)
    """Port of the embedded broker (0: a free one, logged)."""
    embedded_host: str = DEFAULT_EMBEDDED_HOST
    """Address the embedded broker binds; beyond loopback it needs `username` and `password`."""
    embedded_connect_timeout_s: float = Field(DEFAULT_EMBEDDED_CONNECT_TIMEOUT_S, gt=0)
    """The embedded broker closes a connection that sends no CONNECT within this many seconds."""
    embedded_max_retained: int = Field(DEFAULT_EMBEDDED_MAX_RETAINED, ge=1)
    """Most retained messages the embedded broker keeps; a new retained topic beyond it is not retained."""
    embedded_max_retained_bytes: int = Field(DEFAULT_EMBEDDED_MAX_RETAINED_BYTES, ge=64)
    """Largest retained payload the embedded broker keeps (larger ones are delivered, not retained)."""
    embedded_max_connections: int = Field(DEFAULT_EMBEDDED_MAX_CONNECTIONS, ge=2)
    """Sockets the embedded broker holds at once (connected clients and those still to send CONNECT)."""
    embedded_max_pending: int = Field(DEFAULT_EMBEDDED_MAX_PENDING, ge=1)
    """Sockets that have not sent CONNECT yet; a new one beyond it closes the oldest of them."""
    embedded_max_message_bytes: int = Field(DEFAULT_EMBEDDED_MAX_MESSAGE_BYTES, ge=1024)
    """Largest MQTT packet the embedded broker reads from a client (the daemon's own excepted); a larger one closes
    that connection."""
    embedded_max_queued_messages: int = Field(DEFAULT_EMBEDDED_MAX_QUEUED_MESSAGES, ge=1)
    """Messages queued for one disconnected persistent session; more are dropped."""
    embedded_max_queued_bytes: int = Field(DEFAULT_EMBEDDED_MAX_QUEUED_BYTES, ge=1024)
    """Payload bytes queued for one disconnected persistent session; more are dropped."""
    embedded_max_unsent_bytes: int = Field(DEFAULT_EMBEDDED_MAX_UNSENT_BYTES, ge=64 * 1024)
    """Payload bytes waiting to be written to one connected client (one that does not read holds them); more are
    dropped for it. All clients together hold at most 8 times this."""
    embedded_max_sessions: int = Field(DEFAULT_EMBEDDED_MAX_SESSIONS, ge=1)
    """Disconnected persistent sessions the embedded broker keeps; beyond it the longest-disconnected is forgotten."""
    prefix: str = DEFAULT_PREFIX
    """Topic prefix: `<prefix>/ask`, `<prefix>/answer`, `<prefix>/status`, ..."""
    protocol: MqttProtocol = MqttProtocol.V5
    """5 or 3.1.1; a broker that refuses 5 is retried with 3.1.1."""
    client_id: str | None = None
    """Client id; None: `visual-agent-<host>-<random>`. A fixed id keeps the session across a clean stop."""
    username: str | None = None
    """User name at the broker."""
    password: SecretStr | None = None
    """Password at the broker (masked; set it with VISUAL_AGENT__MQTT__PASSWORD)."""
    tls: TlsConfig = Field(default_factory=TlsConfig)
    """TLS settings."""
    keepalive_s: int = Field(DEFAULT_KEEPALIVE_S, ge=5)
    """MQTT keep-alive."""
    qos: int = Field(1, ge=0, le=2)
    """QoS of questions and answers."""
    reconnect_min_s: float = Field(DEFAULT_RECONNECT_MIN_S, gt=0)
    """First reconnect delay; doubles up to `reconnect_max_s`."""
    reconnect_max_s: float = Field(DEFAULT_RECONNECT_MAX_S, gt=0)
    """Longest reconnect delay."""
    connect_timeout_s: float = Field(DEFAULT_MQTT_CONNECT_TIMEOUT_S, gt=0)
    """How long one connection attempt may take."""
    session_expiry_s: int = Field(DEFAULT_SESSION_EXPIRY_S, ge=0)
    """The broker keeps our subscription and queues questions this long while we are away: a broker restart,
    and with a fixed `client_id` also a stop of the daemon (questions asked meanwhile are answered at the start).
    With `shared_group` and not set: 0, so a replica that dies stops taking its share at once (mosquitto would
    queue a dead member's share in its session); the group's other members answer instead."""
    response_topic_prefixes: list[str] | None = None
    """MQTT 5 response topics must start with one of these; None: `<prefix>/reply/`. Others get an error on
    `<prefix>/answer`."""
    outbox_max: int = Field(DEFAULT_OUTBOX_MAX, ge=1)
    """Answers kept while the broker is away; the oldest is dropped (and logged) beyond it."""
    inbox_max: int = Field(DEFAULT_INBOX_MAX, ge=1)
    """Received messages waiting for the agent; beyond it they are dropped and logged. With MQTT 5 also the receive
    maximum: the most questions the broker sends before the first of them is answered and acknowledged."""
    max_payload_bytes: int = Field(DEFAULT_MAX_PAYLOAD_BYTES, ge=64)
    """Larger question payloads get a `bad_payload` error answer."""
    shared_group: str | None = None
    """Subscribe as `$share/<group>/<prefix>/ask` (and `$share/<group>/<prefix>/<source>/ask` per source held) so
    several daemons split the questions, each answered once."""
    homeassistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig)
    """Home Assistant discovery."""

    @field_validator("prefix")
    @classmethod
    def _prefix_ok(cls, value: str) -> str:
        if not value or any(c in value for c in "+#\0") or value.startswith("/") or value.endswith("/"):
            raise ValueError("must be a topic without wildcards and without a leading or trailing '/'")
        return value

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_text(cls, value: Any) -> Any:
        return {5: "5", 3.1: "3.1.1", 311: "3.1.1", "311": "3.1.1", "v5": "5"}.get(value, value)

    @field_validator("response_topic_prefixes")
    @classmethod
    def _reply_prefixes_ok(cls, value: list[str] | None) -> list[str] | None:
        for item in value or ():
            if not item or any(c in item for c in "+#\0") or item.startswith("$"):
                raise ValueError(f"{item!r}: a topic prefix without wildcards, not empty, not starting with '$'")
        return value

    @model_validator(mode="after")
    def _backoff_ok(self) -> MqttConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self

    @property
    def embedded(self) -> bool:
        """True when no broker is configured (the daemon starts one)."""
        return self.host is None

    def for_client(self) -> MqttConfig:
        """The settings a client connects with: the embedded broker (amqtt) speaks only MQTT 3.1.1, so ask for that
        at once instead of waiting for MQTT 5 to time out."""
        update: dict[str, Any] = {"protocol": MqttProtocol.V311} if self.embedded else {}
        if self.shared_group and "session_expiry_s" not in self.model_fields_set:
            update["session_expiry_s"] = 0  # a dead replica's share goes to the live ones
        return self.model_copy(update=update) if update else self

    def broker_address(self) -> tuple[str, int]:
        """(host, port) to connect to: the configured broker, or the embedded one."""
        if self.host is None:
            wildcard = self.embedded_host in ("0.0.0.0", "::", "")
            return ("127.0.0.1" if wildcard else self.embedded_host, self.embedded_port)
        return (self.host, self.port)

    def allowed_response_prefixes(self) -> list[str]:
        """Where MQTT 5 response topics may point: `response_topic_prefixes`, or `<prefix>/reply/`."""
        return list(self.response_topic_prefixes) if self.response_topic_prefixes is not None else [f"{self.prefix}/reply/"]
