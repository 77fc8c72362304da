"""`McpQuestions`: the intake of the MCP tool `ask`, a `RequestQuestions` (`visual_agent/request_intake.py`) with
`via` mcp and one admission key for every MCP caller (`mcp`, bounded by `agent.max_in_flight`); its answers come with
the newest frame they used, which the tool returns as an image."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..request_intake import FRAME_WAIT_S, RequestQuestions
from ..telemetry import Via

if TYPE_CHECKING:
    from ..agent import VisualAgent

__all__ = ["ASKER", "FRAME_WAIT_S", "McpQuestions"]

ASKER = "mcp"
"""The admission key of every MCP question."""


class McpQuestions(RequestQuestions):
    """Questions from MCP callers for one agent: `await ask(payload, asker=ASKER, frame=True)` returns the answer and
    its newest frame."""

    def __init__(self, agent: VisualAgent) -> None:
        super().__init__(agent, Via.MCP)
