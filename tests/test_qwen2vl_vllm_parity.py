"""Qwen2-VL, the second family of the embeddings path: raw images, Hugging Face's own image features and our
`encoder_for(path).embed_for_llm` embeddings give token-identical answers through VLLMNativeProvider at
temperature 0, on non-square images of several sizes (each keeps its aspect ratio, so each has its own grid).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.pictures import gradient, noise

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(300)]

FULL = {"min_tokens": 16, "max_tokens": 16}


IMAGES = [noise(60, 100, 0), noise(300, 90, 1), gradient(77, 161), noise(720, 1280, 2)]
IDS = ["noise-60x100", "noise-300x90", "gradient-77x161", "noise-720x1280"]


@pytest.fixture(scope="module")
def qwen_encoder(tiny_qwen2vl_path):
    from encoders import encoder_for

    encoder = encoder_for(tiny_qwen2vl_path)
    yield encoder
    encoder.close()


@pytest.fixture(scope="module")
def hf_image_features(tiny_qwen2vl_path):
    """Hugging Face's own path: the checkpoint's processor and the full model's `get_image_features`."""
    import torch
    from PIL import Image
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_qwen2vl_path).eval()
    processor = AutoProcessor.from_pretrained(tiny_qwen2vl_path)

    def features(images: list[np.ndarray]) -> dict:
        inputs = processor.image_processor(images=[Image.fromarray(i) for i in images], return_tensors="pt")
        with torch.no_grad():
            out = model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
        return {"image_embeds": torch.cat(list(out.pooler_output)), "image_grid_thw": inputs["image_grid_thw"]}

    return features


def _ask(content: dict) -> list[dict]:
    return [{"role": "user", "content": {"text": "what is in the picture?", **content}}]


@pytest.mark.parametrize("image", IMAGES, ids=IDS)
async def test_qwen2vl_embeddings_give_raw_image_answer_through_native_vllm(
    qwen2vl_native_provider, qwen_encoder, hf_image_features, image
):
    ours = await qwen_encoder.aembed_for_llm(image)
    hf = hf_image_features([image])
    assert ours["image_grid_thw"].tolist() == hf["image_grid_thw"].tolist()
    assert ours["image_embeds"].shape == hf["image_embeds"].shape and ours["image_embeds"].shape[-1] == 64
    from_image = await qwen2vl_native_provider.achat(_ask({"images": [image]}), **FULL)
    from_hf = await qwen2vl_native_provider.achat(_ask({"image_embeddings": hf}), **FULL)
    from_ours = await qwen2vl_native_provider.achat(_ask({"image_embeddings": ours}), **FULL)
    assert len(from_image.token_ids) == 16
    assert from_hf.token_ids == from_image.token_ids
    assert from_ours.token_ids == from_image.token_ids


async def test_qwen2vl_two_images_of_different_sizes_in_one_request(qwen2vl_native_provider, qwen_encoder):
    images = [IMAGES[0], IMAGES[1]]
    ours = qwen_encoder.embed_for_llm(images)
    assert ours["image_grid_thw"].shape == (2, 3)
    from_image = await qwen2vl_native_provider.achat(_ask({"images": images}), **FULL)
    from_ours = await qwen2vl_native_provider.achat(_ask({"image_embeddings": ours}), **FULL)
    assert from_ours.token_ids == from_image.token_ids


async def test_qwen2vl_embeddings_of_another_image_change_the_answer(qwen2vl_native_provider, qwen_encoder):
    # The comparisons above could pass if the engine ignored the image; here different pictures must differ.
    answers = [
        (await qwen2vl_native_provider.achat(_ask({"image_embeddings": qwen_encoder.embed_for_llm(img)}), **FULL)).token_ids
        for img in (noise(60, 100, 10), gradient(60, 100))
    ]
    assert answers[0] != answers[1]


async def test_qwen2vl_embeddings_refused_clearly_when_grid_and_tokens_disagree(qwen2vl_native_provider, qwen_encoder):
    from providers import EmbeddingShapeError

    ours = qwen_encoder.embed_for_llm(IMAGES[0])
    with pytest.raises(EmbeddingShapeError, match="image_grid_thw"):
        await qwen2vl_native_provider.achat(_ask({"image_embeddings": {**ours, "image_embeds": ours["image_embeds"][:-1]}}))
    with pytest.raises(EmbeddingShapeError, match="image_grid_thw"):
        await qwen2vl_native_provider.achat(_ask({"image_embeddings": ours["image_embeds"][None]}))  # LLaVA's form
    still = await qwen2vl_native_provider.achat(_ask({"image_embeddings": ours}), **FULL)
    assert len(still.token_ids) == 16
