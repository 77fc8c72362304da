"""Any of our providers as a LlamaIndex LLM: `ProviderLLM(provider=...)` (needs the `llamaindex` extra).

LlamaIndex calls an LLM both from plain code (`chat`, `complete`, `stream_chat`, ...) and from its own coroutines.
Our providers are asyncio objects bound to the loop they run on (the HTTP client's connection pool, the engine's
queues), so `ProviderLLM` owns one private event loop in a daemon thread and runs every call there: the sync forms
wait on it (usable again and again, with or without a loop running elsewhere), the async forms await it. The
provider therefore always sees one loop.

Messages: text, `ImageBlock`s (bytes, path or URL; URLs are passed as they are, so HTTP providers send them and the
native engine fetches them), precomputed embeddings in a message's `additional_kwargs["image_embeddings"]`
(VLLMNativeProvider with `enable_mm_embeds`), tool calls as `ToolCallBlock`s and tool results as `tool` messages
with `additional_kwargs["tool_call_id"]`. Tool calling goes through LlamaIndex's `FunctionCallingLLM` interface
when the provider's `capabilities.tools` is true.

This module is not imported by `import providers`; it imports `llama_index.core` at the top.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncGenerator, Coroutine, Generator, Sequence
from typing import Any, TypeVar

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    ImageBlock,
    LLMMetadata,
    MessageRole,
    TextBlock,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection

from .base import LLMProvider, ToolCallsEvent
from .errors import MessageFormatError, ToolsNotSupportedError

__all__ = ["ProviderLLM"]

T = TypeVar("T")
DEFAULT_CONTEXT_WINDOW = 4096
_EMBEDDINGS_KEY = "image_embeddings"


class _LoopThread:
    """One event loop in a daemon thread; `run` waits on a coroutine there from any thread (not from the loop itself)."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]):
        if self.loop.is_closed() or not self._thread.is_alive():
            coro.close()
            raise RuntimeError("this ProviderLLM is closed")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a sync ProviderLLM method was called from its own loop; await the async form instead")
        return self.submit(coro).result()

    async def arun(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(self.submit(coro))

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
        if not self.loop.is_closed():
            self.loop.close()


class ProviderLLM(FunctionCallingLLM):
    """A LlamaIndex LLM backed by one of our providers (OpenAICompatibleProvider, VLLMProvider, VLLMNativeProvider)."""

    context_window: int = Field(default=DEFAULT_CONTEXT_WINDOW, description="Tokens the model reads, for LlamaIndex.")
    num_output: int = Field(default=256, description="Tokens an answer may take, for LlamaIndex's prompt budgeting.")

    _provider: LLMProvider = PrivateAttr()
    _runner: _LoopThread = PrivateAttr()

    def __init__(self, provider: LLMProvider, **kwargs: Any) -> None:
        if not isinstance(provider, LLMProvider):
            raise TypeError(f"provider must be one of our LLMProviders, got {type(provider).__name__}")
        max_model_len = getattr(getattr(provider, "config", None), "max_model_len", None)
        if max_model_len and "context_window" not in kwargs:
            kwargs["context_window"] = int(max_model_len)
        super().__init__(**kwargs)
        self._provider = provider
        self._runner = _LoopThread(name=f"provider-llm-{type(provider).__name__}")

    @classmethod
    def class_name(cls) -> str:
        return "ProviderLLM"

    @property
    def provider(self) -> LLMProvider:
        return self._provider

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.context_window,
            num_output=self.num_output,
            is_chat_model=True,
            is_function_calling_model=self._provider.capabilities.tools,
            model_name=str(self._provider.model or type(self._provider).__name__),
        )

    def close(self, *, close_provider: bool = False) -> None:
        """Stop the private loop (closing the provider on it first if asked). Safe to call twice."""
        if close_provider and not self._runner.loop.is_closed():
            self._runner.run(self._provider.aclose())
        self._runner.stop()

    # -- the async core, run on the private loop ------------------------------------------------------------

    async def _answer(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> ChatResponse:
        wire = await asyncio.to_thread(_to_provider_messages, messages)
        answer = await self._provider.achat(wire, **kwargs)
        return ChatResponse(message=_assistant_message(answer.text, answer.tool_calls), raw={"response": answer})

    async def _stream(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> AsyncGenerator[ChatResponse, None]:
        wire = await asyncio.to_thread(_to_provider_messages, messages)
        text = ""
        stream: Any = self._provider.astream(wire, **kwargs)  # str deltas, then maybe a ToolCallsEvent and a UsageEvent
        async with contextlib.aclosing(stream) as items:
            async for item in items:
                if isinstance(item, ToolCallsEvent):
                    yield ChatResponse(message=_assistant_message(text, item.tool_calls), delta="")
                elif isinstance(item, str) and item:
                    text += item
                    yield ChatResponse(message=_assistant_message(text, ()), delta=item)

    # -- chat -------------------------------------------------------------------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._runner.run(self._answer(messages, kwargs))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await self._runner.arun(self._answer(messages, kwargs))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return self._sync_iter(self._stream(messages, kwargs))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        return self._async_iter(self._stream(messages, kwargs))

    # -- complete: one user message -----------------------------------------------------------------------

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return _completion(self.chat(_prompt_messages(prompt, kwargs), **kwargs))

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return _completion(await self.achat(_prompt_messages(prompt, kwargs), **kwargs))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        messages = _prompt_messages(prompt, kwargs)
        return (_completion(r) for r in self._sync_iter(self._stream(messages, kwargs)))

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        messages = _prompt_messages(prompt, kwargs)

        async def gen() -> CompletionResponseAsyncGen:
            async for response in self._async_iter(self._stream(messages, kwargs)):
                yield _completion(response)

        return gen()

    # -- tools (FunctionCallingLLM) ------------------------------------------------------------------------

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[Any],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        if tools and not self._provider.capabilities.tools:
            raise ToolsNotSupportedError(
                f"{type(self._provider).__name__} for {self._provider.model} does not take tools "
                "(for VLLMNativeProvider set tool_parser)"
            )
        messages = list(chat_history or [])
        if user_msg is not None:
            messages.append(ChatMessage(role=MessageRole.USER, content=user_msg) if isinstance(user_msg, str) else user_msg)
        prepared: dict[str, Any] = {"messages": messages, **kwargs}
        if tools:
            prepared["tools"] = [tool.metadata.to_openai_tool() for tool in tools]
            prepared.setdefault("tool_choice", "required" if tool_required else "auto")
        return prepared

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        calls = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
        if not calls and error_on_no_tool_call:
            raise ValueError(f"expected at least one tool call, got none (answer: {response.message.content!r})")
        return [
            ToolSelection(tool_id=c.tool_call_id or "", tool_name=c.tool_name, tool_kwargs=_tool_kwargs(c.tool_kwargs))
            for c in calls
        ]

    # -- bridging the private loop ---------------------------------------------------------------------------

    def _sync_iter(self, agen: AsyncGenerator[T, None]) -> Generator[T, None, None]:
        """Items of an async generator that runs on the private loop, pulled one at a time from this thread."""
        try:
            while True:
                try:
                    yield self._runner.run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:  # the consumer stopped early (or finished): end the provider's stream there, freeing its request
            if not self._runner.loop.is_closed():
                self._runner.run(agen.aclose())

    async def _async_iter(self, agen: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
        try:
            while True:
                try:
                    yield await self._runner.arun(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            if not self._runner.loop.is_closed():
                await self._runner.arun(agen.aclose())


# -- LlamaIndex messages <-> ours ----------------------------------------------------------------------------


def _prompt_messages(prompt: str, kwargs: dict[str, Any]) -> list[ChatMessage]:
    """`complete`'s prompt as one user message; `image_documents`/`images` kwargs (ImageBlocks) go with it."""
    images = list(kwargs.pop("images", None) or []) + list(kwargs.pop("image_documents", None) or [])
    return [ChatMessage(role=MessageRole.USER, blocks=[*images, TextBlock(text=prompt)])]


def _image_source(block: ImageBlock) -> Any:
    """What our messages take as an image: the URL as it is, else the image's bytes (read from `path` if need be)."""
    if block.url is not None and block.image is None:
        return str(block.url)
    try:
        return block.resolve_image(as_base64=False).read()
    except (OSError, ValueError) as exc:
        raise MessageFormatError(f"cannot read the ImageBlock's image: {exc}") from exc


def _to_provider_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """Our chat messages (blocking: reads image files; run in a thread)."""
    out = []
    for message in messages:
        role = message.role.value if isinstance(message.role, MessageRole) else str(message.role)
        if role in ("function", "chatbot", "model"):
            role = {"function": "tool", "chatbot": "assistant", "model": "assistant"}[role]
        entry: dict[str, Any] = {"role": role}
        content: list[dict[str, Any]] = []
        calls: list[dict[str, Any]] = []
        for block in message.blocks:
            if isinstance(block, TextBlock):
                content.append({"type": "text", "text": block.text})
            elif isinstance(block, ImageBlock):
                content.append({"type": "image", "image": _image_source(block)})
            elif isinstance(block, ToolCallBlock):
                arguments = block.tool_kwargs if isinstance(block.tool_kwargs, str) else json.dumps(block.tool_kwargs)
                calls.append(
                    {
                        "id": block.tool_call_id or f"call_{len(calls)}",
                        "type": "function",
                        "function": {"name": block.tool_name, "arguments": arguments},
                    }
                )
            else:
                raise MessageFormatError(f"ProviderLLM cannot send {type(block).__name__} content")
        embeddings = message.additional_kwargs.get(_EMBEDDINGS_KEY)
        if embeddings is not None:
            content.insert(0, {"type": "image_embeds", "image_embeds": embeddings})
        if calls:
            entry["tool_calls"] = calls
        if "tool_call_id" in message.additional_kwargs:
            entry["tool_call_id"] = message.additional_kwargs["tool_call_id"]
        if all(part["type"] == "text" for part in content):
            entry["content"] = "".join(part["text"] for part in content) if content or not calls else None
        else:
            entry["content"] = content
        out.append(entry)
    return out


def _assistant_message(text: str, tool_calls: Sequence[Any]) -> ChatMessage:
    blocks: list[Any] = [TextBlock(text=text)] if text or not tool_calls else []
    blocks += [ToolCallBlock(tool_call_id=c.id, tool_name=c.name, tool_kwargs=c.arguments) for c in tool_calls]
    return ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks)


def _completion(response: ChatResponse) -> CompletionResponse:
    return CompletionResponse(text=response.message.content or "", delta=response.delta, raw=response.raw)


def _tool_kwargs(arguments: dict[str, Any] | str) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments) if arguments else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
