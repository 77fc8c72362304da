"""`encoders.encoder_for`: one entry point from a model folder to its family's embeddings encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest

import encoders
from encoders import CheckpointError, UnsupportedModelFamilyError, encoder_for


def test_encoder_for_refuses_unknown_family_naming_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mllama"}))
    with pytest.raises(UnsupportedModelFamilyError) as info:
        encoder_for(tmp_path)
    message = str(info.value)
    assert "'mllama'" in message and "llava" in message and "qwen2_vl" in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, encoders.EncoderError)


def test_encoder_for_refuses_folder_without_config(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        encoder_for(tmp_path / "missing")


def test_encoder_for_llava_is_clip_encoder_from_llava(tiny_llava_path):
    pytest.importorskip("open_clip")
    import torch

    image = np.random.default_rng(3).integers(0, 256, size=(90, 150, 3), dtype=np.uint8)
    with encoder_for(tiny_llava_path) as picked, encoders.ClipEncoder.from_llava(tiny_llava_path) as direct:
        assert isinstance(picked, encoders.ClipEncoder)
        assert torch.equal(picked.embed_for_llm(image), direct.embed_for_llm(image))


def test_encoder_for_qwen2vl_gives_grid_form(tiny_qwen2vl_path):
    pytest.importorskip("transformers")
    image = np.random.default_rng(4).integers(0, 256, size=(60, 100, 3), dtype=np.uint8)
    encoder = encoder_for(tiny_qwen2vl_path)
    assert isinstance(encoder, encoders.Qwen2VLEncoder)
    out = encoder.embed_for_llm([image, image[:, :50]])
    assert out["image_grid_thw"].tolist() == [[1, 4, 8], [1, 4, 4]]
    assert tuple(out["image_embeds"].shape) == (8 + 4, 64)
    assert encoder.tokens_per_image(out["image_grid_thw"]) == [8, 4]


def test_qwen2vl_encoder_cache_reuses_same_frame_but_not_another_size(tiny_qwen2vl_path):
    pytest.importorskip("transformers")
    import torch

    cache = encoders.EmbeddingCache()
    cached = encoder_for(tiny_qwen2vl_path, cache=cache)
    plain = encoder_for(tiny_qwen2vl_path)
    wide, tall = np.zeros((60, 100, 3), np.uint8), np.zeros((300, 90, 3), np.uint8)  # the same grey thumbnail
    first = cached.embed_for_llm([wide, tall])
    again = cached.embed_for_llm([tall, wide])
    assert cache.stats().hits == 2
    assert again["image_grid_thw"].tolist() == [[1, 14, 4], [1, 4, 8]]
    expected = plain.embed_for_llm([tall, wide])
    assert torch.equal(again["image_embeds"], expected["image_embeds"])
    assert torch.equal(first["image_embeds"], plain.embed_for_llm([wide, tall])["image_embeds"])
