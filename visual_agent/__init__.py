"""visual_agent: the daemon that ties webrtc (frames), encoders and providers (the LLM) to MQTT and the page.

`VisualAgent` answers questions about live video; `MqttMessager` is its MQTT connection; `Daemon` wires
everything from a `Config` (`load_config`); `visual-agent run / ask / check` is the command line (`cli.main`).
"""

from __future__ import annotations

from .agent import QuestionTiming, VisualAgent, topics
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
    load_config,
    parse_config,
)
from .daemon import Daemon, run_daemon
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
from .messages import Answer, FrameRef, Question, parse_question, partial_payload
from .mqtt import IncomingMessage, MqttMessager
from .sampling import SceneChangeDetector, Trigger, select_frames

__all__ = [
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
    "ErrorType",
    "FrameRef",
    "HomeAssistantConfig",
    "HomeAssistantDiscovery",
    "IncomingMessage",
    "MessagingError",
    "MqttConfig",
    "MqttMessager",
    "MqttProtocol",
    "Question",
    "QuestionError",
    "QuestionTiming",
    "SceneChangeConfig",
    "SceneChangeDetector",
    "TlsConfig",
    "Trigger",
    "VisualAgent",
    "VisualAgentError",
    "load_config",
    "parse_question",
    "partial_payload",
    "run_daemon",
    "select_frames",
    "topics",
]
