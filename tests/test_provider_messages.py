"""providers.messages: every content form read into one shape, bad input refused with a clear error."""

from __future__ import annotations

import base64
import io

import av
import numpy as np
import pytest
from PIL import Image

from encoders import JpegEncoder
from providers import EmbeddingsNotSupportedError, MessageFormatError
from providers.messages import image_mime, load_image, normalize_messages, to_openai_messages

ENCODER = JpegEncoder(max_side=64)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_messages_seed_dict_puts_images_before_text():
    array = np.full((32, 48, 3), 200, dtype=np.uint8)
    wire = await to_openai_messages(
        normalize_messages([{"role": "user", "content": {"text": "what?", "images": [array, _png(array)]}}]),
        encoder=ENCODER,
        provider_name="P",
    )
    parts = wire[0]["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"] and parts[2]["text"] == "what?"
    assert parts[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")  # bytes keep their own type


async def test_messages_every_image_form_becomes_a_url():
    array = np.zeros((20, 30, 3), dtype=np.uint8)
    forms = [
        array,
        Image.fromarray(array),
        av.VideoFrame.from_ndarray(array, format="rgb24"),
        _png(array),
        "data:image/png;base64," + base64.b64encode(_png(array)).decode(),
        "https://example.org/frame.jpg",
    ]
    content = [{"type": "image", "image": f} for f in forms] + [{"type": "text", "text": "hi"}]
    wire = await to_openai_messages(normalize_messages([{"role": "user", "content": content}]), encoder=ENCODER, provider_name="P")
    urls = [p["image_url"]["url"] for p in wire[0]["content"][:-1]]
    assert urls[-1] == "https://example.org/frame.jpg" and urls[-2] == forms[-2]
    for url in urls[:4]:
        mime = url.split(";")[0].removeprefix("data:")
        decoded = base64.b64decode(url.split(",", 1)[1])
        assert image_mime(decoded[:16]) == mime
        assert load_image(url).size == (30, 20)


async def test_messages_pass_through_other_fields_and_parts():
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]},
    ]
    wire = await to_openai_messages(normalize_messages(messages), encoder=ENCODER, provider_name="P")
    assert wire == messages


@pytest.mark.parametrize(
    ("messages", "phrase"),
    [
        ([], "empty"),
        ("hello", "list"),
        ([{"role": "robot", "content": "x"}], "role"),
        ([{"role": "user", "content": 5}], "content"),
        ([{"role": "user", "content": {"text": "x", "imgs": []}}], "imgs"),
        ([{"role": "user", "content": {"text": "x", "images": [b"not an image"]}}], "JPEG, PNG"),
        ([{"role": "user", "content": {"text": "x", "images": ["frame.jpg"]}}], "URL"),
        ([{"role": "user", "content": {"text": "x", "images": [None]}}], "None"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "image_url.url"),
        ([{"role": "user", "content": [{"text": "no type"}]}], "type"),
    ],
)
def test_messages_bad_input_is_clear_error(messages, phrase):
    with pytest.raises(MessageFormatError, match=phrase):
        normalize_messages(messages)


async def test_messages_embeddings_refused_for_http_naming_native():
    messages = normalize_messages([{"role": "user", "content": {"text": "x", "image_embeddings": np.zeros((1, 16, 64))}}])
    with pytest.raises(EmbeddingsNotSupportedError, match="VLLMNativeProvider"):
        await to_openai_messages(messages, encoder=ENCODER, provider_name="OpenAICompatibleProvider")


async def test_messages_unencodable_image_is_clear_error():
    messages = normalize_messages([{"role": "user", "content": {"text": "x", "images": [np.zeros((4, 4, 3), dtype=np.float32)]}}])
    with pytest.raises(MessageFormatError, match="uint8"):
        await to_openai_messages(messages, encoder=ENCODER, provider_name="P")


def test_embedding_shape_checks_without_an_engine():
    import torch

    from providers import EmbeddingShapeError
    from providers.embeddings import EmbeddingShape

    shape = EmbeddingShape(model="tiny", lm_hidden=64, image_tokens=16, dtype=torch.float32)
    ok = shape.check(shape.split(np.zeros((2, 16, 64), dtype=np.float16)))
    assert tuple(ok.shape) == (2, 16, 64) and ok.dtype == torch.float32
    mixed = shape.check(shape.split([torch.zeros(16, 64), torch.ones(16, 64, dtype=torch.bfloat16)]))
    assert tuple(mixed.shape) == (2, 16, 64)
    for bad, phrase in [
        (torch.zeros(1, 16, 32), "hidden size 32"),
        (torch.zeros(1, 15, 64), "15 tokens"),
        (torch.zeros(1, 16, 64, dtype=torch.int64), "float"),
        (torch.full((1, 16, 64), float("inf")), "infinite"),
    ]:
        with pytest.raises(EmbeddingShapeError, match=phrase):
            shape.check(shape.split(bad))
    for bad, phrase in [(torch.zeros(16, 64), "embeddings\\[None\\]"), ([torch.zeros(1, 16, 64)], "2-D"), ("x", "str")]:
        with pytest.raises(EmbeddingShapeError, match=phrase):
            shape.split(bad)
