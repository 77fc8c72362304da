"""OpenAICompatibleProvider against a real vLLM OpenAI-compatible server on the tiny LLaVA."""

from __future__ import annotations

import asyncio
import base64
import io

import av
import numpy as np
import pytest
from PIL import Image

from providers import EmbeddingsNotSupportedError, MessageFormatError, OpenAICompatibleProvider, UsageEvent

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(120)]

IMAGE_TOKENS = 16  # the tiny LLaVA: 56 px / patch 14 -> 4 x 4


def _image(seed: int = 0, size=(48, 64)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)


@pytest.fixture
async def llm(vllm_server):
    provider = OpenAICompatibleProvider(
        {"base_url": vllm_server.base_url, "model_name": vllm_server.model, "temperature": 0.0, "max_tokens": 8}
    )
    yield provider
    await provider.aclose()


async def test_openai_compatible_answers_about_ndarray_image(llm, vllm_server):
    with_image = await llm.achat([{"role": "user", "content": {"text": "what is here?", "images": [_image()]}}])
    text_only = await llm.achat([{"role": "user", "content": "what is here?"}])
    assert isinstance(with_image.text, str) and with_image.usage.completion_tokens >= 1
    assert with_image.model == vllm_server.model
    # The image reached the model: its 16 feature tokens (plus the template's newline) are in the prompt.
    assert with_image.usage.prompt_tokens - text_only.usage.prompt_tokens >= IMAGE_TOKENS


async def test_openai_compatible_every_image_form_reaches_the_model(llm):
    array = _image(1)
    png = io.BytesIO()
    Image.fromarray(array).save(png, format="PNG")
    forms = {
        "ndarray": array,
        "pil": Image.fromarray(array),
        "png bytes": png.getvalue(),
        "video frame": av.VideoFrame.from_ndarray(array, format="rgb24"),
        "data url": "data:image/png;base64," + base64.b64encode(png.getvalue()).decode(),
    }
    counts = {}
    for name, image in forms.items():
        response = await llm.achat([{"role": "user", "content": {"text": "describe", "images": [image]}}])
        counts[name] = response.usage.prompt_tokens
    as_list = await llm.achat(
        [{"role": "user", "content": [{"type": "image", "image": array}, {"type": "text", "text": "describe"}]}]
    )
    counts["content list"] = as_list.usage.prompt_tokens
    assert len(set(counts.values())) == 1, counts


async def test_openai_compatible_streams_several_deltas(llm):
    messages = [{"role": "user", "content": {"text": "describe the scene", "images": [_image(2)]}}]
    deltas = [d async for d in llm.astream(messages, max_tokens=12, extra_body={"min_tokens": 6})]
    whole = await llm.achat(messages, max_tokens=12, extra_body={"min_tokens": 6})
    assert len(deltas) >= 2 and all(isinstance(d, str) and d for d in deltas)
    assert "".join(deltas) == whole.text  # temperature 0: the stream is the same answer, in pieces


async def test_openai_compatible_streamed_usage_when_asked(llm):
    """With `stream_options={"include_usage": True}` the server's usage comes last, as a UsageEvent equal to what
    `achat` reports for the same answer; without it the stream is text only."""
    messages = [{"role": "user", "content": {"text": "describe the scene", "images": [_image(3)]}}]
    fixed = {"max_tokens": 12, "extra_body": {"min_tokens": 12}}
    items = [d async for d in llm.astream(messages, stream_options={"include_usage": True}, **fixed)]
    whole = await llm.achat(messages, **fixed)
    plain = [d async for d in llm.astream(messages, **fixed)]
    assert isinstance(items[-1], UsageEvent) and all(isinstance(d, str) for d in items[:-1])
    assert items[-1].usage == whole.usage and whole.usage.completion_tokens == 12
    assert "".join(items[:-1]) == whole.text == "".join(plain) and all(isinstance(d, str) for d in plain)


async def test_openai_compatible_eight_concurrent_requests_all_answered(llm):
    questions = [f"question {i}: what do you see?" for i in range(8)]
    responses = await asyncio.gather(
        *(llm.achat([{"role": "user", "content": {"text": q, "images": [_image(i)]}}]) for i, q in enumerate(questions))
    )
    assert len(responses) == 8
    assert all(r.usage is not None and r.usage.completion_tokens >= 1 for r in responses)


async def test_openai_compatible_refuses_embeddings_naming_native(llm, vllm_server):
    embeddings = np.zeros((1, IMAGE_TOKENS, 64), dtype=np.float32)
    with pytest.raises(EmbeddingsNotSupportedError, match="VLLMNativeProvider"):
        await llm.achat([{"role": "user", "content": {"text": "hi", "image_embeddings": embeddings}}])
    # Nothing was lost: the same provider still answers.
    assert (await llm.achat([{"role": "user", "content": "still there?"}])).usage.completion_tokens >= 1


async def test_openai_compatible_bad_image_is_clear_error(llm):
    with pytest.raises(MessageFormatError, match="image"):
        await llm.achat([{"role": "user", "content": {"text": "hi", "images": [np.zeros((4, 4), dtype=np.float64)]}}])
    with pytest.raises(MessageFormatError, match="URL"):
        await llm.achat([{"role": "user", "content": {"text": "hi", "images": ["/tmp/x.jpg"]}}])
