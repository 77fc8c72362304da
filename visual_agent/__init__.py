"""visual_agent: the daemon that ties webrtc (frames), encoders and providers (the LLM) to MQTT and the page.

`VisualAgent` answers questions about live video; `MqttMessager` is its MQTT connection; `Daemon` wires
everything from a `Config` (`load_config`); `visual-agent run / ask / check` is the command line (`cli.main`).
The modules and the seams between them are drawn in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

from .agent import QuestionTiming, VisualAgent
from .broker import EmbeddedBroker
from .config import (
    AgentConfig,
    Config,
    EmbeddingsMode,
    EncoderConfig,
    HomeAssistantConfig,
    MqttConfig,
    MqttProtocol,
    SceneChangeConfig,
    TlsConfig,
)
from .config_loading import load_config, parse_config
from .daemon import Daemon, run_daemon
from .encoding import FrameEncoding
from .errors import (
    BrokerRefusedError,
    ConfigError,
    EmbeddedBrokerError,
    ErrorType,
    MessagingError,
    QuestionError,
    VisualAgentError,
)
from .homeassistant import HomeAssistantDiscovery
from .interfaces import AgentCore, AgentEvent, EventKind, FrameSource, MessageTransport, PageChannel, RuleChange
from .messages import Answer, FrameRef, Question, parse_question, partial_payload
from .model_call import ModelRequest, ModelResponse, Recalled
from .mqtt import IncomingMessage, MqttMessager
from .sampling import SceneChangeDetector, select_frames
from .telemetry import Via
from .topics import Topics

__all__ = [
    "AgentCore",
    "AgentEvent",
    "AgentConfig",
    "Answer",
    "BrokerRefusedError",
    "Config",
    "ConfigError",
    "Daemon",
    "EmbeddedBroker",
    "EmbeddedBrokerError",
    "EmbeddingsMode",
    "EncoderConfig",
    "EventKind",
    "ErrorType",
    "FrameEncoding",
    "FrameRef",
    "FrameSource",
    "HomeAssistantConfig",
    "HomeAssistantDiscovery",
    "IncomingMessage",
    "MessageTransport",
    "MessagingError",
    "ModelRequest",
    "ModelResponse",
    "MqttConfig",
    "MqttMessager",
    "MqttProtocol",
    "PageChannel",
    "Question",
    "QuestionError",
    "QuestionTiming",
    "Recalled",
    "RuleChange",
    "SceneChangeConfig",
    "SceneChangeDetector",
    "TlsConfig",
    "Topics",
    "Via",
    "VisualAgent",
    "VisualAgentError",
    "load_config",
    "parse_config",
    "parse_question",
    "partial_payload",
    "run_daemon",
    "select_frames",
]
