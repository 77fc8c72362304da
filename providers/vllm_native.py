"""The in-process vLLM engine: raw images and precomputed image embeddings, streaming, tool calls.

The engine runs in its own thread (`EngineWorker`), which steps a vLLM `LLMEngine` and adds requests between steps:
concurrent `achat`/`astream` calls share the engine's batch, and the event loop never waits on it. The prompt is
written by the model's own chat template with one image placeholder per image; vLLM expands each placeholder to
the image's feature tokens. Embeddings are checked against the model (language-model hidden size, tokens per image)
before the engine sees them, so a wrong shape is a clear `EmbeddingShapeError` (a ValueError) and costs nothing.
torch and vllm are imported on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .base import Capabilities, ChatResponse, LLMProvider, ToolCall, ToolCallsEvent, Usage, UsageEvent
from .config import VLLMNativeConfig, config_from
from .embeddings import EmbeddingShape
from .engine_worker import EngineWorker, Finished
from .errors import (
    BadRequestError,
    EmbeddingsNotSupportedError,
    EngineError,
    MessageFormatError,
    ProviderConfigError,
    ProviderConnectionError,
    ToolsNotSupportedError,
    context_length_error,
)
from .messages import (
    EmbeddingsPart,
    ImagePart,
    Message,
    OtherPart,
    TextPart,
    has_embeddings,
    load_image,
    normalize_messages,
)
from .streaming import usage_requested

__all__ = ["SAMPLING_OPTIONS", "VLLMNativeProvider"]

# Per-call options that become vLLM SamplingParams (extra_body's keys are read the same way).
SAMPLING_OPTIONS = frozenset(
    {
        "temperature",
        "max_tokens",
        "top_p",
        "top_k",
        "min_p",
        "repetition_penalty",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "stop",
        "stop_token_ids",
        "min_tokens",
        "ignore_eos",
        "skip_special_tokens",
    }
)
OTHER_OPTIONS = frozenset(
    {"tools", "tool_choice", "structured_outputs", "guided_json", "response_format", "max_completion_tokens", "extra_body",
     "stream_options"}
)
FETCH_TIMEOUT_S = 30.0

log = logging.getLogger(__name__)


_CPU_THREADS_LOGGER = "vllm.v1.worker.cpu_worker"
_CPU_THREADS_WARNING = "CPU backend doesn't allow to use `torch.set_num_threads`"


class _FirstCpuThreadsWarningOnly(logging.Filter):
    """Lets vLLM's CPU-worker warning about `torch.set_num_threads` through once, then drops its repeats.

    With the engine in this process, vLLM's CPU worker replaces `torch.set_num_threads` process-wide by a function
    that only logs this warning, and vLLM's own renderer calls it twice around every multimodal request
    (`set_default_torch_num_threads` in vllm/renderers/base.py): two warnings per question, about a call that
    vLLM itself makes and skips. Only this message of this logger is touched.
    """

    def __init__(self) -> None:
        super().__init__()
        self._seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith(_CPU_THREADS_WARNING):
            return True
        seen, self._seen = self._seen, True
        return not seen


def _quiet_repeated_cpu_threads_warning() -> None:
    logger = logging.getLogger(_CPU_THREADS_LOGGER)
    if not any(isinstance(f, _FirstCpuThreadsWarningOnly) for f in logger.filters):
        logger.addFilter(_FirstCpuThreadsWarningOnly())


def _is_vllm_client_error(exc: BaseException) -> bool:
    """vLLM's errors caused by the request (its validation errors are not ValueErrors)."""
    from vllm.exceptions import VLLMClientError

    return isinstance(exc, VLLMClientError)


class VLLMNativeProvider(LLMProvider):
    """vLLM in this process; the provider that takes precomputed image embeddings (with `enable_mm_embeds`)."""

    def __init__(self, config: Mapping[str, Any] | VLLMNativeConfig | None = None, **overrides: Any) -> None:
        self.config = config_from(VLLMNativeConfig, config, **overrides)
        self.capabilities = Capabilities(
            images=True,
            image_embeddings=self.config.enable_mm_embeds,
            streaming=True,
            tools=self.config.tool_parser is not None,
        )
        self.endpoint = f"vllm-native:{self.config.model_name}"
        self._worker: EngineWorker | None = None
        self._booting: EngineWorker | None = None
        """A worker whose engine is still being built (its first caller may have been cancelled)."""
        self._start_lock = asyncio.Lock()
        self._closed = False
        self._ids = itertools.count()
        self._prefix = uuid.uuid4().hex[:8]
        self._tokenizer: Any = None
        self._shape: EmbeddingShape | None = None
        self._max_model_len: int | None = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self._worker else "not started")
        return f"VLLMNativeProvider(model_name={self.config.model_name!r}, {state})"

    @property
    def model(self) -> str:
        """The model the engine runs (its Hugging Face id or folder)."""
        return self.config.model_name

    def engine_args(self) -> dict[str, Any]:
        """The keyword arguments for `vllm.EngineArgs`: the named config keys, then `engine_args` unchanged."""
        args: dict[str, Any] = {
            "model": self.config.model_name,
            "enable_mm_embeds": self.config.enable_mm_embeds,
            "tensor_parallel_size": self.config.tensor_parallel_size,
            "gpu_memory_utilization": self.config.gpu_memory_utilization,
            "dtype": self.config.dtype,
        }
        if self.config.max_model_len is not None:
            args["max_model_len"] = self.config.max_model_len
        args.update(self.config.engine_args)
        return args

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the model (in the engine thread); the first request does it too. Safe to call again."""
        if self._closed:
            raise EngineError("VLLMNativeProvider is closed", endpoint=self.endpoint)
        async with self._start_lock:
            if self._worker is not None:
                return
            if self._booting is None:
                _quiet_repeated_cpu_threads_warning()
                args = self.engine_args()

                def build():
                    from vllm import EngineArgs, LLMEngine

                    return LLMEngine.from_engine_args(EngineArgs(**args))

                self._booting = EngineWorker(build, name=f"vllm-engine-{self._prefix}", endpoint=self.endpoint)
            # A caller cancelled mid-build (a question's timeout) leaves the build running in `_booting`;
            # the next call waits for that same engine instead of loading a second one.
            try:
                engine = await self._booting.start()
            except EngineError:
                self._booting = None  # the build failed: the next call tries a fresh engine
                raise
            model_config = engine.model_config
            self._tokenizer = engine.get_tokenizer()
            self._max_model_len = getattr(model_config, "max_model_len", None)
            self._shape = EmbeddingShape.of_model(model_config, endpoint=self.endpoint)
            self._worker, self._booting = self._booting, None

    def _started_worker(self) -> EngineWorker:
        """The engine's worker, once `start()` has run (requests start it first)."""
        if self._worker is None:
            raise EngineError("the engine is not started; call start() first", endpoint=self.endpoint)
        return self._worker

    def _started_shape(self) -> EmbeddingShape:
        """The model's embedding shape, read from the engine by `start()`."""
        if self._shape is None:
            raise EngineError("the engine is not started; call start() first", endpoint=self.endpoint)
        return self._shape

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        async with self._start_lock:
            for worker in (self._worker, self._booting):
                if worker is not None:
                    await worker.stop()

    async def list_models(self) -> list[str]:
        return [self.config.model_name]

    async def context_length(self) -> int | None:
        """The engine's own `max_model_len` (starting the engine if needed)."""
        await self.start()
        return int(self._max_model_len) if self._max_model_len else self.config.max_model_len

    def image_tokens(self) -> int | None:
        """`image_tokens` from the config, else the model's image tokens once the engine runs (LLaVA: fixed)."""
        if self.config.image_tokens is not None:
            return self.config.image_tokens
        return getattr(self._shape, "image_tokens", None) or None

    async def preflight(self) -> list[str]:
        """The model, when it is a folder here or looks like a Hugging Face id; nothing is loaded."""
        model = self.config.model_name
        if Path(model).expanduser().exists() or ("/" in model and not model.startswith(("/", "."))):
            return [model]
        raise ProviderConfigError(f"vllm_native model_name {model!r} is not a folder here", endpoint=self.endpoint)

    # -- requests -----------------------------------------------------------------------------------

    async def achat(self, messages: Sequence[Mapping[str, Any]], **opts: Any) -> ChatResponse:
        started = time.perf_counter()
        tools = self._check_tools(opts)
        text: list[str] = []
        token_ids: list[int] = []
        count = _TokenCount()
        finish_reason = None
        async with contextlib.aclosing(self._generate(messages, opts, count)) as outputs:
            async for output in outputs:
                completion = output.outputs[0]
                text.append(completion.text)
                token_ids.extend(completion.token_ids)
                finish_reason = completion.finish_reason or finish_reason
        answer = "".join(text)
        calls: list[ToolCall] = []
        if tools:
            answer, calls = self._parse_tool_calls(answer, tools)
            if calls:
                finish_reason = "tool_calls"
        return ChatResponse(
            text=answer,
            tool_calls=calls,
            usage=count.usage(),
            model=self.config.model_name,
            latency_s=time.perf_counter() - started,
            finish_reason=finish_reason,
            token_ids=tuple(token_ids),
        )

    async def astream(
        self, messages: Sequence[Mapping[str, Any]], **opts: Any
    ) -> AsyncIterator[str | ToolCallsEvent | UsageEvent]:
        """Text deltas; with `tools`, the text outside tool calls, then one ToolCallsEvent (as `achat` parses them);
        with `stream_options={"include_usage": True}`, then one UsageEvent (the engine's own token counts)."""
        tools = self._check_tools(opts)
        count = _TokenCount()
        if tools:
            async with contextlib.aclosing(self._stream_with_tools(messages, opts, tools, count)) as items:
                async for item in items:
                    yield item
        else:
            async with contextlib.aclosing(self._generate(messages, opts, count)) as outputs:
                async for output in outputs:
                    delta = output.outputs[0].text
                    if delta:
                        yield delta
        if usage_requested(opts):
            yield UsageEvent(count.usage())

    async def _stream_with_tools(
        self, messages: Sequence[Mapping[str, Any]], opts: dict[str, Any], tools: list[dict[str, Any]], count: _TokenCount
    ) -> AsyncGenerator[str | ToolCallsEvent, None]:
        """vLLM's streaming tool parser keeps call syntax out of the text deltas; the calls themselves are parsed
        from the whole answer at the end by the same parser `achat` uses, so both modes give the same calls."""
        parser, request = self._tool_parser(tools)
        text = ""
        token_ids: list[int] = []
        async with contextlib.aclosing(self._generate(messages, opts, count)) as outputs:
            async for output in outputs:
                completion = output.outputs[0]
                delta, delta_ids = completion.text, list(completion.token_ids)
                if not delta and not delta_ids:
                    continue
                previous, previous_ids = text, token_ids
                text, token_ids = text + delta, token_ids + delta_ids
                if parser is None:
                    yield delta
                    continue
                try:
                    message = parser.extract_tool_calls_streaming(
                        previous, text, delta, previous_ids, token_ids, delta_ids, request
                    )
                except Exception:  # a parser bug must not end the answer: stream the plain text from here on
                    name = self.config.tool_parser
                    log.warning("vLLM's %s tool parser failed while streaming; plain text from here", name, exc_info=True)
                    parser = None
                    yield delta
                    continue
                if message is not None and message.content:
                    yield message.content
        _, calls = self._parse_tool_calls(text, tools)
        if calls:
            yield ToolCallsEvent(tuple(calls))

    async def _generate(
        self, messages: Sequence[Mapping[str, Any]], opts: dict[str, Any], count: _TokenCount | None = None
    ) -> AsyncGenerator[Any, None]:
        # Config problems are refused before anything is loaded: they should not cost an engine start.
        tools = self._check_tools(opts)
        normalized = normalize_messages(messages)
        if not self.config.enable_mm_embeds and has_embeddings(normalized):
            raise EmbeddingsNotSupportedError(
                "this VLLMNativeProvider was configured without enable_mm_embeds; set enable_mm_embeds: true "
                "to pass precomputed image embeddings",
                endpoint=self.endpoint,
            )
        await self.start()
        prompt, params = await self._prepare(normalized, tools, dict(opts))
        request_id = f"va-{self._prefix}-{next(self._ids)}"
        worker = self._started_worker()
        sink = worker.submit(request_id, prompt, params)
        done = False
        try:
            while True:
                item = await sink.get()
                if isinstance(item, Finished):
                    done = True
                    raise self._engine_error(item.error) from item.error
                if count is not None:
                    count.add(item)
                yield item
                if item.finished:
                    done = True
                    return
        finally:
            if not done:  # cancelled, or the consumer stopped reading: free the engine's slot
                worker.abort(request_id)

    def _engine_error(self, exc: BaseException) -> Exception:
        if isinstance(exc, EngineError):
            return exc
        if isinstance(exc, (ValueError, TypeError)) or _is_vllm_client_error(exc):
            refused = context_length_error(f"the engine refused the request: {exc}", endpoint=self.endpoint)
            if refused is not None:
                return refused
            return BadRequestError(f"the engine refused the request: {exc}", endpoint=self.endpoint)
        return EngineError(f"the engine failed: {type(exc).__name__}: {exc}", endpoint=self.endpoint)

    async def _prepare(
        self, messages: list[Message], tools: list[dict[str, Any]] | None, opts: dict[str, Any]
    ) -> tuple[dict, Any]:
        params = self._sampling_params(opts)
        conversation, images, embeddings = self._conversation(messages)
        if images and embeddings:
            raise MessageFormatError(
                "one request cannot mix raw images and image embeddings (vLLM takes one kind per modality)",
                endpoint=self.endpoint,
            )
        try:
            text = self._tokenizer.apply_chat_template(
                conversation, tools=tools, add_generation_prompt=True, tokenize=False
            )
        except Exception as exc:  # jinja errors, templates that refuse a role order, ...
            raise MessageFormatError(f"the model's chat template refused the messages: {exc}", endpoint=self.endpoint) from exc
        prompt: dict[str, Any] = {"prompt": text}
        if embeddings:
            prompt["multi_modal_data"] = {"image": self._started_shape().check(embeddings)}
        elif images:
            pil = await self._load_images(images)
            prompt["multi_modal_data"] = {"image": pil if len(pil) > 1 else pil[0]}
        return prompt, params

    def _check_tools(self, opts: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        """The tools to render and parse, or None; refuses tools this model cannot call."""
        tools = opts.get("tools")
        choice = opts.get("tool_choice", "auto")
        if not tools or choice == "none":
            return None
        if self.config.tool_parser is None:
            raise ToolsNotSupportedError(
                f"tools were given but no tool_parser is configured for {self.config.model_name}; set tool_parser "
                "to the vLLM parser that matches the model's chat template (e.g. hermes, llama3_json, pythonic)",
                endpoint=self.endpoint,
            )
        if choice not in ("auto", None):
            raise ToolsNotSupportedError(
                f"tool_choice {choice!r} is not supported in-process; use 'auto' or 'none'", endpoint=self.endpoint
            )
        return list(tools)

    def _conversation(self, messages: list[Message]) -> tuple[list[dict], list[Any], list[Any]]:
        """Chat-template messages with `{"type": "image"}` placeholders, and the images/embeddings in order."""
        conversation: list[dict[str, Any]] = []
        images: list[Any] = []
        embeddings: list[Any] = []
        for message in messages:
            entry: dict[str, Any] = {"role": message.role, **message.extra}
            if message.parts is None:
                entry["content"] = message.text or ""
            else:
                content = []
                for part in message.parts:
                    if isinstance(part, TextPart):
                        content.append({"type": "text", "text": part.text})
                    elif isinstance(part, ImagePart):
                        images.append(part.source)
                        content.append({"type": "image"})
                    elif isinstance(part, EmbeddingsPart):
                        items = self._started_shape().split(part.embeddings)
                        embeddings.extend(items)
                        content.extend({"type": "image"} for _ in items)
                    elif isinstance(part, OtherPart):
                        raise MessageFormatError(
                            f"VLLMNativeProvider cannot read content parts of type {part.raw.get('type')!r}",
                            endpoint=self.endpoint,
                        )
                entry["content"] = content
            conversation.append(entry)
        return conversation, images, embeddings

    async def _load_images(self, sources: list[Any]) -> list[Any]:
        fetched: dict[int, bytes] = {}
        urls = [(i, s) for i, s in enumerate(sources) if isinstance(s, str) and s.startswith(("http://", "https://"))]
        if urls:
            import httpx

            async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=True) as client:
                for i, url in urls:
                    try:
                        response = await client.get(url)
                        response.raise_for_status()
                    except httpx.HTTPError as exc:
                        status = exc.response.status_code if isinstance(exc, httpx.HTTPStatusError) else None
                        raise ProviderConnectionError(
                            f"cannot fetch image {url}: {exc}", endpoint=url, status=status
                        ) from exc
                    fetched[i] = response.content
        return await asyncio.to_thread(lambda: [load_image(s, fetched=fetched.get(i)) for i, s in enumerate(sources)])

    def _sampling_params(self, opts: dict[str, Any]) -> Any:
        from vllm.exceptions import VLLMClientError
        from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

        opts = {**opts, **(opts.pop("extra_body", None) or {})}
        unknown = set(opts) - SAMPLING_OPTIONS - OTHER_OPTIONS
        if unknown:
            raise TypeError(f"VLLMNativeProvider got unknown option(s) {sorted(unknown)}")
        values = {"temperature": self.config.temperature, "max_tokens": self.config.max_tokens}
        values.update({k: v for k, v in opts.items() if k in SAMPLING_OPTIONS and v is not None})
        if opts.get("max_completion_tokens") is not None:
            values["max_tokens"] = opts["max_completion_tokens"]
        structured = opts.get("structured_outputs")
        if opts.get("guided_json") is not None:
            structured = {"json": opts["guided_json"]}
        response_format = opts.get("response_format") or {}
        if not isinstance(response_format, Mapping):
            raise BadRequestError(
                f"response_format must be a dict such as {{'type': 'json_object'}}, got {response_format!r}",
                endpoint=self.endpoint,
            )
        if response_format.get("type") == "json_schema":
            json_schema = response_format.get("json_schema")
            if not isinstance(json_schema, Mapping):
                raise BadRequestError(
                    "response_format of type json_schema needs a 'json_schema' dict holding the 'schema'",
                    endpoint=self.endpoint,
                )
            structured = {"json": json_schema.get("schema", {})}
        elif response_format.get("type") == "json_object":
            structured = {"json_object": True}
        try:
            if structured is not None and not isinstance(structured, StructuredOutputsParams):
                structured = StructuredOutputsParams(**structured)
            return SamplingParams(output_kind=RequestOutputKind.DELTA, structured_outputs=structured, **values)
        except (TypeError, ValueError, VLLMClientError) as exc:
            raise BadRequestError(f"bad sampling options: {exc}", endpoint=self.endpoint) from exc

    def _tool_parser(self, tools: list[dict[str, Any]]) -> tuple[Any, Any]:
        """A fresh vLLM tool parser (it keeps per-answer state while streaming) and the request it reads tools from."""
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.tool_parsers import ToolParserManager

        try:
            parser_class = ToolParserManager.get_tool_parser(self.config.tool_parser)
        except KeyError as exc:
            raise ToolsNotSupportedError(
                f"vLLM has no tool parser {self.config.tool_parser!r}; known: {ToolParserManager.list_registered()}",
                endpoint=self.endpoint,
            ) from exc
        request = ChatCompletionRequest(
            model=self.config.model_name, messages=[{"role": "user", "content": ""}], tools=tools, tool_choice="auto"
        )
        return parser_class(self._tokenizer, request.tools), request

    def _parse_tool_calls(self, text: str, tools: list[dict[str, Any]]) -> tuple[str, list[ToolCall]]:
        parser, request = self._tool_parser(tools)
        info = parser.extract_tool_calls(text, request)
        if not info.tools_called:
            return text, []
        calls = [
            ToolCall(id=call.id or f"call_{i}", name=call.function.name, arguments=call.function.arguments or "")
            for i, call in enumerate(info.tool_calls)
        ]
        return info.content or "", calls


class _TokenCount:
    """Prompt and completion tokens of one request, counted from the engine's delta outputs (`achat` and `astream`)."""

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def add(self, output: Any) -> None:
        if output.prompt_token_ids:
            self.prompt_tokens = len(output.prompt_token_ids)
        self.completion_tokens += len(output.outputs[0].token_ids)

    def usage(self) -> Usage:
        return Usage(self.prompt_tokens, self.completion_tokens)
