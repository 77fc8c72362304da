"""`QuestionTiming`: when one question arrived, took its frames, was encoded, reached the LLM, came back and was
published, and the tokens the LLM reported.

The agent stamps it as the question goes; `telemetry.Telemetry` turns it into Prometheus stage histograms and
OpenTelemetry spans when the answer is out, and the agent keeps the last few thousand of MQTT questions
(`VisualAgent.timings`) for `scripts/bench_agent.py`.
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
    frames_at: float | None = None
    """Its frames were taken (after waiting for a first frame, if the source had none)."""
    encoded_at: float | None = None
    """Frames taken and converted (JPEG or embeddings)."""
    llm_request_at: float | None = None
    first_token_at: float | None = None
    """The first streamed piece came back (streamed answers only)."""
    llm_response_at: float | None = None
    answered_at: float | None = None
    """The answer (or error answer) was ready, before it was sent."""
    published_at: float | None = None
    prompt_tokens: int | None = None
    """Prompt tokens, when the provider reported usage."""
    completion_tokens: int | None = None
    """Completion tokens, when the provider reported usage."""

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

    def stages(self) -> dict[str, tuple[float, float]]:
        """(start, end) of each stage that ran: wait_frame, encode, llm_first_token, llm, publish."""
        spans = {
            "wait_frame": (self.started_at, self.frames_at),
            "encode": (self.frames_at, self.encoded_at),
            "llm_first_token": (self.llm_request_at, self.first_token_at),
            "llm": (self.llm_request_at, self.llm_response_at),
            "publish": (self.answered_at, self.published_at),
        }
        return {name: (a, b) for name, (a, b) in spans.items() if a is not None and b is not None and b >= a}
