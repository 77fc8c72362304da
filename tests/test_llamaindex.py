"""`providers.llamaindex.ProviderLLM`: our providers as a LlamaIndex LLM, against the real vLLM server and the
in-process engine on the tiny LLaVA. Answers of a random model: token ids and prompt-token counts are compared,
never wording.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.base.llms.types import ChatMessage, ImageBlock, MessageRole, TextBlock
from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.tools import FunctionTool

from providers.llamaindex import ProviderLLM

FULL = {"min_tokens": 8, "max_tokens": 8}
FORCE_CALL = {"structured_outputs": {"regex": r"\[get_weather\(city='(Paris|Rome)'\)\]"}, "max_tokens": 40}


def _image(seed: int, height: int = 90, width: int = 150) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")  # lossless: every form carries the same pixels
    return buffer.getvalue()


def _ask(*blocks, **extra) -> list[ChatMessage]:
    return [ChatMessage(role=MessageRole.USER, blocks=[*blocks, TextBlock(text="what is in the picture?")], **extra)]


def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def test_llamaindex_module_not_imported_by_providers():
    code = "import sys, providers; assert 'llama_index' not in sys.modules and 'providers.llamaindex' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# -- the in-process engine ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def native_llm(native_provider):
    llm = ProviderLLM(provider=native_provider)
    yield llm
    llm.close()  # the session's engine stays open


@pytest.mark.vllm
@pytest.mark.timeout(240)
async def test_provider_llm_image_blocks_answer_as_the_provider_does(native_llm, native_provider, tmp_path):
    from aiohttp import web

    array = _image(1)
    png = _png(array)
    path = tmp_path / "frame.png"
    path.write_bytes(png)
    app = web.Application()
    app.router.add_get("/frame.png", lambda request: web.Response(body=png, content_type="image/png"))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        expected = await native_provider.achat(
            [{"role": "user", "content": {"text": "what is in the picture?", "images": [array]}}], **FULL
        )
        # Sync calls from inside a running loop (this test's): they run on ProviderLLM's own loop.
        by_bytes = native_llm.chat(_ask(ImageBlock(image=png)), **FULL)
        by_path = native_llm.chat(_ask(ImageBlock(path=path)), **FULL)
        by_url = await native_llm.achat(_ask(ImageBlock(url=f"http://127.0.0.1:{port}/frame.png")), **FULL)
    finally:
        await runner.cleanup()
    for response in (by_bytes, by_path, by_url):
        assert response.raw["response"].token_ids == expected.token_ids
        assert response.message.role == MessageRole.ASSISTANT


@pytest.mark.vllm
@pytest.mark.timeout(240)
async def test_provider_llm_passes_precomputed_embeddings_to_native_engine(native_llm, native_provider, tiny_llava_path):
    from encoders import encoder_for

    array = _image(2)
    with encoder_for(tiny_llava_path) as encoder:
        embeddings = encoder.embed_for_llm(array)
    from_image = native_llm.chat(_ask(ImageBlock(image=_png(array))), **FULL)
    from_embeddings = await native_llm.achat(_ask(additional_kwargs={"image_embeddings": embeddings}), **FULL)
    text_only = native_llm.chat([ChatMessage(role=MessageRole.USER, content="what is in the picture?")], **FULL)
    assert from_embeddings.raw["response"].token_ids == from_image.raw["response"].token_ids
    assert from_image.raw["response"].usage.prompt_tokens > text_only.raw["response"].usage.prompt_tokens


@pytest.mark.vllm
@pytest.mark.timeout(240)
async def test_provider_llm_simple_chat_engine_answers_over_an_image(native_llm):
    engine = SimpleChatEngine.from_defaults(
        llm=native_llm, chat_history=_ask(ImageBlock(image=_png(_image(3))))
    )
    answer = engine.chat("and the colours?")
    assert isinstance(answer.response, str) and answer.response.strip()
    streamed = await engine.astream_chat("anything else?")
    deltas = [d async for d in streamed.async_response_gen()]
    assert deltas and "".join(deltas).strip() == streamed.response.strip()  # LlamaIndex strips the whole answer


@pytest.mark.vllm
@pytest.mark.timeout(240)
async def test_provider_llm_streams_match_the_whole_answer(native_llm):
    messages = _ask(ImageBlock(image=_png(_image(4))))
    whole = native_llm.chat(messages, **FULL)
    chunks = list(native_llm.stream_chat(messages, **FULL))
    assert chunks[-1].message.content == whole.message.content
    assert "".join(c.delta for c in chunks) == whole.message.content
    async_chunks = [c async for c in await native_llm.astream_chat(messages, **FULL)]
    assert async_chunks[-1].message.content == whole.message.content
    completions = [c async for c in await native_llm.astream_complete("hello", **FULL)]
    assert completions[-1].text == (await native_llm.acomplete("hello", **FULL)).text


@pytest.mark.vllm
@pytest.mark.timeout(240)
async def test_provider_llm_tool_calling_through_function_calling_interface(native_llm):
    tool = FunctionTool.from_defaults(fn=get_weather)
    assert native_llm.metadata.is_function_calling_model
    response = native_llm.chat_with_tools([tool], user_msg="weather?", **FORCE_CALL)
    [selection] = native_llm.get_tool_calls_from_response(response)
    assert selection.tool_name == "get_weather" and selection.tool_kwargs["city"] in ("Paris", "Rome")
    called = await native_llm.apredict_and_call([tool], user_msg="weather?", **FORCE_CALL)
    assert called.response == f"sunny in {selection.tool_kwargs['city']}"
    streamed = [r async for r in await native_llm.astream_chat_with_tools([tool], user_msg="weather?", **FORCE_CALL)]
    assert [s.tool_name for s in native_llm.get_tool_calls_from_response(streamed[-1])] == ["get_weather"]


# -- the vLLM server, from plain code (no loop anywhere in this thread) ----------------------------------------


@pytest.mark.vllm
@pytest.mark.timeout(240)
def test_provider_llm_over_vllm_server_from_plain_code(vllm_server, tmp_path):
    from providers import VLLMProvider

    path = tmp_path / "frame.png"
    path.write_bytes(_png(_image(5)))
    llm = ProviderLLM(provider=VLLMProvider({"vllm_base_url": vllm_server.base_url, "temperature": 0}))
    try:
        first = llm.complete("hello", max_tokens=8)
        again = llm.complete("hello", max_tokens=8)  # usable again and again
        assert first.text == again.text
        streamed = list(llm.stream_complete("hello", max_tokens=8))
        assert streamed[-1].text == first.text
        with_image = llm.chat(_ask(ImageBlock(path=path)), max_tokens=8)
        without = llm.chat([ChatMessage(role=MessageRole.USER, content="what is in the picture?")], max_tokens=8)
        added = with_image.raw["response"].usage.prompt_tokens - without.raw["response"].usage.prompt_tokens
        assert added >= 16  # the image reached the model (16 feature tokens plus its placeholder text)
        assert asyncio.run(llm.acomplete("hello", max_tokens=8)).text == first.text  # a loop of the caller's own
    finally:
        llm.close(close_provider=True)
    llm.close()  # twice is fine
