"""Any OpenAI-compatible chat endpoint (OpenAI, vLLM serve, OpenRouter, Together, Ollama, ...) over one pooled client.

Built on the `openai` package's async client: its connection pool and its streaming. Retries are ours
(`max_retries`, on connection errors, timeouts, 408/409/429/5xx), so a wait (a 429's `Retry-After`, a backoff)
that would pass the caller's deadline (`providers.deadline`, the agent's `question_timeout_s`) is not slept: the
error comes back at once, saying so. Its exceptions are translated into `providers.errors` in one place; the API key never leaves the client
(it is masked in reprs and scrubbed from error messages).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import openai

from .base import Capabilities, ChatResponse, LLMProvider, ToolCall, ToolCallsEvent, Usage, UsageEvent
from .config import OpenAICompatibleConfig, config_from

if TYPE_CHECKING:
    from encoders import JpegEncoder
from .deadline import time_left
from .errors import (
    BadRequestError,
    EngineError,
    ProviderConfigError,
    ProviderError,
    ProviderStatusError,
    RateLimitedError,
    translate_openai_error,
)
from .messages import normalize_messages, to_openai_messages
from .streaming import ToolCallAssembler, tools_requested, usage_requested

__all__ = ["OpenAICompatibleProvider"]

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_STATUSES = frozenset({408, 409, 429})
"""Statuses retried (with every 5xx), as the openai client does."""
MAX_RETRY_AFTER_S = 120.0
"""A longer `Retry-After` is not waited for (the openai client's limit too)."""
INITIAL_BACKOFF_S = 0.5
MAX_BACKOFF_S = 8.0

# Per-call options handed to `chat.completions.create` as they are.
REQUEST_OPTIONS = frozenset(
    {
        "temperature",
        "max_tokens",
        "max_completion_tokens",
        "top_p",
        "stop",
        "seed",
        "n",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "stream_options",
        "user",
        "metadata",
        "reasoning_effort",
        "timeout",
        "extra_headers",
        "extra_query",
    }
)


class OpenAICompatibleProvider(LLMProvider):
    """Chat with any OpenAI-compatible endpoint; `config` is a dict with the documented keys or an
    OpenAICompatibleConfig."""

    config_class: type[OpenAICompatibleConfig] = OpenAICompatibleConfig
    capabilities = Capabilities(images=True, image_embeddings=False, streaming=True, tools=True)

    def __init__(self, config: Mapping[str, Any] | OpenAICompatibleConfig | None = None, **overrides: Any) -> None:
        self.config = config_from(self.config_class, config, **overrides)
        self.base_url = self._base_url(self.config)
        self._api_key = self.config.resolved_api_key()
        self._closed = False
        self._stream_usage_refused = False
        """True once the server refused `stream_options` (an older OpenAI-compatible server): not asked again."""
        self._encoder: JpegEncoder | None = None
        # The client builds its httpx pool now but connects only on the first request.
        self._client = openai.AsyncOpenAI(
            api_key=self._api_key,
            base_url=self.base_url,
            timeout=self.config.timeout,
            max_retries=0,  # ours: `_create`
            default_headers=dict(self.config.default_headers) or None,
        )

    def _base_url(self, config: OpenAICompatibleConfig) -> str:
        if not config.base_url:
            raise ProviderConfigError("base_url is required (e.g. https://api.openai.com/v1)")
        return config.base_url.rstrip("/")

    def __repr__(self) -> str:
        model = self.config.model_name
        return f"{type(self).__name__}(base_url={self.base_url!r}, model_name={model!r}, api_key='***')"

    @property
    def model(self) -> str | None:
        """The model requests go to (None until known, for a server asked on first use)."""
        return self.config.model_name

    # -- requests -----------------------------------------------------------------------------------------

    @property
    def encoder(self):
        """The JPEG encoder for raw images, built on first use (imports encoders lazily)."""
        if self._encoder is None:
            from encoders import JpegEncoder

            self._encoder = JpegEncoder(max_side=self.config.jpeg_max_side, quality=self.config.jpeg_quality)
        return self._encoder

    async def _model(self) -> str:
        if not self.config.model_name:
            raise ProviderConfigError(f"{type(self).__name__} needs model_name (the model to ask {self.base_url} for)")
        return self.config.model_name

    def _extra_body(self, opts: dict[str, Any]) -> dict[str, Any]:
        """The request's `extra_body`: config's, then the call's; subclasses add their own options."""
        extra = dict(self.config.extra_body)
        extra.update(opts.pop("extra_body", None) or {})
        return extra

    async def _request(self, messages: Sequence[Mapping[str, Any]], opts: dict[str, Any]) -> dict[str, Any]:
        if self._closed:
            raise EngineError(f"{type(self).__name__} is closed", endpoint=self.base_url)
        opts = dict(opts)
        model = opts.pop("model", None) or await self._model()
        extra_body = self._extra_body(opts)
        unknown = set(opts) - REQUEST_OPTIONS
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unknown option(s) {sorted(unknown)}; server-specific ones go in extra_body"
            )
        wire = await to_openai_messages(
            normalize_messages(messages), encoder=self.encoder, provider_name=type(self).__name__
        )
        request: dict[str, Any] = {
            "model": model,
            "messages": wire,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        }
        request.update(opts)
        if "max_completion_tokens" in opts:
            request.pop("max_tokens", None)
        if extra_body:
            request["extra_body"] = extra_body
        return request

    def _error(self, exc: BaseException) -> ProviderError:
        secrets = [self._api_key, *self.config.default_headers.values()]
        return translate_openai_error(exc, endpoint=self.base_url, secrets=secrets, timeout_s=self.config.timeout)

    async def _create(self, request: dict[str, Any], **kw: Any) -> Any:
        """`chat.completions.create`, retried (see `_retrying`)."""
        return await self._retrying(lambda: self._client.chat.completions.create(**request, **kw))

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """`await call()`, retried up to `max_retries` times on what a retry may fix; a wait that would pass the
        caller's deadline is not slept (the error is raised at once, saying so). Errors come out translated."""
        attempt = 0
        while True:
            try:
                return await call()
            except openai.OpenAIError as exc:
                error = self._error(exc)
                wait = self._retry_wait(error, attempt)
                if wait is None:
                    raise error from exc
                left = time_left()
                if left is not None and wait >= left:
                    error.message += f" (not retried: waiting {wait:.3g} s would pass the answer's deadline, {max(left, 0):.3g} s away)"
                    raise error from exc
                attempt += 1
                log.info("%s; retry %d of %d in %.3g s", error, attempt, self.config.max_retries, wait)  # the error names the endpoint
                await asyncio.sleep(wait)

    def _retry_wait(self, error: ProviderError, attempt: int) -> float | None:
        """Seconds to wait before retrying after `error`, or None when it is not retried."""
        if attempt >= self.config.max_retries:
            return None
        if isinstance(error, ProviderStatusError) and not (error.status in RETRY_STATUSES or (error.status or 0) >= 500):
            return None
        if type(error) is ProviderError:  # not a connection, timeout or status error: nothing a retry fixes
            return None
        if isinstance(error, RateLimitedError) and error.retry_after is not None and error.retry_after > 0:
            return error.retry_after if error.retry_after <= MAX_RETRY_AFTER_S else None
        return min(INITIAL_BACKOFF_S * 2.0**attempt, MAX_BACKOFF_S) * (1 - 0.25 * random.random())

    async def achat(self, messages: Sequence[Mapping[str, Any]], **opts: Any) -> ChatResponse:
        opts.pop("stream_options", None)  # a stream's; an answer in one piece reports its usage anyway
        request = await self._request(messages, opts)
        started = time.perf_counter()
        completion = await self._create(request)
        latency = time.perf_counter() - started
        log.debug("chat answered by %s (%s) in %.3f s", self.base_url, completion.model, latency)
        if not completion.choices:
            raise BadRequestError("the endpoint answered with no choices", endpoint=self.base_url)
        choice = completion.choices[0]
        message = choice.message
        calls = [
            ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments or "")
            for c in (message.tool_calls or [])
            if getattr(c, "function", None) is not None
        ]
        usage = completion.usage
        return ChatResponse(
            text=message.content or "",
            tool_calls=calls,
            usage=Usage(usage.prompt_tokens, usage.completion_tokens) if usage else None,
            model=completion.model,
            latency_s=latency,
            finish_reason=choice.finish_reason,
        )

    async def astream(
        self, messages: Sequence[Mapping[str, Any]], **opts: Any
    ) -> AsyncIterator[str | ToolCallsEvent | UsageEvent]:
        """Text deltas; with `tools`, then one ToolCallsEvent holding the calls the model made (if any); with
        `stream_options={"include_usage": True}`, then one UsageEvent when the server reported usage.

        A server that refuses `stream_options` (HTTP 400 naming it) is asked again without them, and never again.
        """
        with_tools, with_usage = tools_requested(opts), usage_requested(opts)
        if self._stream_usage_refused:
            opts = {k: v for k, v in opts.items() if k != "stream_options"}
        request = await self._request(messages, opts)
        try:
            stream = await self._create(request, stream=True)
        except ProviderStatusError as exc:
            if "stream_options" not in request or exc.status not in (400, 422) or "stream_options" not in exc.message:
                raise
            self._stream_usage_refused = True
            log.info("%s refuses stream_options (%s): streamed answers from it report no usage", self.base_url, exc)
            del request["stream_options"]
            stream = await self._create(request, stream=True)
        calls = ToolCallAssembler()
        usage = None
        try:
            async for chunk in stream:
                usage = getattr(chunk, "usage", None) or usage  # the last chunk, without choices, when asked for
                for choice in chunk.choices[:1]:
                    delta = choice.delta
                    if delta is None:
                        continue
                    if delta.content:
                        yield delta.content
                    if delta.tool_calls:
                        calls.add(delta.tool_calls)
        except openai.OpenAIError as exc:
            raise self._error(exc) from exc
        finally:
            # Ends the HTTP response when the consumer stops early, so the server stops generating.
            await stream.close()
        assembled = calls.calls()
        if with_tools and assembled:
            yield ToolCallsEvent(assembled)
        if with_usage and usage is not None:
            yield UsageEvent(Usage(usage.prompt_tokens, usage.completion_tokens))

    async def list_models(self) -> list[str]:
        if self._closed:
            raise EngineError(f"{type(self).__name__} is closed", endpoint=self.base_url)
        page = await self._retrying(self._client.models.list)
        return [model.id for model in page.data]

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._client.close()
