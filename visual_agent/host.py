"""`DaemonHost`: what the console and the MCP tools read of the daemon that mounts them (a `Protocol`, so neither
imports the daemon, which imports them)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from providers import LLMProvider
    from webrtc import WebRTCServer

    from .agent import VisualAgent
    from .broker import EmbeddedBroker
    from .config import Config
    from .memory.service import MemoryService
    from .mqtt import MqttMessager
    from .rules import RuleControl, RuleEngine

__all__ = ["DaemonHost"]


class DaemonHost(Protocol):
    """The running daemon's parts, each None until it has started."""

    config: Config
    driver: WebRTCServer | None
    llm: LLMProvider | None
    llm_state: dict[str, Any]
    """The daemon's start probe of the LLM: `{"state": "unknown" | "ok" | "unreachable", ...}`."""
    agent: VisualAgent | None
    messager: MqttMessager | None
    broker: EmbeddedBroker | None
    rules: RuleEngine | None
    rules_control: RuleControl | None
    memory: MemoryService
