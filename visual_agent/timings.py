"""`QuestionTiming`: when one question arrived, was encoded, reached the LLM, came back and was published.

The agent keeps the last few thousand (`VisualAgent.timings`); `scripts/bench_agent.py` reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["QuestionTiming"]


@dataclass(slots=True)
class QuestionTiming:
    """Monotonic timestamps of one question's path through the agent."""

    id: Any
    received_at: float
    started_at: float | None = None
    """The question's task began (after parsing and admission)."""
    encoded_at: float | None = None
    """Frames taken and converted (JPEG or embeddings)."""
    llm_request_at: float | None = None
    llm_response_at: float | None = None
    published_at: float | None = None

    @property
    def to_llm_s(self) -> float | None:
        """Arrival to LLM request: the agent's overhead before the model."""
        return None if self.llm_request_at is None else self.llm_request_at - self.received_at

    @property
    def to_publish_s(self) -> float | None:
        """LLM answer to the MQTT publish: the agent's overhead after the model."""
        if self.published_at is None or self.llm_response_at is None:
            return None
        return self.published_at - self.llm_response_at
