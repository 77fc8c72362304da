"""ClipEncoder: parity with Hugging Face LLaVA on the tiny checkpoint, open_clip models, inputs, errors, async batching."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch", reason="ClipEncoder needs torch (the clip extra)")
open_clip = pytest.importorskip("open_clip", reason="ClipEncoder needs open_clip (the clip extra)")

from encoders import (  # noqa: E402
    CheckpointError,
    ClipEncoder,
    EmbeddingCache,
    EncoderError,
    ImageInputError,
    UnsupportedVisionConfigError,
)
from tests.loop_probe import loop_gaps

PARITY_ATOL = 1e-4
pytestmark = pytest.mark.timeout(120)  # the async tests wait on a worker thread: fail rather than hang


def noise(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def gradient(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([255 * x / (w - 1), 255 * y / (h - 1), 127 + 120 * np.sin(x / 7.0 + y / 11.0)], axis=-1)
    return np.clip(img, 0, 255).astype(np.uint8)


def detailed_images() -> list[np.ndarray]:
    """Non-square, detailed images where resize differences show (not flat colours)."""
    return [noise(120, 200, 0), gradient(300, 90), noise(77, 61, 1), gradient(720, 1280), noise(56, 56, 2)]


def hf_llava(path: Path):
    transformers = pytest.importorskip("transformers", reason="parity needs transformers")
    model = transformers.LlavaForConditionalGeneration.from_pretrained(path).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(path)
    return model, processor


def hf_image_features(model, processor, images) -> torch.Tensor:
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model.get_image_features(pixel_values=pixel_values)
    # transformers 5.x: a BaseModelOutputWithPooling whose pooler_output is a list of per-image features
    features = out.pooler_output if hasattr(out, "pooler_output") else out
    return torch.stack(list(features))


@pytest.fixture(scope="module")
def llava_encoder(tiny_llava_path):
    with ClipEncoder.from_llava(tiny_llava_path) as enc:
        yield enc


@pytest.fixture(scope="module")
def hf_tiny(tiny_llava_path):
    return hf_llava(tiny_llava_path)


# ---- parity with Hugging Face -------------------------------------------------------------------------


def test_clip_encoder_embed_for_llm_matches_hf_get_image_features(llava_encoder, hf_tiny):
    model, processor = hf_tiny
    images = detailed_images()
    ours = llava_encoder.embed_for_llm(images)
    ref = hf_image_features(model, processor, images)
    assert ours.shape == ref.shape == (len(images), 16, 64)
    assert ours.dtype == torch.float32
    err = (ours - ref).abs().max().item()
    assert err < PARITY_ATOL, err
    # the tolerance is meaningful: one grey level on the input moves the output far more than it
    brighter = [np.clip(i.astype(np.int16) + 1, 0, 255).astype(np.uint8) for i in images]
    assert (llava_encoder.embed_for_llm(brighter) - ref).abs().max().item() > 10 * PARITY_ATOL


def test_clip_encoder_embed_for_llm_parity_for_video_frames_and_pil(llava_encoder, hf_tiny):
    model, processor = hf_tiny
    rgb = gradient(240, 320) ^ noise(240, 320, 3) // 8
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    decoded_rgb = frame.to_ndarray(format="rgb24")  # what the frame holds after 4:2:0
    ref = hf_image_features(model, processor, [decoded_rgb])
    assert (llava_encoder.embed_for_llm(frame) - ref).abs().max().item() < PARITY_ATOL
    pil = Image.fromarray(rgb)
    ref_pil = hf_image_features(model, processor, [pil])
    assert (llava_encoder.embed_for_llm(pil) - ref_pil).abs().max().item() < PARITY_ATOL
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    assert (llava_encoder.embed_for_llm(bgr, channel_order="bgr") - ref_pil).abs().max().item() < PARITY_ATOL


def test_clip_encoder_embed_matches_hf_pooled_output(llava_encoder, hf_tiny):
    model, processor = hf_tiny
    images = detailed_images()[:3]
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    assert (llava_encoder.pixel_values(images) - pixel_values).abs().max().item() == 0.0
    with torch.no_grad():
        pooled = model.model.vision_tower(pixel_values).pooler_output
    ours = llava_encoder.embed(images)
    assert ours.shape == (3, 32)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(3), atol=1e-6)
    assert (ours - torch.nn.functional.normalize(pooled, dim=-1)).abs().max().item() < PARITY_ATOL


def test_clip_encoder_from_llava_shapes(llava_encoder):
    assert llava_encoder.image_tokens == 16 and llava_encoder.lm_hidden_size == 64
    assert llava_encoder.embed_dim == 32
    out = llava_encoder.embed_for_llm(noise(50, 70, 4))  # a single frame is a batch of one
    assert out.shape == (1, 16, 64)


@pytest.fixture(scope="module")
def variant_llava(tmp_path_factory):
    """A second tiny LLaVA saved by transformers 5.x itself (its own key layout, preprocessor_config.json),
    with a two-layer feature pool, the 'full' strategy, erf-GELU vision MLPs and a ReLU projector."""
    transformers = pytest.importorskip("transformers", reason="building a LLaVA needs transformers")
    torch.manual_seed(1)
    config = transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(
            hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
            image_size=42, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-6,
        ),
        text_config=transformers.LlamaConfig(
            hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=2, vocab_size=64,
        ),
        image_token_index=5,
        vision_feature_layer=[-3, -1],
        vision_feature_select_strategy="full",
        projector_hidden_act="relu",
    )
    model = transformers.LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path_factory.mktemp("variant-llava")
    model.save_pretrained(path)
    transformers.CLIPImageProcessor(
        size={"shortest_edge": 42}, crop_size={"height": 42, "width": 42}, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.3, 0.25]
    ).save_pretrained(path)
    return path


def test_clip_encoder_parity_on_transformers_layout_multi_layer_full(variant_llava):
    model, processor = hf_llava(variant_llava)
    images = detailed_images()
    with ClipEncoder.from_llava(variant_llava) as enc:
        assert enc.checkpoint.feature_layers == (-3, -1) and enc.image_tokens == 10
        ours = enc.embed_for_llm(images)
    ref = hf_image_features(model, processor, images)
    assert ours.shape == ref.shape == (len(images), 10, 64)
    assert (ours - ref).abs().max().item() < PARITY_ATOL


def test_clip_encoder_output_dtype_follows_checkpoint_or_override(tiny_llava_path, llava_encoder):
    with ClipEncoder.from_llava(tiny_llava_path, output_dtype=torch.bfloat16) as enc:
        out = enc.embed_for_llm(noise(60, 80, 5))
    assert out.dtype == torch.bfloat16
    ref = llava_encoder.embed_for_llm(noise(60, 80, 5))
    assert (out.float() - ref).abs().max().item() < 1e-2


def test_clip_encoder_bfloat16_compute(tiny_llava_path, llava_encoder):
    img = gradient(90, 120)
    with ClipEncoder.from_llava(tiny_llava_path, dtype=torch.bfloat16) as enc:
        out = enc.embed_for_llm(img)
    assert out.dtype == torch.float32  # the checkpoint's dtype, whatever the compute dtype
    ref = llava_encoder.embed_for_llm(img)
    assert (out - ref).abs().max().item() < 0.05 * ref.abs().max().item()


# ---- checkpoint errors ----------------------------------------------------------------------------------


def copy_checkpoint(src: Path, dst: Path, edit=None) -> Path:
    shutil.copytree(src, dst)
    if edit:
        cfg = json.loads((dst / "config.json").read_text())
        edit(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_clip_encoder_from_llava_rejects_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not a folder"):
        ClipEncoder.from_llava(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="config.json"):
        ClipEncoder.from_llava(tmp_path)


def test_clip_encoder_from_llava_rejects_non_llava(tiny_llava_path, tmp_path):
    def make_clip(cfg):
        cfg["model_type"] = "clip"
        cfg["architectures"] = ["CLIPModel"]

    path = copy_checkpoint(tiny_llava_path, tmp_path / "clip", make_clip)
    with pytest.raises(CheckpointError, match="not a LLaVA checkpoint"):
        ClipEncoder.from_llava(path)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("hidden_act", "relu", "vision_config.hidden_act"),
        ("num_attention_heads", 3, "num_attention_heads"),
        ("model_type", "siglip_vision_model", "vision_config.model_type"),
        ("patch_size", 15, "image_size=56 is not a multiple of patch_size=15"),
    ],
)
def test_clip_encoder_from_llava_names_unsupported_vision_field(tiny_llava_path, tmp_path, field, value, match):
    path = copy_checkpoint(tiny_llava_path, tmp_path / "bad", lambda cfg: cfg["vision_config"].__setitem__(field, value))
    with pytest.raises(UnsupportedVisionConfigError, match=match):
        ClipEncoder.from_llava(path)


def test_clip_encoder_from_llava_rejects_bad_feature_settings(tiny_llava_path, tmp_path):
    path = copy_checkpoint(tiny_llava_path, tmp_path / "a", lambda c: c.__setitem__("vision_feature_layer", -7))
    with pytest.raises(UnsupportedVisionConfigError, match="vision_feature_layer"):
        ClipEncoder.from_llava(path)
    path = copy_checkpoint(tiny_llava_path, tmp_path / "b", lambda c: c.__setitem__("vision_feature_select_strategy", "pool"))
    with pytest.raises(UnsupportedVisionConfigError, match="vision_feature_select_strategy"):
        ClipEncoder.from_llava(path)


def test_clip_encoder_from_llava_rejects_weights_that_do_not_fit(tiny_llava_path, tmp_path):
    path = copy_checkpoint(tiny_llava_path, tmp_path / "w", lambda c: c["text_config"].__setitem__("hidden_size", 128))
    with pytest.raises(CheckpointError, match="multi_modal_projector"):
        ClipEncoder.from_llava(path)
    path = copy_checkpoint(tiny_llava_path, tmp_path / "l", lambda c: c["vision_config"].__setitem__("num_hidden_layers", 3))
    with pytest.raises(CheckpointError, match="encoder.layers.2"):
        ClipEncoder.from_llava(path)


def test_clip_encoder_from_llava_needs_weights_and_processor(tiny_llava_path, tmp_path):
    no_weights = copy_checkpoint(tiny_llava_path, tmp_path / "nw")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="safetensors"):
        ClipEncoder.from_llava(no_weights)
    no_proc = copy_checkpoint(tiny_llava_path, tmp_path / "np")
    (no_proc / "processor_config.json").unlink()
    with pytest.raises(CheckpointError, match="preprocessor_config.json"):
        ClipEncoder.from_llava(no_proc)


# ---- inputs ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [np.zeros((10, 10, 3), np.float32), np.zeros((10, 10, 2), np.uint8), "img.png", b"bytes", None, [np.zeros((4, 4, 3), np.uint8), 3]],
    ids=["float", "2ch", "str", "bytes", "none", "list-with-int"],
)
def test_clip_encoder_rejects_bad_images(llava_encoder, bad):
    with pytest.raises(ImageInputError):
        llava_encoder.embed_for_llm(bad)
    with pytest.raises(ImageInputError):
        llava_encoder.embed(bad)


def test_clip_encoder_rejects_empty_list(llava_encoder):
    with pytest.raises(ImageInputError, match="no images"):
        llava_encoder.embed_for_llm([])


def test_clip_encoder_batch_equals_one_by_one(llava_encoder):
    images = detailed_images()
    batch = llava_encoder.embed_for_llm(images)
    single = torch.cat([llava_encoder.embed_for_llm(i) for i in images])
    assert (batch - single).abs().max().item() < 1e-5
    assert not torch.allclose(batch[0], batch[1])  # different images, different embeddings


def test_clip_encoder_max_batch_splits_large_requests(tiny_llava_path, llava_encoder):
    images = detailed_images()
    with ClipEncoder.from_llava(tiny_llava_path, max_batch=2) as enc:
        out = enc.embed_for_llm(images)
    assert (out - llava_encoder.embed_for_llm(images)).abs().max().item() < 1e-5


def test_clip_encoder_uses_cache_for_static_frames(tiny_llava_path):
    cache = EmbeddingCache()
    img = gradient(120, 160)
    with ClipEncoder.from_llava(tiny_llava_path, cache=cache) as enc:
        first = enc.embed_for_llm(img)
        again = enc.embed_for_llm([img.copy(), noise(120, 160, 6)])
        pooled = enc.embed(img)
    assert torch.equal(again[0], first[0])
    assert pooled.shape == (1, 32)  # another namespace: not confused with the LLM embeddings
    stats = cache.stats()
    assert (stats.hits, stats.misses) == (1, 3)


# ---- plain open_clip models ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_open_clip_dir(tmp_path_factory):
    """A tiny open_clip model saved as a local folder (config + safetensors): what a local checkpoint looks like."""
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("tiny-open-clip")
    cfg = {
        "model_cfg": {
            "embed_dim": 24,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
            "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
        },
        "preprocess_cfg": {"size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    }
    (path / "open_clip_config.json").write_text(json.dumps(cfg))
    torch.manual_seed(2)
    model = open_clip.CLIP(**cfg["model_cfg"])
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "open_clip_model.safetensors"))
    return path, model.eval()


def test_clip_encoder_open_clip_local_dir_loads_weights(tiny_open_clip_dir):
    path, model = tiny_open_clip_dir
    images = detailed_images()[:3]
    with ClipEncoder(f"local-dir:{path}") as enc:
        ours = enc.embed(images)
        pixels = enc.pixel_values(images)
    assert pixels.shape == (3, 3, 32, 32)
    with torch.no_grad():
        direct = model.encode_image(pixels, normalize=True)
    assert ours.shape == (3, 24) and (ours - direct).abs().max().item() < 1e-5
    assert torch.allclose(ours.norm(dim=-1), torch.ones(3), atol=1e-6)
    # preprocessing follows the model's preprocess_cfg (mean 0.5, std 0.25): pixel 128 -> (128/255-0.5)/0.25
    flat = np.full((40, 40, 3), 128, np.uint8)
    assert torch.allclose(enc.pixel_values(flat), torch.full((1, 3, 32, 32), (128 / 255 - 0.5) / 0.25), atol=1e-6)


def test_clip_encoder_open_clip_builtin_random_weights():
    with ClipEncoder("ViT-B-32", pretrained=None) as enc:
        out = enc.embed([gradient(480, 640), noise(200, 100, 7)])
        assert out.shape == (2, 512) and out.dtype == torch.float32
        assert torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-5)
        with pytest.raises(EncoderError, match="from_llava"):
            enc.embed_for_llm(gradient(64, 64))


def test_clip_encoder_open_clip_unknown_model():
    with pytest.raises(EncoderError, match="no-such-model"):
        ClipEncoder("no-such-model")


# ---- async -------------------------------------------------------------------------------------------------


async def test_clip_encoder_async_matches_sync(llava_encoder):
    images = detailed_images()[:2]
    assert torch.equal(await llava_encoder.aembed_for_llm(images), llava_encoder.embed_for_llm(images))
    assert torch.equal(await llava_encoder.aembed(images[0]), llava_encoder.embed(images[0]))
    with pytest.raises(ImageInputError):
        await llava_encoder.aembed_for_llm("nope")


async def test_clip_encoder_async_batches_concurrent_requests(tiny_llava_path, llava_encoder):
    enc = ClipEncoder.from_llava(tiny_llava_path)
    calls: list[int] = []
    forward = enc._forward

    def counting_forward(kind, frames, order):  # a spy on the real forward pass, which still runs
        calls.append(len(frames))
        return forward(kind, frames, order)

    enc._forward = counting_forward
    images = [noise(90 + 10 * i, 120, 10 + i) for i in range(6)]
    try:
        results = await asyncio.gather(*(enc.aembed_for_llm(img) for img in images))
    finally:
        await enc.aclose()
    for img, out in zip(images, results):
        assert out.shape == (1, 16, 64)
        assert (out - llava_encoder.embed_for_llm(img)).abs().max().item() < 1e-5
    assert sum(calls) == 6 and len(calls) < 6, calls  # at least some requests shared a forward pass


async def test_clip_encoder_async_does_not_block_the_loop():
    enc = ClipEncoder("ViT-B-32", pretrained=None)
    images = [noise(720, 1280, 20 + i) for i in range(8)]
    started = time.perf_counter()
    enc.embed(images)
    sync_s = time.perf_counter() - started
    try:
        async with loop_gaps(0.005) as probe:
            out = await enc.aembed(images)
    finally:
        await enc.aclose()
    assert out.shape == (8, 512)
    assert len(probe.gaps) >= 5 and probe.max < sync_s * 0.5, (probe.max, sync_s)


async def test_clip_encoder_close_is_idempotent_and_final(tiny_llava_path):
    enc = ClipEncoder.from_llava(tiny_llava_path)
    assert (await enc.aembed_for_llm(noise(60, 60, 30))).shape == (1, 16, 64)
    enc.close()
    enc.close()
    await enc.aclose()
    with pytest.raises(EncoderError, match="closed"):
        await enc.aembed_for_llm(noise(60, 60, 31))
    assert enc.embed_for_llm(noise(60, 60, 32)).shape == (1, 16, 64)  # the sync path needs no worker


async def test_clip_encoder_async_bad_request_does_not_fail_its_batch(tiny_llava_path):
    enc = ClipEncoder.from_llava(tiny_llava_path)
    poison = noise(64, 64, 40)
    forward = enc._forward

    def refusing_forward(kind, frames, order):
        # stand-in for a frame that passes the cheap type check but that conversion refuses (e.g. a corrupt frame)
        if any(f is poison for f in frames):
            raise ImageInputError("cannot convert this frame")
        return forward(kind, frames, order)

    enc._forward = refusing_forward
    good = [noise(64, 64, 41 + i) for i in range(3)]
    try:
        results = await asyncio.gather(
            enc.aembed_for_llm(good[0]), enc.aembed_for_llm(poison), enc.aembed_for_llm(good[1:]), return_exceptions=True
        )
    finally:
        await enc.aclose()
    assert isinstance(results[1], ImageInputError)
    assert results[0].shape == (1, 16, 64) and results[2].shape == (2, 16, 64)
