"""The daemon's config: YAML sections `llm`, `encoder`, `webrtc`, `sources`, `agent`, `mqtt`, `telemetry`, `rules`
as typed objects.

Every section is typed once, when the config is read: `llm` becomes `providers.ProviderSettings` (the kind and its
typed config), `webrtc` a `webrtc.WebRTCConfig`, `sources` `webrtc.SourceConfig`s; those keys stay defined by the
packages that own them (providers, webrtc), and their mistakes fail here, naming the section. Secrets
(`llm.api_key`, `mqtt.password`, passwords in URLs) are masked in every repr. Reading files and the environment
is `visual_agent.config_loading` (`load_config`, `parse_config`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
from typing import Annotated, Any

from pydantic import Field, PlainValidator, field_validator, model_validator

from encoders.jpeg import DEFAULT_JPEG_QUALITY
from encoders.jpeg import DEFAULT_MAX_SIDE as DEFAULT_JPEG_MAX_SIDE
from providers.registry import DEFAULT_PROVIDER_KIND as DEFAULT_PROVIDER
from providers.registry import ProviderSettings, provider_kind
from webrtc.config import SourceConfig, WebRTCConfig

from .config_mqtt import (  # noqa: F401  (re-exported: `visual_agent.config` is where the sections are read from)
    DEFAULT_EMBEDDED_CONNECT_TIMEOUT_S,
    DEFAULT_EMBEDDED_HOST,
    DEFAULT_EMBEDDED_MAX_CONNECTIONS,
    DEFAULT_EMBEDDED_MAX_MESSAGE_BYTES,
    DEFAULT_EMBEDDED_MAX_PENDING,
    DEFAULT_EMBEDDED_MAX_QUEUED_BYTES,
    DEFAULT_EMBEDDED_MAX_QUEUED_MESSAGES,
    DEFAULT_EMBEDDED_MAX_RETAINED,
    DEFAULT_EMBEDDED_MAX_RETAINED_BYTES,
    DEFAULT_EMBEDDED_MAX_SESSIONS,
    DEFAULT_EMBEDDED_MAX_UNSENT_BYTES,
    DEFAULT_EMBEDDED_PORT,
    DEFAULT_HA_DISCOVERY_PREFIX,
    DEFAULT_INBOX_MAX,
    DEFAULT_KEEPALIVE_S,
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_MQTT_CONNECT_TIMEOUT_S,
    DEFAULT_MQTT_PORT,
    DEFAULT_OUTBOX_MAX,
    DEFAULT_PREFIX,
    DEFAULT_RECONNECT_MAX_S,
    DEFAULT_RECONNECT_MIN_S,
    DEFAULT_SESSION_EXPIRY_S,
    HomeAssistantConfig,
    MqttConfig,
    MqttProtocol,
    TlsConfig,
)
from .config_readers import Shown, default_llm, masked, read_llm, read_sources, read_webrtc
from .mcp_server.config import McpConfig
from .memory.config import StorageConfig
from .rules.config import DEFAULT_RULE_CALLS_PER_MINUTE, MAX_LOOKBACK_S, RuleConfig, check_rule_set
from .strict_numbers import Section

__all__ = [
    "AgentConfig", "Config", "DEFAULT_PREFIX", "DEFAULT_PROVIDER", "EncoderConfig", "EmbeddingsMode", "HistoryMode",
    "HomeAssistantConfig", "MqttConfig", "MqttProtocol", "SceneChangeConfig", "TelemetryConfig", "TlsConfig", "embeddings_mode",
]

# agent
DEFAULT_LOOKBACK_MAX_S = 10.0
DEFAULT_SYSTEM_PROMPT = (
    "You are a visual assistant watching a live video stream. Answer questions about what the current "
    "frames show, briefly and concretely. Say so when you cannot tell."
)
DEFAULT_FRAMES = 1
DEFAULT_WINDOW_S = 2.0
DEFAULT_HISTORY_TURNS = 4
DEFAULT_MAX_IN_FLIGHT = 4
DEFAULT_MAX_QUEUED_PER_ASKER = 4
DEFAULT_MAX_QUEUED = 32
DEFAULT_QUEUE_WAIT_S = 10.0
DEFAULT_QUESTION_TIMEOUT_S = 60.0
DEFAULT_FRAME_WAIT_S = 2.0
DEFAULT_MAX_QUESTION_CHARS = 2000
DEFAULT_MAX_FRAMES = 8
DEFAULT_PERIODIC_PROMPT = "Describe what you see in one sentence."
DEFAULT_SCENE_THRESHOLD = 0.12
DEFAULT_SCENE_MIN_GAP_S = 10.0
DEFAULT_SCENE_CHECK_S = 0.5
DEFAULT_SCENE_PROMPT = "The scene just changed. Describe what you see now in one sentence."
DEFAULT_SHUTDOWN_GRACE_S = 5.0
DEFAULT_CONVERSATION_TTL_S = 1800.0
DEFAULT_MAX_CONVERSATIONS = 256
DEFAULT_MIN_ANSWER_TOKENS = 16
# encoder
DEFAULT_EMBEDDING_CACHE_ENTRIES = 32


class EmbeddingsMode(str, enum.Enum):
    """How frames reach the LLM (`encoder.embeddings`, and `VisualAgent(frames_as=...)`)."""

    AUTO = "auto"
    """Embeddings when the provider takes them (native vLLM with enable_mm_embeds), else JPEG."""
    CLIP = "clip"
    """Always embeddings (the model family's encoder, or the agent's `embedding_function`); fails at start if the
    provider cannot take them."""
    OFF = "off"
    """Always JPEG data URLs."""


_MODE_SPELLINGS = {"jpeg": EmbeddingsMode.OFF, "embeddings": EmbeddingsMode.CLIP, "none": EmbeddingsMode.OFF}
"""Older spellings (the agent's `frames_as` of round 1) read as the config's values."""


def embeddings_mode(value: EmbeddingsMode | str) -> EmbeddingsMode:
    """`value` as an EmbeddingsMode: auto, clip, off, or an older spelling (jpeg = off, embeddings = clip)."""
    if isinstance(value, EmbeddingsMode):
        return value
    if isinstance(value, str):
        spelled = _MODE_SPELLINGS.get(value.lower())
        if spelled is not None:
            return spelled
        with contextlib.suppress(ValueError):
            return EmbeddingsMode(value.lower())
    raise ValueError(f"must be auto, clip or off, got {value!r}")


class EncoderConfig(Section):
    """How sampled frames become model input."""

    jpeg_max_side: int = Field(DEFAULT_JPEG_MAX_SIDE, ge=16)
    """Longest side of the JPEG sent to HTTP providers, in pixels."""
    jpeg_quality: int = Field(DEFAULT_JPEG_QUALITY, ge=1, le=100)
    """JPEG quality, 1-100."""
    embeddings: EmbeddingsMode = EmbeddingsMode.AUTO
    """auto, clip or off (see `EmbeddingsMode`; jpeg and embeddings are read as off and clip)."""
    clip_checkpoint: str | None = None
    """Model folder (LLaVA-1.5 or Qwen2-VL) whose vision tower and projector/merger make the embeddings; None:
    `llm.model_name`. The key keeps its first name; any supported family's folder goes here."""
    cache_entries: int = Field(DEFAULT_EMBEDDING_CACHE_ENTRIES, ge=0)
    """Frames whose embeddings are kept, so a static scene is not encoded again; 0: no cache."""

    @field_validator("embeddings", mode="before")
    @classmethod
    def _older_spellings(cls, value: Any) -> Any:
        with contextlib.suppress(ValueError):
            return embeddings_mode(value)
        return value


class HistoryMode(str, enum.Enum):
    """Whose earlier questions and answers the model sees with a new question."""

    CONVERSATION = "conversation"
    """The turns of the question's own conversation (its `conversation` id; the page: one per tab). Questions
    without one get no history."""
    SOURCE = "source"
    """Every asker's turns on the same source: one shared history (single-user setups only: what one asker says
    reaches the model with everyone else's questions)."""
    OFF = "off"
    """No history at all."""


class SceneChangeConfig(Section):
    """Describe a source when its picture changes (grey-thumbnail difference)."""

    enabled: bool = False
    """Off by default."""
    threshold: float = Field(DEFAULT_SCENE_THRESHOLD, gt=0, le=1)
    """Mean absolute thumbnail difference (0-1) that counts as a change."""
    min_gap_s: float = Field(DEFAULT_SCENE_MIN_GAP_S, ge=0)
    """At least this many seconds between two scene-change descriptions of one source."""
    check_interval_s: float = Field(DEFAULT_SCENE_CHECK_S, gt=0)
    """How often the newest frame is compared with the reference."""
    prompt: str = DEFAULT_SCENE_PROMPT
    """The question asked on a change."""


class AgentConfig(Section):
    """When the agent looks, which frames it takes, and its limits."""

    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    """System message of every conversation."""
    default_source: str | None = None
    """Source of questions that name none; None: the only source, else the first configured or connected."""
    frames: int = Field(DEFAULT_FRAMES, ge=1)
    """Frames per question when the question does not say: 1 = the newest; at most `max_frames`."""
    max_frames: int = Field(DEFAULT_MAX_FRAMES, ge=1)
    """Most frames a question may ask for."""
    window_s: float = Field(DEFAULT_WINDOW_S, gt=0)
    """With frames > 1, they are spread over the last this many seconds."""
    history_turns: int = Field(DEFAULT_HISTORY_TURNS, ge=0)
    """Question/answer pairs kept per conversation (see `history`) so follow-up questions work (text only)."""
    history: HistoryMode = HistoryMode.CONVERSATION
    """Whose turns a question sees: conversation (its own; the default), source (shared by every asker of a
    source: single-user setups only) or off."""
    conversation_ttl_s: float = Field(DEFAULT_CONVERSATION_TTL_S, gt=0)
    """A conversation silent this long is forgotten."""
    max_conversations: int = Field(DEFAULT_MAX_CONVERSATIONS, ge=1)
    """Conversations kept at once; the least recently used is forgotten beyond it."""
    min_answer_tokens: int = Field(DEFAULT_MIN_ANSWER_TOKENS, ge=1)
    """The context budget never lowers `max_tokens` below this; a question that leaves less room gets a
    `context_exceeded` error."""
    max_in_flight: int = Field(DEFAULT_MAX_IN_FLIGHT, ge=1)
    """Questions answered at once; more wait for a slot (`queue_wait_s`), in turn by asker, or get `busy`."""
    max_queued_per_asker: int = Field(DEFAULT_MAX_QUEUED_PER_ASKER, ge=0)
    """Questions one asker (an MQTT response topic, a page tab, the rules...) may have waiting for a slot; more get
    `busy` at once. 0: nothing waits."""
    max_queued: int = Field(DEFAULT_MAX_QUEUED, ge=0)
    """Questions waiting for a slot, all askers together; more get `busy` at once."""
    queue_wait_s: float = Field(DEFAULT_QUEUE_WAIT_S, ge=0)
    """Longest a question waits for a slot before a `busy` answer (it counts against `question_timeout_s`)."""
    question_timeout_s: float = Field(DEFAULT_QUESTION_TIMEOUT_S, gt=0)
    """Whole time allowed per question, from its arrival (waiting for a slot, frame wait, encoding, LLM)."""
    frame_wait_s: float = Field(DEFAULT_FRAME_WAIT_S, ge=0)
    """How long a question waits for a source's first frame before a `no_frame` error."""
    max_question_chars: int = Field(DEFAULT_MAX_QUESTION_CHARS, ge=1)
    """Longer questions are refused."""
    stream: bool = False
    """Stream partial answers by default (a question's `stream` wins)."""
    periodic_interval_s: float | None = Field(None, gt=0)
    """Describe every source every this many seconds; None: off."""
    periodic_prompt: str = DEFAULT_PERIODIC_PROMPT
    """The question asked periodically."""
    scene_change: SceneChangeConfig = Field(default_factory=SceneChangeConfig)
    """Scene-change descriptions."""
    shutdown_grace_s: float = Field(DEFAULT_SHUTDOWN_GRACE_S, ge=0)
    """On SIGTERM, in-flight questions get this long to finish before they are failed."""
    rule_calls_per_minute: int = Field(DEFAULT_RULE_CALLS_PER_MINUTE, ge=1, le=6000)
    """Model calls the rules of one source may make per minute; over it their checks slow down (`degraded`)."""
    lookback_s: float = Field(0.0, ge=0, le=MAX_LOOKBACK_S)
    """Seconds of look-back thumbnails kept for every source, so a question with `lookback_s` sees what came
    before it; 0 (the default): none kept (a source's rules may still keep their own `lookback_s`)."""
    lookback_max_s: float = Field(DEFAULT_LOOKBACK_MAX_S, gt=0, le=MAX_LOOKBACK_S)
    """The largest `lookback_s` a question may carry; more is a `bad_payload` answer."""

    def question_lookback_max_s(self) -> float:
        """The largest `lookback_s` a question may carry now: 0 while look-back is off (`lookback_s: 0`)."""
        return self.lookback_max_s if self.lookback_s > 0 else 0.0

    @model_validator(mode="after")
    def _frames_within_max(self) -> AgentConfig:
        if self.frames > self.max_frames:
            raise ValueError(f"frames ({self.frames}) must be at most max_frames ({self.max_frames})")
        return self


class TelemetryConfig(Section):
    """Metrics and traces (docs/OPERATIONS.md)."""

    metrics: bool = True
    """Serve `GET /metrics` (Prometheus text) on the page's server (behind `webrtc.auth_token` when one is set)."""
    otlp_endpoint: str | None = None
    """OTLP/HTTP traces endpoint (e.g. http://127.0.0.1:4318/v1/traces): one trace per question; None: no tracing
    (needs the `otel` extra)."""
    service_name: str = "visual-agent"
    """`service.name` of the traces (one per daemon or replica group)."""


class Config(Section):
    """The whole daemon config."""

    llm: Annotated[ProviderSettings, PlainValidator(read_llm)] = Field(default_factory=default_llm)
    """Provider config: `provider` (a kind of providers/registry.py: openai, vllm, vllm_native; vllm when absent) and
    that provider's keys (see providers/config.py), read once into the kind's typed config."""
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    """Frame encoding."""
    webrtc: Annotated[WebRTCConfig, PlainValidator(read_webrtc)] = Field(default_factory=WebRTCConfig)
    """The HTTP/WebRTC server (webrtc.WebRTCConfig keys; `keys_set` says which the file gave)."""
    sources: Annotated[list[SourceConfig], PlainValidator(read_sources)] = Field(default_factory=list)
    """Cameras, RTSP streams, files (webrtc.SourceConfig keys); browsers and WHIP publishers add theirs."""
    agent: AgentConfig = Field(default_factory=AgentConfig)
    """The agent."""
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    """MQTT."""
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    """Metrics and traces."""
    storage: StorageConfig = Field(default_factory=StorageConfig)
    """The event store (visual_agent.memory.StorageConfig keys): where, how long, how much; the `memory` trigger."""
    mcp: McpConfig = Field(default_factory=McpConfig)
    """The MCP server for other agents (visual_agent.mcp_server.McpConfig keys), on the page's port; off by default."""
    rules: list[RuleConfig] = Field(default_factory=list)
    """Standing yes/no questions (visual_agent.rules.RuleConfig keys); more can be set on `<prefix>/rules/set`."""
    path: str | None = Field(None, exclude=True)
    """The file this came from (for messages); not a YAML key."""

    def __repr_args__(self):
        for key, value in super().__repr_args__():
            yield key, (Shown(value) if key in ("llm", "webrtc", "sources") else value)

    @field_validator("rules")
    @classmethod
    def _rules_ok(cls, value: list[RuleConfig]) -> list[RuleConfig]:
        return check_rule_set(value)

    def webrtc_config(self) -> WebRTCConfig:  # `self.webrtc`, for callers written before it was typed
        return self.webrtc

    def source_configs(self) -> list[SourceConfig]:  # a copy of `self.sources`, for callers written before it was typed
        return list(self.sources)

    def provider_name(self) -> str:
        """`llm.provider` (vllm when the config names none)."""
        return self.llm.kind

    def llm_masked(self) -> dict[str, Any]:
        """The `llm` section's settings with secrets masked, for logs."""
        settings = {"provider": self.llm.kind, **dataclasses.asdict(self.llm.config)}
        return masked(settings)

    def describe_llm(self) -> str:
        """One line for logs: provider, endpoint, model."""
        settings = self.llm.config
        in_process = provider_kind(self.llm.kind).in_process
        where = getattr(settings, "base_url", None) or ("in-process" if in_process else "")
        model = getattr(settings, "model_name", None) or "auto"
        return f"{self.llm.kind} {masked(where)} model={model}".strip()
