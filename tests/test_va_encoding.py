"""visual_agent.encoding.FrameEncoding: the JPEG-or-embeddings choice, the older spellings, and the CLIP cache."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from providers import create_provider
from visual_agent import ConfigError, EmbeddingsMode, EncoderConfig, FrameEncoding, parse_config
from visual_agent.daemon import Daemon
from visual_agent.sampling import TakenFrame


def http_llm():
    return create_provider({"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model_name": "m"})


def native_llm(path, embeds=True):
    return create_provider({"provider": "vllm_native", "model_name": str(path), "enable_mm_embeds": embeds})


def still_frames(n=1, seed=0):
    """Frames of one static scene (the same picture each time), as a camera pointed at an empty room gives."""
    picture = np.random.default_rng(seed).integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
    return [TakenFrame(picture.copy(), pts=i, age_s=0.0, seq=i) for i in range(n)]


def test_encoding_http_provider_gets_jpeg_with_the_config_size():
    enc = FrameEncoding.from_config(EncoderConfig(jpeg_max_side=64, jpeg_quality=40), http_llm())
    assert not enc.uses_embeddings and enc.jpeg_encoder is not None
    assert enc.jpeg_encoder.config.max_side == 64 and enc.jpeg_encoder.config.quality == 40


def test_encoding_clip_mode_refused_for_a_provider_without_embeddings():
    with pytest.raises(ValueError, match="vllm_native"):
        FrameEncoding.from_config(EncoderConfig(embeddings="clip"), http_llm())


def test_encoding_auto_picks_embeddings_only_when_the_provider_takes_them(tmp_path):
    assert FrameEncoding(native_llm(tmp_path)).uses_embeddings
    assert not FrameEncoding(native_llm(tmp_path, embeds=False)).uses_embeddings
    assert not FrameEncoding(native_llm(tmp_path), mode="off").uses_embeddings


def test_encoding_config_reads_the_older_value_spelling():
    """`encoder.embeddings: jpeg` in a user's file still means off (config values are an interface)."""
    cfg = parse_config({"encoder": {"embeddings": "jpeg"}}, environ={})
    assert cfg.encoder.embeddings is EmbeddingsMode.OFF


async def test_encoding_jpeg_content_is_image_url_parts():
    enc = FrameEncoding(http_llm(), config=EncoderConfig(jpeg_max_side=32))
    content = await enc.content("what is it?", still_frames(2), "cam")
    assert content[0] == {"type": "text", "text": "what is it?"} and len(content) == 3
    url = content[1]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,") and base64.b64decode(url.split(",", 1)[1])[:2] == b"\xff\xd8"
    await enc.aclose()


async def test_encoding_clip_cache_hits_on_a_static_scene(tiny_llava_path):
    pytest.importorskip("open_clip")
    enc = FrameEncoding(native_llm(tiny_llava_path), config=EncoderConfig(cache_entries=4))
    try:
        first = await enc.content("q", still_frames(1, seed=1), "cam")
        again = await enc.content("q", [TakenFrame(still_frames(1, seed=1)[0].frame, 9, 0.0, 9)], "cam")
        other = await enc.content("q", still_frames(1, seed=2), "cam")
        stats = enc.cache_stats()
    finally:
        await enc.aclose()
    assert tuple(first["image_embeddings"].shape) == (1, 16, 64)
    assert (again["image_embeddings"] == first["image_embeddings"]).all()
    assert (stats.hits, stats.misses) == (1, 2), stats  # the new frame of the same scene was not encoded again
    assert not (other["image_embeddings"] == first["image_embeddings"]).all()


async def test_encoding_clip_cache_off_with_zero_entries(tiny_llava_path):
    pytest.importorskip("open_clip")
    enc = FrameEncoding(native_llm(tiny_llava_path), config=EncoderConfig(cache_entries=0))
    try:
        await enc.content("q", still_frames(1), "cam")
        assert enc.embedder is not None and enc.embedder.cache is None and enc.cache_stats() is None
    finally:
        await enc.aclose()


def unsupported_folder(tmp_path, model_type="mllama"):
    folder = tmp_path / model_type
    folder.mkdir()
    (folder / "config.json").write_text(f'{{"model_type": "{model_type}"}}')
    return folder


def test_encoding_refuses_a_model_family_without_an_encoder_at_construction(tmp_path):
    from encoders import UnsupportedModelFamilyError
    from visual_agent import VisualAgent

    llm = native_llm(unsupported_folder(tmp_path))
    for build in (lambda: FrameEncoding(llm), lambda: FrameEncoding(llm, mode="clip"), lambda: VisualAgent(llm=llm)):
        with pytest.raises(UnsupportedModelFamilyError, match="'mllama'") as refused:
            build()
        assert "llava" in str(refused.value) and "qwen2_vl" in str(refused.value)
    # Frames as JPEG, or the caller's own embedding function: nothing of ours has to encode that family.
    assert not FrameEncoding(llm, mode="off").uses_embeddings

    async def own(frames):
        return frames

    assert FrameEncoding(llm, embedding_function=own).embedding_function is own


async def test_encoding_qwen2vl_dict_embeddings_and_cache_on_a_static_scene(tiny_qwen2vl_path):
    pytest.importorskip("transformers")
    import torch

    from encoders import Qwen2VLEncoder

    enc = FrameEncoding(native_llm(tiny_qwen2vl_path), config=EncoderConfig(cache_entries=4))
    try:
        first = await enc.content("q", still_frames(1, seed=1), "cam")
        again = await enc.content("q", [TakenFrame(f.frame, 9 + f.seq, 0.0, 9 + f.seq) for f in still_frames(2, seed=1)], "cam")
        stats = enc.cache_stats()
    finally:
        await enc.aclose()
    assert isinstance(enc.embedder, Qwen2VLEncoder)
    embeds, twice = first["image_embeddings"], again["image_embeddings"]
    assert set(embeds) == {"image_embeds", "image_grid_thw"} and tuple(twice["image_grid_thw"].shape) == (2, 3)
    assert embeds["image_embeds"].shape[-1] == enc.embedder.lm_hidden_size
    assert (twice["image_embeds"] == torch.cat([embeds["image_embeds"]] * 2)).all()
    assert (stats.hits, stats.misses) == (2, 1), stats  # one scene, encoded once


async def test_daemon_refuses_a_model_family_without_an_encoder_at_start(tmp_path):
    """A model folder of a family no encoder computes stops `Daemon.start` with the supported families named."""
    folder = tmp_path / "mllama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "mllama"}))
    config = parse_config({"mqtt": {"enabled": False}, "webrtc": {"host": "127.0.0.1", "port": 0},
                           "llm": {"provider": "vllm_native", "model_name": str(folder), "enable_mm_embeds": True}},
                          environ={})
    daemon = Daemon(config)
    with pytest.raises(ConfigError, match="mllama") as refused:
        await daemon.start()
    assert "llava" in str(refused.value) and "qwen2_vl" in str(refused.value) and "encoder.embeddings: off" in str(refused.value)
    assert daemon.agent is None
    await daemon.close()
