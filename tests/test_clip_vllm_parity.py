"""ClipEncoder's LLaVA embeddings, fed to the real in-process engine, answer exactly as the raw image does.

This is the promise of the embeddings path: `ClipEncoder.from_llava(path).embed_for_llm(frame)` is what vLLM's
own vision tower and projector make of the frame, so VLLMNativeProvider gives a token-identical answer at
temperature 0. Non-square, detailed images, so that resizing and cropping differences would show.
"""

from __future__ import annotations

import pytest

from tests.pictures import gradient, noise

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(240)]

FULL = {"min_tokens": 16, "max_tokens": 16}


@pytest.fixture(scope="module")
def clip_encoder(tiny_llava_path):
    from encoders import ClipEncoder

    encoder = ClipEncoder.from_llava(tiny_llava_path)
    yield encoder
    encoder.close()


def _ask(content: dict) -> list[dict]:
    return [{"role": "user", "content": {"text": "what is in the picture?", **content}}]


@pytest.mark.parametrize(
    "image",
    [noise(120, 200, 0), noise(300, 90, 1), gradient(77, 161), noise(720, 1280, 2)],
    ids=["noise-120x200", "noise-300x90", "gradient-77x161", "noise-720x1280"],
)
async def test_clip_embeddings_give_raw_image_answer_through_native_vllm(native_provider, clip_encoder, image):
    embeddings = await clip_encoder.aembed_for_llm(image)
    assert tuple(embeddings.shape) == (1, 16, 64)
    from_image = await native_provider.achat(_ask({"images": [image]}), **FULL)
    from_clip = await native_provider.achat(_ask({"image_embeddings": embeddings}), **FULL)
    assert len(from_image.token_ids) == 16
    assert from_clip.token_ids == from_image.token_ids


async def test_clip_embeddings_of_another_image_change_the_answer(native_provider, clip_encoder):
    # The comparison above could pass if the engine ignored the image; here different pictures must differ.
    a, b = noise(120, 200, 10), gradient(120, 200)
    answers = [
        (await native_provider.achat(_ask({"image_embeddings": await clip_encoder.aembed_for_llm(img)}), **FULL)).token_ids
        for img in (a, b)
    ]
    assert answers[0] != answers[1]
