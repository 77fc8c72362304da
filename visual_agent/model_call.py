"""One request to the model and its response: `ModelRequest` in, `ModelResponse` out, `ModelCall` in between.

`VisualAgent.complete` is the one entry to the model (questions, descriptions, rule checks and memory queries all
go through it); it admits the request, sets its deadline and reports telemetry, and hands the request to
`ModelCall.run`, which does the model-facing part:

1. fit the request into the model's context (`context_budget.ContextBudget`: system prompt and question always,
   history newest first, older images dropped first, `max_tokens` lowered);
2. turn its frames, and the stored images of a memory query (`Recalled`), into the user message's content
   (`encoding.FrameEncoding`: JPEG data URLs or embeddings);
3. ask: streamed (`astream`, each piece to `on_partial`, usage asked with `stream_options`) when the request has
   an `on_partial` and the provider streams, else `achat`; tool calls come back the same way from both;
4. a refusal for context length is retried once, trimmed with what the refusal taught the budget.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from providers.base import ToolCallsEvent, UsageEvent
from providers.errors import ContextLengthError

from .context_budget import ContextBudget, Fitted
from .sampling import Recalled
from .telemetry import Via

if TYPE_CHECKING:
    from providers import LLMProvider, ToolCall, Usage

    from .encoding import FrameEncoding
    from .sampling import TakenFrame
    from .timings import QuestionTiming

__all__ = ["ModelCall", "ModelRequest", "ModelResponse", "PartialCallback"]

logger = logging.getLogger(__name__)

PartialCallback = Callable[[int, str], Awaitable[None]]
"""``async (seq, delta)`` for each streamed piece (seq counts from 1)."""


@dataclass(frozen=True, kw_only=True)
class ModelRequest:
    """What to ask the model, and for whom."""

    prompt: str
    """The question (or the rule's yes/no question, or the description prompt)."""
    via: Via
    """Who asks (the telemetry's `via`, the event's kind)."""
    asker: str
    """The admission key: an MQTT client or response topic, a page peer, "rules", "descriptions", "memory"."""
    source: str | None = None
    frames: Sequence[TakenFrame] = ()
    """Live frames, oldest first (the budget drops the oldest first)."""
    recalled: Sequence[Recalled] = ()
    """Stored images with their texts (a memory query), oldest first; shown before the live frames."""
    history: Sequence[tuple[str, str]] = ()
    """Earlier (question, answer) turns of the conversation, oldest first."""
    system_prompt: str | None = None
    """None: `agent.system_prompt`."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Keyword options for `achat`/`astream` (`tools`, structured output, `max_tokens`, ...)."""
    on_partial: PartialCallback | None = None
    """Stream the answer to this, when the provider streams."""
    question_id: Any = None
    """The question's id, for logs and telemetry (None: one is made)."""

    def budget_text(self) -> str:
        """The prompt and the recalled texts: what the budget counts as the question."""
        return "\n".join([self.prompt, *(r.caption() for r in self.recalled)])


@dataclass(frozen=True, kw_only=True)
class ModelResponse:
    """The model's answer to one `ModelRequest`."""

    text: str
    model: str | None
    usage: Usage | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    fitted: Fitted
    """What of the request was sent (history turns, image indexes, `max_tokens`)."""
    frames: tuple[TakenFrame, ...] = ()
    """The live frames the model saw (after the budget)."""
    recalled: tuple[Recalled, ...] = ()
    """The recalled items whose image the model saw (after the budget)."""
    streamed: int = 0
    """Partials already sent."""
    model_s: float = 0.0
    """Seconds in the model (request out to answer back)."""

    @property
    def trimmed(self) -> dict[str, int]:
        """What the budget left out (`{}`: nothing)."""
        return self.fitted.trimmed


class ModelCall:
    """The model-facing half of `VisualAgent.complete`: budget, content, the call, one retry (module docstring)."""

    def __init__(self, llm: LLMProvider, encoding: FrameEncoding, budget: ContextBudget, system_prompt: str) -> None:
        self.llm = llm
        self.encoding = encoding
        self.budget = budget
        self.system_prompt = system_prompt

    async def run(self, request: ModelRequest, timing: QuestionTiming | None = None) -> ModelResponse:
        """Ask the model; provider errors propagate (the caller maps them to answer errors)."""
        system = request.system_prompt or self.system_prompt
        history = list(request.history)
        pictured = [r for r in request.recalled if r.image is not None]
        images = len(pictured) + len(request.frames)
        minimal = False
        for attempt in (1, 2):
            fitted, shape = await self.budget.plan(system, request.budget_text(), images, history, minimal=minimal)
            kept = {id(pictured[i]) for i in fitted.frames if i < len(pictured)}
            kept_recalled = tuple(r for r in pictured if id(r) in kept)
            kept_frames = tuple(request.frames[i - len(pictured)] for i in fitted.frames if i >= len(pictured))
            recalled = [r if r.image is None or id(r) in kept else Recalled(r.text, None, r.at, r.source)
                        for r in request.recalled]  # an image the budget dropped: its text stays
            content = await self.encoding.content(request.prompt, kept_frames, request.source or "", recalled)
            if timing is not None:
                timing.encoded_at = time.monotonic()
            messages = _messages(system, history[len(history) - fitted.history_turns:], content)
            opts = dict(request.options)
            if self.budget.context_tokens is not None:
                opts["max_tokens"] = min(fitted.max_tokens, opts.get("max_tokens") or fitted.max_tokens)
            started = time.monotonic()
            if timing is not None:
                timing.llm_request_at = started
            streamed = [0]
            try:
                text, model, usage, calls = await self._call(messages, opts, request.on_partial, streamed, timing)
            except ContextLengthError as exc:
                learned = self.budget.refused(shape, exc.limit, exc.input_tokens, exc.input_at_least)
                if attempt == 2 or streamed[0] or not learned:
                    raise
                # The refusal did not say the prompt's true size: retry with the question and its newest image only.
                minimal = exc.input_at_least or (exc.input_tokens is None and exc.limit is None)
                logger.info("agent: the model refused %d prompt tokens (estimated %d) for context length; retrying "
                            "trimmed: %s", exc.input_tokens or 0, shape.estimate, exc.message)
                continue
            if timing is not None:
                timing.llm_response_at = time.monotonic()
            self.budget.observe(shape, usage.prompt_tokens if usage is not None else None)
            return ModelResponse(text=text, model=model, usage=usage, tool_calls=tuple(calls), fitted=fitted,
                                 frames=kept_frames, recalled=kept_recalled, streamed=streamed[0],
                                 model_s=time.monotonic() - started)
        raise AssertionError("unreachable")

    async def _call(self, messages: list[dict[str, Any]], opts: dict[str, Any], on_partial: PartialCallback | None,
                    streamed: list[int], timing: QuestionTiming | None,
                    ) -> tuple[str, str | None, Usage | None, list[ToolCall]]:
        """(text, model, usage when reported, tool calls); `streamed[0]` counts the partials sent so far (a refusal
        after the first one is not retried)."""
        model = self.llm.model
        usage = None
        if on_partial is not None and self.llm.capabilities.streaming:
            parts: list[str] = []
            calls: list[ToolCall] = []
            async for item in self.llm.astream(messages, **{"stream_options": {"include_usage": True}, **opts}):
                if isinstance(item, ToolCallsEvent):  # after the text, when tools were passed: never streamed as text
                    calls = list(item.tool_calls)
                elif isinstance(item, UsageEvent):
                    usage = item.usage
                elif isinstance(item, str) and item:
                    parts.append(item)
                    if timing is not None and timing.first_token_at is None:
                        timing.first_token_at = time.monotonic()
                    streamed[0] += 1
                    await on_partial(streamed[0], item)
            text, model = "".join(parts), self.llm.model or model
        else:
            response = await self.llm.achat(messages, **opts)
            usage, text, model, calls = response.usage, response.text, response.model or model, list(response.tool_calls)
        if timing is not None and usage is not None:
            timing.prompt_tokens, timing.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        return text, model, usage, calls


def _messages(system: str, history: Sequence[tuple[str, str]], content: Any) -> list[dict[str, Any]]:
    """The chat request: the system prompt, the earlier (question, answer) turns, then this request's content. The
    one place a request is put together."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for asked, said in history:
        messages += [{"role": "user", "content": asked}, {"role": "assistant", "content": said}]
    messages.append({"role": "user", "content": content})
    return messages
