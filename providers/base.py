"""What every provider is: `achat`, `astream`, `capabilities`, `start`/`aclose`, and the answer type `ChatResponse`."""

from __future__ import annotations

import abc
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Capabilities", "ChatResponse", "LLMProvider", "ToolCall", "ToolCallsEvent", "Usage", "UsageEvent"]


@dataclass(frozen=True, kw_only=True)
class Capabilities:
    """What a provider can take; callers check before sending (e.g. embeddings only where `image_embeddings`)."""

    images: bool
    """Raw images (frames, arrays, PIL, bytes, URLs) in user messages."""
    image_embeddings: bool
    """Precomputed LM-space image embeddings `(n_images, image_tokens, lm_hidden)`."""
    streaming: bool
    """`astream` yields deltas as they are generated."""
    tools: bool
    """OpenAI-style `tools` are honoured and tool calls come back parsed."""


@dataclass(frozen=True)
class ToolCall:
    """One function call the model asked for; `arguments` is the JSON text the model wrote."""

    id: str
    name: str
    arguments: str

    @property
    def args(self) -> Any:
        """`arguments` parsed as JSON (raises ValueError when the model wrote invalid JSON)."""
        return json.loads(self.arguments) if self.arguments else {}


@dataclass(frozen=True)
class Usage:
    """Token counts of one call."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class ToolCallsEvent:
    """`astream`'s item after the last text delta when tools were passed: every tool call of the answer, complete."""

    tool_calls: tuple[ToolCall, ...]
    finish_reason: str = "tool_calls"


@dataclass(frozen=True)
class UsageEvent:
    """`astream`'s last item when the call passed `stream_options={"include_usage": True}`: the streamed answer's
    token counts (its cost, and what the context budget learns from)."""

    usage: Usage


@dataclass(frozen=True, kw_only=True)
class ChatResponse:
    """One answer; `str(response)` is its text so it drops in where a string was expected."""

    text: str
    """The answer's text ('' when the model only called tools)."""
    tool_calls: list[ToolCall] = field(default_factory=list)
    """Tool calls, parsed."""
    usage: Usage | None = None
    """Token counts, when the backend reports them."""
    model: str | None = None
    """The model that answered, as the backend names it."""
    latency_s: float = 0.0
    """Wall time of the call, seconds."""
    finish_reason: str | None = None
    """`stop`, `length`, `tool_calls`, ..."""
    token_ids: Sequence[int] | None = None
    """Generated token ids where the backend exposes them (the native engine does)."""

    def __str__(self) -> str:
        return self.text


class LLMProvider(abc.ABC):
    """An LLM that answers chat messages; use as `async with provider:` or call `aclose()`."""

    capabilities: Capabilities

    @property
    def model(self) -> str | None:
        """The model answers come from (None while a server's model is not yet detected); default: the config's
        `model_name`. Subclasses override the property, or shadow it with a class attribute they assign."""
        return getattr(getattr(self, "config", None), "model_name", None)

    @abc.abstractmethod
    async def achat(self, messages: Sequence[dict[str, Any]], **opts: Any) -> ChatResponse:
        """The answer to `messages` (OpenAI chat messages; see providers.messages for content forms)."""

    @abc.abstractmethod
    def astream(self, messages: Sequence[dict[str, Any]], **opts: Any) -> AsyncIterator[str | ToolCallsEvent | UsageEvent]:
        """Text deltas of the answer as they are generated; when `tools` were passed, maybe one ToolCallsEvent after
        them, and with `stream_options={"include_usage": True}` one UsageEvent last (see providers.streaming)."""

    @abc.abstractmethod
    async def list_models(self) -> list[str]:
        """Names of the models the backend serves; a cheap reachability check."""

    async def start(self) -> None:
        """Get ready to answer (an in-process engine loads its model here); HTTP providers have nothing to do.

        The daemon calls it once at start for every provider; the first request does it too. Safe to call again.
        """

    async def preflight(self) -> list[str]:
        """What `visual-agent check` asks: the models that would answer, without loading any (default `list_models`)."""
        return await self.list_models()

    async def context_length(self) -> int | None:
        """The model's context length in tokens, when the config or the backend says it; None: unknown."""
        return getattr(getattr(self, "config", None), "context_tokens", None)

    def image_tokens(self) -> int | None:
        """Prompt tokens one image costs, when the config or the model says it; None: unknown."""
        return getattr(getattr(self, "config", None), "image_tokens", None)

    async def aclose(self) -> None:
        """Release connections or the engine; safe to call twice (nothing to release by default)."""

    async def __aenter__(self) -> LLMProvider:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
