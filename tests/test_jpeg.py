"""JpegEncoder: every input type, size and aspect rules, quality bounds, bad inputs, async off the loop."""

from __future__ import annotations

import asyncio
import base64
import time

import av
import cv2
import numpy as np
import pytest
from PIL import Image

from encoders import ChannelOrder, EncoderConfigError, ImageInputError, JpegConfig, JpegEncoder
from tests.children import run_child
from tests.loop_probe import loop_gaps


def detailed_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth but detailed RGB test image: gradients, a disc, stripes and mild noise (JPEG-friendly, not flat)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 255 * x / max(width - 1, 1)
    g = 255 * y / max(height - 1, 1)
    b = 128 + 100 * np.sin(x / 23.0) * np.cos(y / 17.0)
    disc = (x - width * 0.6) ** 2 + (y - height * 0.4) ** 2 < (min(width, height) * 0.2) ** 2
    img = np.stack([r, g, b], axis=-1)
    img[disc] = (240, 30, 60)
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def decode(jpeg: bytes) -> np.ndarray:
    """JPEG bytes back to an RGB array."""
    assert jpeg[:2] == b"\xff\xd8" and jpeg[-2:] == b"\xff\xd9", "not a complete JPEG"
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert bgr is not None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def area_resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def test_jpeg_encoder_video_frame_720p_to_512_keeps_aspect_and_pixels():
    rgb = detailed_rgb(720, 1280)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    jpeg = JpegEncoder(max_side=512, quality=90).encode(frame)
    out = decode(jpeg)
    assert out.shape == (288, 512, 3)
    # yuv420p subsampling + JPEG: still close to the area-resized source
    assert psnr(out, area_resize(rgb, (512, 288))) > 30


@pytest.mark.parametrize("fmt", ["rgb24", "bgr24", "yuv420p", "nv12", "gray"])
def test_jpeg_encoder_video_frame_pixel_formats(fmt):
    rgb = detailed_rgb(240, 320, seed=1)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=fmt)
    out = decode(JpegEncoder(max_side=160, quality=95).encode(frame))
    assert out.shape == (120, 160, 3)
    expected = area_resize(rgb, (160, 120))
    if fmt == "gray":
        expected = np.repeat(cv2.cvtColor(expected, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)
    assert psnr(out, expected) > 28


def test_jpeg_encoder_rgb_array_keeps_colours():
    rgb = np.zeros((64, 96, 3), np.uint8)
    rgb[:, :48] = (255, 0, 0)  # red left half
    rgb[:, 48:] = (0, 0, 255)  # blue right half
    out = decode(JpegEncoder(quality=95).encode(rgb))
    assert out.shape == (64, 96, 3)
    assert np.abs(out[32, 10].astype(int) - (255, 0, 0)).max() < 12
    assert np.abs(out[32, 90].astype(int) - (0, 0, 255)).max() < 12


def test_jpeg_encoder_bgr_array_with_channel_order():
    rgb = detailed_rgb(100, 150, seed=2)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    enc = JpegEncoder(max_side=None, quality=95)
    from_bgr = decode(enc.encode(bgr, channel_order="bgr"))
    from_bgr_enum = decode(enc.encode(bgr, channel_order=ChannelOrder.BGR))
    assert psnr(from_bgr, rgb) > 32
    assert np.array_equal(from_bgr, from_bgr_enum)
    # read as RGB, the same array swaps red and blue: the flag matters
    assert psnr(decode(enc.encode(bgr)), rgb) < 25


def test_jpeg_encoder_rgb_array_psnr_against_source():
    rgb = detailed_rgb(480, 640, seed=3)
    out = decode(JpegEncoder(max_side=None, quality=95).encode(rgb))
    assert psnr(out, rgb) > 32


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "CMYK"])
def test_jpeg_encoder_pil_modes(mode):
    rgb = detailed_rgb(300, 600, seed=4)
    img = Image.fromarray(rgb).convert(mode)
    out = decode(JpegEncoder(max_side=300, quality=95).encode(img))
    assert out.shape == (150, 300, 3)
    expected = area_resize(np.asarray(img.convert("RGB")), (300, 150))
    assert psnr(out, expected) > 30


def test_jpeg_encoder_grey_and_rgba_arrays():
    rgb = detailed_rgb(50, 80, seed=5)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    out = decode(JpegEncoder(quality=95).encode(grey))
    assert out.shape == (50, 80, 3) and psnr(out[:, :, 0], grey) > 32
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    assert psnr(decode(JpegEncoder(quality=95).encode(rgba)), rgb) > 32


def test_jpeg_encoder_non_contiguous_array():
    rgb = detailed_rgb(200, 300, seed=6)
    view = rgb[::2, ::2]  # strided view
    out = decode(JpegEncoder(max_side=None, quality=95).encode(view))
    assert psnr(out, np.ascontiguousarray(view)) > 32


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [
        ((1280, 720), 512, (512, 288)),
        ((720, 1280), 512, (288, 512)),  # portrait
        ((900, 300), 512, (512, 171)),
        ((100, 50), 512, (100, 50)),  # never upscaled
        ((512, 512), 512, (512, 512)),
        ((2000, 1), 100, (100, 1)),  # never collapses to 0
        ((1, 1), 512, (1, 1)),
        ((1280, 720), None, (1280, 720)),
    ],
)
def test_jpeg_encoder_output_size_keeps_aspect_never_upscales(size, max_side, expected):
    w, h = size
    rgb = np.full((h, w, 3), 128, np.uint8)
    enc = JpegEncoder(max_side=max_side)
    assert enc.output_size(rgb) == expected
    assert decode(enc.encode(rgb)).shape == (expected[1], expected[0], 3)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    assert decode(enc.encode(frame)).shape == (expected[1], expected[0], 3)


def test_jpeg_encoder_quality_trades_size_for_fidelity():
    rgb = detailed_rgb(240, 320, seed=7)
    low, high = JpegEncoder(max_side=None, quality=1).encode(rgb), JpegEncoder(max_side=None, quality=100).encode(rgb)
    assert len(low) < len(high) / 4
    assert psnr(decode(low), rgb) + 10 < psnr(decode(high), rgb)


@pytest.mark.parametrize("quality", [0, 101, -5, 50.0, True, "80", None])
def test_jpeg_encoder_rejects_quality_out_of_bounds(quality):
    with pytest.raises(EncoderConfigError, match="quality"):
        JpegEncoder(quality=quality)


@pytest.mark.parametrize("max_side", [0, -1, 12.5, "512"])
def test_jpeg_encoder_rejects_bad_max_side(max_side):
    with pytest.raises(EncoderConfigError, match="max_side"):
        JpegEncoder(max_side=max_side)


def test_jpeg_config_round_trip():
    cfg = JpegConfig(max_side=256, quality=70)
    enc = JpegEncoder.from_config(cfg)
    assert enc.config == cfg and "256" in repr(enc)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((10, 10, 3), np.float32),
        np.zeros((10, 10, 2), np.uint8),
        np.zeros((10, 10, 3, 1), np.uint8),
        np.zeros((0, 10, 3), np.uint8),
        np.zeros((10,), np.uint8),
        [[1, 2, 3]],
        b"\xff\xd8 not a frame",
        "frame.png",
        None,
    ],
    ids=["float", "2ch", "4d", "empty", "1d", "list", "bytes", "str", "none"],
)
def test_jpeg_encoder_rejects_bad_inputs(bad):
    with pytest.raises(ImageInputError):
        JpegEncoder().encode(bad)
    with pytest.raises(TypeError):  # ImageInputError is also a TypeError
        JpegEncoder().data_url(bad)


def test_jpeg_encoder_rejects_bad_channel_order():
    with pytest.raises(EncoderConfigError, match="channel_order"):
        JpegEncoder().encode(np.zeros((4, 4, 3), np.uint8), channel_order="yuv")


def test_jpeg_encoder_data_url_decodes_to_the_jpeg():
    rgb = detailed_rgb(90, 160, seed=8)
    enc = JpegEncoder(max_side=None, quality=80)
    url = enc.data_url(rgb)
    prefix = "data:image/jpeg;base64,"
    assert url.startswith(prefix)
    assert base64.b64decode(url[len(prefix):], validate=True) == enc.encode(rgb)


async def test_jpeg_encoder_async_matches_sync():
    rgb = detailed_rgb(120, 200, seed=9)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    enc = JpegEncoder(max_side=100)
    assert await enc.aencode(rgb) == enc.encode(rgb)
    assert await enc.adata_url(frame) == enc.data_url(frame)
    with pytest.raises(ImageInputError):
        await enc.aencode("nope")


async def test_jpeg_encoder_async_does_not_block_the_loop():
    big = detailed_rgb(3000, 4000, seed=10)
    enc = JpegEncoder(max_side=None, quality=95)
    started = time.perf_counter()
    enc.encode(big)
    sync_s = time.perf_counter() - started

    async with loop_gaps(0.002) as probe:  # ticks only while the encodes run
        results = await asyncio.gather(*(enc.aencode(big) for _ in range(3)))
    assert all(r[:2] == b"\xff\xd8" for r in results)
    # blocking encodes would run back to back in one loop turn: the probe would tick once or twice in all. In threads
    # the loop keeps ticking through them; counting ticks (not bounding gaps) holds when the machine stalls us too.
    assert len(probe.gaps) >= 5, (len(probe.gaps), probe.max, sync_s)


def test_jpeg_encoder_threads_share_one_video_frame():
    # PyAV caches one converter on each frame; threads converting the same frame through it crash or
    # hang. Two questions taking the same newest frame do exactly this, so it runs in a child process.
    result = run_child("threads_share_one_frame", timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", (result.returncode, result.stderr[-2000:])


@pytest.mark.parametrize("fmt,out", [("rgb24", "rgb"), ("bgr24", "bgr"), ("gray", "gray")])
def test_to_array_of_a_padded_video_frame_is_c_contiguous(fmt, out):
    # A frame already in the asked format is not converted; PyAV's array of it is a strided view over the
    # frame's padded lines (33 px * 3 bytes in a 144-byte line), while to_array promises C order.
    from encoders.frames import to_array

    pixels = np.random.default_rng(0).integers(0, 256, (31, 33, 3), dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(format=fmt)
    array = to_array(frame, out=out)
    assert array.flags.c_contiguous and array.shape[:2] == (31, 33)
    assert np.array_equal(array, frame.to_ndarray())
