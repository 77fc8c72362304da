"""Fit a question into the model's context: what is sent, what is left out, how long the answer may be.

`fit_request` is the rule, a pure function of token counts: the system prompt, the question and its newest frame
always go; then history turns, newest first; then the question's other frames, newest first (the oldest are
dropped first); `max_tokens` is lowered to what is left, never below `min_answer_tokens` (below it: a
`context_exceeded` error saying what to change). While there is more than the floor, a quarter of the context
(or `max_tokens`, when smaller) is kept for the answer, so history cannot squeeze every answer to the floor.

`TokenCounter` estimates the counts: text by its UTF-8 bytes (3 bytes a token until it learns better), frames by
`image_tokens` per frame (configured, else learned). It learns from what the endpoint reports: the prompt tokens
of each answer (`usage.prompt_tokens`) and the input length a context-length refusal names. Estimates err
high (a margin on top), since too high only trims more, too low costs a refused request and a retry.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ErrorType, QuestionError

__all__ = ["ContextBudget", "Fitted", "RequestShape", "TokenCounter", "fit_request"]

logger = logging.getLogger(__name__)

DEFAULT_BYTES_PER_TOKEN = 3.0
"""Until learned; English BPE averages about 4, small vocabularies fewer."""
MESSAGE_OVERHEAD_BYTES = 16
"""Chat-template text around each message (role markers), counted as bytes of text."""
SAFETY = 1.1
"""Estimates are raised by this factor..."""
SAFETY_TOKENS = 8
"""...plus this many tokens."""
_OBSERVATIONS = 32
DEFAULT_MAX_TOKENS = 512
"""The answer's limit when the provider's config does not say (the providers' own default)."""


@dataclass(frozen=True)
class Fitted:
    """What goes to the model."""

    history_turns: int
    """How many of the newest history turns are sent."""
    frames: tuple[int, ...]
    """Indexes (into the frames given, oldest first) of the frames sent, in order."""
    max_tokens: int
    """The answer's token limit."""
    prompt_tokens: int
    """The estimated prompt size."""
    trimmed: dict[str, int] = field(default_factory=dict)
    """What was left out: ``{"history_turns": n, "frames": n}``, zero counts omitted; {} when nothing was."""


def fit_request(*, context_tokens: int, base_tokens: int, frame_tokens: Sequence[int], turn_tokens: Sequence[int],
                max_tokens: int, min_answer_tokens: int) -> Fitted:
    """Fit one request (see the module docstring).

    `base_tokens`: the system prompt and the question; `frame_tokens`: each frame, oldest first (none: a text-only
    request, such as a question about the past whose stored events have no pictures); `turn_tokens`: each history
    turn (question and answer), oldest first.
    """
    must = base_tokens + (frame_tokens[-1] if frame_tokens else 0)
    if must + min_answer_tokens > context_tokens:
        raise QuestionError(ErrorType.CONTEXT_EXCEEDED, (
            f"the question and one frame need about {must} tokens plus {min_answer_tokens} for the answer "
            f"(agent.min_answer_tokens), more than the model's context of {context_tokens} tokens: ask a shorter "
            "question, shorten agent.system_prompt, lower agent.min_answer_tokens or encoder.jpeg_max_side, or serve "
            "the model with a longer context (vLLM --max-model-len)"))
    answer_room = max(min_answer_tokens, min(max_tokens, context_tokens // 4))
    budget = max(context_tokens - answer_room, must)
    used = must
    turns = 0
    for cost in reversed(turn_tokens):  # newest first; a gap would confuse the model, so stop at the first misfit
        if used + cost > budget:
            break
        used += cost
        turns += 1
    kept = [len(frame_tokens) - 1] if frame_tokens else []
    for i in range(len(frame_tokens) - 2, -1, -1):  # newest first: the oldest are dropped
        if used + frame_tokens[i] > budget:
            break
        used += frame_tokens[i]
        kept.append(i)
    dropped = {"history_turns": len(turn_tokens) - turns, "frames": len(frame_tokens) - len(kept)}
    return Fitted(
        history_turns=turns,
        frames=tuple(sorted(kept)),
        max_tokens=max(min_answer_tokens, min(max_tokens, context_tokens - used)),
        prompt_tokens=used,
        trimmed={k: v for k, v in dropped.items() if v},
    )


class TokenCounter:
    """Token estimates for one model, corrected by what its endpoint reports."""

    def __init__(self, *, image_tokens: int | None = None, bytes_per_token: float = DEFAULT_BYTES_PER_TOKEN) -> None:
        self.configured_image_tokens = image_tokens
        """`llm.image_tokens` (or what the provider knows): never overwritten by learning."""
        self.tokens_per_byte = 1.0 / bytes_per_token
        self.image_tokens: float | None = image_tokens
        """Learned or configured; None until the first answer reports its prompt size."""
        self._seen: collections.deque[tuple[int, int, int]] = collections.deque(maxlen=_OBSERVATIONS)
        """(text bytes, images, prompt tokens) of recent requests."""

    def __repr__(self) -> str:
        return f"TokenCounter(bytes_per_token={1 / self.tokens_per_byte:.2f}, image_tokens={self.image_tokens})"

    @staticmethod
    def text_bytes(*texts: str) -> int:
        """Bytes of text as the counter measures it: each message's UTF-8 plus its template overhead."""
        return sum(len(t.encode("utf-8", "replace")) + MESSAGE_OVERHEAD_BYTES for t in texts)

    def text(self, *texts: str) -> int:
        """Estimated tokens of these messages' text."""
        return self._raise(self.text_bytes(*texts) * self.tokens_per_byte)

    def frame(self, context_tokens: int) -> int:
        """Estimated tokens of one frame; before anything is known, an eighth of the context (then learned)."""
        guess = self.image_tokens if self.image_tokens is not None else max(1, context_tokens // 8)
        return self._raise(guess)

    @staticmethod
    def _raise(tokens: float) -> int:
        return math.ceil(tokens * SAFETY) + SAFETY_TOKENS if tokens > 0 else 0

    def observe(self, text_bytes: int, images: int, prompt_tokens: int) -> None:
        """Learn from one request's true prompt size (an answer's usage, or a refusal's stated input length).

        With two unknowns (tokens per byte, tokens per image), a least-squares fit over recent requests once they
        differ in shape; until then the one unknown that is not configured absorbs the whole difference.
        """
        if prompt_tokens <= 0 or text_bytes <= 0:
            return
        self._seen.append((text_bytes, images, prompt_tokens))
        fixed = self.configured_image_tokens if images else 0
        if fixed is not None:
            rest = prompt_tokens - fixed * images
            if rest > 0:
                self.tokens_per_byte = rest / text_bytes
            return
        solved = self._least_squares()
        if solved is not None:
            self.tokens_per_byte, self.image_tokens = solved
            return
        # One shape seen so far: keep the text rate, put the rest on the images (at least 1 token each).
        left = prompt_tokens - self.tokens_per_byte * text_bytes
        if left >= images:
            self.image_tokens = left / images
        else:  # the text rate was too high: the images take 1 token each until a second shape says better
            self.image_tokens = 1.0
            self.tokens_per_byte = (prompt_tokens - images) / text_bytes

    def scale(self, factor: float) -> None:
        """Raise the learned rates by `factor` (a refusal showed them too low; a configured image count stays)."""
        self.tokens_per_byte *= factor
        if self.image_tokens is not None and self.configured_image_tokens is None:
            self.image_tokens *= factor

    def _least_squares(self) -> tuple[float, float] | None:
        sxx = sxy = syy = sxp = syp = 0.0
        for b, n, p in self._seen:
            sxx += b * b
            sxy += b * n
            syy += n * n
            sxp += b * p
            syp += n * p
        det = sxx * syy - sxy * sxy
        if det <= 1e-9 * max(sxx * syy, 1.0):
            return None
        per_byte = (sxp * syy - syp * sxy) / det
        per_image = (syp * sxx - sxp * sxy) / det
        if per_byte <= 0 or per_image < 1:
            return None
        # The fit is of the recent average; the largest under-estimate seen keeps the estimate on the high side.
        worst = max(p / (per_byte * b + per_image * n) for b, n, p in self._seen)
        scale = max(1.0, worst)
        return per_byte * scale, per_image * scale


@dataclass(frozen=True)
class RequestShape:
    """What one request held, for learning from its reported size."""

    text_bytes: int
    images: int
    estimate: int


class ContextBudget:
    """The budget of one model: its context length (asked of the provider once, or learned from a refusal), a
    `TokenCounter`, and the answer-length settings. `plan` fits a request; `observe` and `refused` teach it."""

    def __init__(self, llm: Any, *, min_answer_tokens: int) -> None:
        self.llm = llm
        self.min_answer_tokens = min_answer_tokens
        self.max_tokens = int(getattr(getattr(llm, "config", None), "max_tokens", None) or DEFAULT_MAX_TOKENS)
        self.context_tokens: int | None = None
        self._asked = False
        image_tokens = getattr(llm, "image_tokens", None)
        self.counter = TokenCounter(image_tokens=image_tokens() if callable(image_tokens) else None)

    def __repr__(self) -> str:
        return f"ContextBudget(context_tokens={self.context_tokens}, max_tokens={self.max_tokens}, {self.counter!r})"

    async def _context_tokens(self) -> int | None:
        if not self._asked:
            ask = getattr(self.llm, "context_length", None)
            if ask is not None:
                try:
                    known = await ask()
                except Exception as exc:  # unreachable now: the request itself will say so; ask again next time
                    logger.info("context budget: the model's context length is unknown yet (%s)", exc)
                    return self.context_tokens
                if known:
                    self.context_tokens = int(known)
                    logger.info("context budget: the model's context is %d tokens", self.context_tokens)
            self._asked = True
            if self.counter.configured_image_tokens is None:
                image_tokens = getattr(self.llm, "image_tokens", None)
                known_images = image_tokens() if callable(image_tokens) else None
                if known_images:
                    self.counter.configured_image_tokens = self.counter.image_tokens = known_images
        return self.context_tokens

    async def plan(self, system: str, question: str, frames: int, turns: Sequence[tuple[str, str]], *,
                   minimal: bool = False) -> tuple[Fitted, RequestShape]:
        """Fit a request of `frames` frames (oldest first) and `turns` (oldest first); without a known context
        length everything goes and `max_tokens` stays the provider's. `minimal`: only the question and its newest
        frame (a retry after a refusal that did not say how large the prompt was)."""
        context = await self._context_tokens()
        base_bytes = TokenCounter.text_bytes(system, question)
        turn_bytes = [TokenCounter.text_bytes(q, a) for q, a in turns]
        if context is None:
            fitted = Fitted(history_turns=len(turns), frames=tuple(range(frames)), max_tokens=self.max_tokens,
                            prompt_tokens=0)
        else:
            counter = self.counter
            fitted = fit_request(
                context_tokens=context, base_tokens=counter.text(system, question),
                frame_tokens=[counter.frame(context)] * frames,
                turn_tokens=[counter._raise(b * counter.tokens_per_byte) for b in turn_bytes],
                max_tokens=self.max_tokens, min_answer_tokens=self.min_answer_tokens,
            ) if not minimal else self._minimal(context, system, question, frames, len(turns))
        kept_bytes = base_bytes + sum(turn_bytes[len(turns) - fitted.history_turns:])
        return fitted, RequestShape(kept_bytes, len(fitted.frames), fitted.prompt_tokens)

    def _minimal(self, context: int, system: str, question: str, frames: int, turns: int) -> Fitted:
        alone = fit_request(context_tokens=context, base_tokens=self.counter.text(system, question),
                            frame_tokens=[self.counter.frame(context)], turn_tokens=[], max_tokens=self.max_tokens,
                            min_answer_tokens=self.min_answer_tokens)
        dropped = {"history_turns": turns, "frames": frames - 1}
        return Fitted(history_turns=0, frames=(frames - 1,), max_tokens=alone.max_tokens,
                      prompt_tokens=alone.prompt_tokens, trimmed={k: v for k, v in dropped.items() if v})

    def observe(self, shape: RequestShape, prompt_tokens: int | None) -> None:
        """An answer came back: learn from its reported prompt size (when the provider reports usage)."""
        if prompt_tokens:
            self.counter.observe(shape.text_bytes, shape.images, prompt_tokens)

    def refused(self, shape: RequestShape, limit: int | None, input_tokens: int | None, at_least: bool) -> bool:
        """The endpoint refused `shape` for context length: learn its limit and the true size; True when a retry
        can expect to fit better (something was learned)."""
        learned = False
        if limit and limit != self.context_tokens:
            self.context_tokens, learned = limit, True
            logger.info("context budget: the endpoint says the model's context is %d tokens", limit)
        if input_tokens and input_tokens > shape.estimate and not at_least:
            self.counter.observe(shape.text_bytes, shape.images, input_tokens)  # the true size: learn it as usage
            learned = True
        elif (limit is None and shape.estimate) or (at_least and input_tokens):
            # A count the server stopped at ("at least N"), or no numbers at all: err higher by at least a quarter,
            # without keeping a made-up size among the observations.
            self.counter.scale(max(1.25, (input_tokens or 0) / max(shape.estimate, 1)))
            learned = True
        return learned
