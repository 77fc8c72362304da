"""EmbeddingCache: a static scene hits (through real H.264 codec noise), a changed scene misses, bounds hold."""

from __future__ import annotations

import threading

import av
import numpy as np
import pytest
from PIL import Image

from encoders import EncoderConfigError, ImageInputError
from encoders import EmbeddingCache, fingerprint


def scene(height: int = 240, width: int = 320, disc_x: float = 0.5, seed: int = 0) -> np.ndarray:
    """A detailed RGB scene with a disc whose horizontal position (fraction of the width) is `disc_x`."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([255 * x / width, 255 * y / height, 128 + 90 * np.sin(x / 9.0) * np.cos(y / 13.0)], axis=-1)
    disc = (x - width * disc_x) ** 2 + (y - height * 0.5) ** 2 < (height * 0.15) ** 2
    img[disc] = (250, 250, 20)
    img += rng.normal(0, 1, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def h264_round_trip(frames: list[np.ndarray], sensor_noise: float = 3.0) -> list[av.VideoFrame]:
    """Encode RGB frames with libx264 (each with fresh sensor noise) and decode them: real codec noise."""
    rng = np.random.default_rng(42)
    h, w = frames[0].shape[:2]
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = w, h, "yuv420p"
    encoder.options = {"preset": "ultrafast", "crf": "28", "tune": "zerolatency"}
    decoder = av.CodecContext.create("h264", "r")
    out: list[av.VideoFrame] = []
    for i, rgb in enumerate(frames):
        noisy = np.clip(rgb + rng.normal(0, sensor_noise, rgb.shape), 0, 255).astype(np.uint8)
        frame = av.VideoFrame.from_ndarray(noisy, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        for packet in encoder.encode(frame):
            out.extend(decoder.decode(packet))
    for packet in encoder.encode(None):
        out.extend(decoder.decode(packet))
    assert len(out) == len(frames)
    return out


def run_clip(cache: EmbeddingCache, frames: list) -> int:
    """Look every frame up, storing a value on a miss, as an encoder would; returns how many were computed."""
    computed = 0
    for frame in frames:
        fp = cache.fingerprint(frame)
        if cache.get(fp) is None:
            computed += 1
            cache.put(fp, np.zeros(512, np.float32))
    return computed


def test_embedding_cache_static_h264_clip_hits():
    frames = h264_round_trip([scene()] * 30)
    cache = EmbeddingCache()
    computed = run_clip(cache, frames)
    stats = cache.stats()
    assert computed == 1, stats
    assert stats.hit_rate > 0.9 and stats.hits == 29 and stats.misses == 1


def test_embedding_cache_moving_object_misses():
    frames = h264_round_trip([scene(disc_x=0.2 + 0.02 * i) for i in range(30)])
    cache = EmbeddingCache()
    computed = run_clip(cache, frames)
    assert computed == 30, cache.stats()
    assert cache.stats().hit_rate == 0.0


def test_embedding_cache_small_local_change_misses():
    base = scene()
    changed = base.copy()
    changed[100:130, 10:40] = 0  # a 30x30 patch (about 1 % of the frame) goes black
    cache = EmbeddingCache()
    cache.put(base, "base")
    assert cache.get(changed) is None
    assert cache.get(base.copy()) == "base"


def test_embedding_cache_identical_frame_hits_by_hash():
    img = scene(seed=3)
    cache = EmbeddingCache()
    cache.put(img, b"jpeg")
    assert cache.get(img.copy()) == b"jpeg"
    stats = cache.stats()
    assert (stats.hits, stats.near_hits, stats.misses) == (1, 0, 0)


def test_embedding_cache_tolerance_zero_needs_identical_thumbnail():
    img = scene(seed=4)
    brighter = np.clip(img.astype(np.int16) + 2, 0, 255).astype(np.uint8)
    exact = EmbeddingCache(tolerance=0)
    exact.put(img, 1)
    assert exact.get(brighter) is None
    tolerant = EmbeddingCache()
    tolerant.put(img, 1)
    assert tolerant.get(brighter) == 1 and tolerant.stats().near_hits == 1


def test_embedding_cache_same_picture_across_input_types():
    rgb = scene(seed=5)
    cache = EmbeddingCache()
    cache.put(rgb, "v")
    assert cache.get(Image.fromarray(rgb)) == "v"
    assert cache.get(av.VideoFrame.from_ndarray(rgb, format="rgb24")) == "v"
    assert cache.get(av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")) == "v"
    assert cache.get(np.ascontiguousarray(rgb[:, :, ::-1]), channel_order="bgr") == "v"
    assert cache.stats().misses == 0


def test_embedding_cache_lru_evicts_least_recently_used():
    a, b, c = (scene(disc_x=x) for x in (0.2, 0.5, 0.8))
    cache = EmbeddingCache(max_entries=2)
    cache.put(a, "a")
    cache.put(b, "b")
    assert cache.get(a) == "a"  # a is now the most recent
    cache.put(c, "c")
    assert cache.get(b) is None
    assert cache.get(a) == "a" and cache.get(c) == "c"
    assert len(cache) == 2 and cache.stats().evictions == 1


def test_embedding_cache_bounded_by_bytes():
    frames = [scene(disc_x=x) for x in (0.2, 0.5, 0.8)]
    cache = EmbeddingCache(max_bytes=100 * 4)
    for f in frames:
        cache.put(f, np.zeros(60, np.float32))  # 240 bytes each: only one fits
    stats = cache.stats()
    assert stats.entries == 1 and stats.bytes == 240 and stats.evictions == 2
    assert cache.get(frames[2]) is not None and cache.get(frames[0]) is None
    cache.put(frames[0], b"x" * 1000)  # larger than the whole cache: not stored, nothing else lost
    assert cache.get(frames[0]) is None and cache.get(frames[2]) is not None


def test_embedding_cache_counts_tensor_bytes():
    torch = pytest.importorskip("torch", reason="torch (the clip extra) is not installed")
    cache = EmbeddingCache()
    cache.put(scene(), torch.zeros(16, 64, dtype=torch.float16))
    assert cache.stats().bytes == 16 * 64 * 2


def test_embedding_cache_get_or_compute_computes_once():
    calls = []
    cache = EmbeddingCache()
    img = scene(seed=6)
    for _ in range(3):
        assert cache.get_or_compute(img, lambda f: calls.append(f) or "emb") == "emb"
    assert len(calls) == 1 and cache.stats().hits == 2


def test_embedding_cache_clear_keeps_counters():
    cache = EmbeddingCache()
    cache.put(scene(), 1)
    cache.get(scene())
    cache.clear()
    assert len(cache) == 0 and cache.stats().bytes == 0 and cache.stats().hits == 1
    assert cache.get(scene()) is None


def test_embedding_cache_threads_keep_bounds():
    frames = [scene(disc_x=0.1 + 0.05 * i, height=60, width=80) for i in range(16)]
    cache = EmbeddingCache(max_entries=5)

    def worker(offset: int) -> None:
        for i in range(60):
            f = frames[(i + offset) % len(frames)]
            if cache.get(f) is None:
                cache.put(f, np.zeros(8, np.float32))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = cache.stats()
    assert stats.entries <= 5 and stats.bytes == stats.entries * 32
    assert stats.hits + stats.misses == 240


def test_fingerprint_is_stable_and_small():
    img = scene(seed=7)
    a, b = fingerprint(img), fingerprint(img.copy())
    assert a.key == b.key and a.thumbnail.shape == (16, 16) and a.thumbnail.dtype == np.uint8
    assert fingerprint(img, side=8).thumbnail.shape == (8, 8)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_entries": 0}, {"max_bytes": -1}, {"tolerance": -1}, {"tolerance": 300}, {"thumbnail_side": 0}, {"max_entries": 2.5}],
)
def test_embedding_cache_rejects_bad_config(kwargs):
    with pytest.raises(EncoderConfigError):
        EmbeddingCache(**kwargs)


def test_embedding_cache_rejects_bad_frames():
    cache = EmbeddingCache()
    with pytest.raises(ImageInputError):
        cache.get(np.zeros((4, 4), np.float64))
    with pytest.raises(ImageInputError):
        cache.put("not a frame", 1)
    assert cache.stats().misses == 0 and len(cache) == 0


def test_embedding_cache_namespaces_keep_values_apart():
    img = scene(seed=8)
    cache = EmbeddingCache()
    cache.put(img, "jpeg", namespace="jpeg")
    assert cache.get(img, namespace="clip") is None
    assert cache.get(img, namespace="jpeg") == "jpeg"
    cache.put(img, "clip", namespace="clip")
    assert cache.get(img, namespace="clip") == "clip" and len(cache) == 2
