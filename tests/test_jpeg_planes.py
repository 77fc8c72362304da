"""JpegEncoder's YUV-planes path (libjpeg-turbo fed the resized planes) against its BGR path, on frames a real encoder
and decoder made: as close to the picture that was sent, about as many bytes, colours and orientation right."""

from __future__ import annotations

import fractions

import av
import cv2
import numpy as np
import pytest

from encoders import JpegEncoder, jpeg
from encoders.frames import to_jpeg_planes

WIDTH, HEIGHT = 1280, 720

PSNR_SLACK_DB = 0.3
"""How far below the BGR path's mean PSNR (against the sent picture) the planes path may fall. Measured on this clip
at 720p -> 512x288, quality 85, mean over 12 frames: VP8 35.2 / 35.0 dB, H.264 36.7 / 36.6 dB (planes / BGR), with
about 2-4 % fewer bytes."""

WORST_FRAME_SLACK_DB = 0.5
"""The same for the worst frame of the clip. The planes path box-shrinks 2x before libswscale's last 1.25x, a touch
softer on hard edges: its worst H.264 frame measured 35.5 dB against the BGR path's 35.9 (VP8: 32.0 vs 31.5)."""


def scene(n: int) -> np.ndarray:
    """An RGB picture with a red square in the top-left quarter, a blue one bottom-right, gradients and mild noise
    that move with `n` (so inter frames carry real motion)."""
    rng = np.random.default_rng(n)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    img = np.stack([80 + 60 * x / WIDTH, 60 + 80 * y / HEIGHT, 90 + 60 * np.sin((x + 8 * n) / 31.0)], axis=-1)
    img += rng.normal(0, 2, img.shape)
    img[60:300, 80 + n: 380 + n] = (230, 20, 20)
    img[420:660, 880 - n: 1180 - n] = (20, 30, 220)
    return np.clip(img, 0, 255).astype(np.uint8)


def sent_and_decoded(codec: str, decoder: str, frames: int = 12) -> list[tuple[np.ndarray, av.VideoFrame]]:
    """Each sent RGB picture with the frame the decoder made of it (yuv420p, as in the daemon)."""
    enc = av.CodecContext.create(codec, "w")
    enc.width, enc.height, enc.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    enc.time_base, enc.framerate = fractions.Fraction(1, 30), fractions.Fraction(30, 1)
    enc.bit_rate = 3_000_000
    enc.options = ({"tune": "zerolatency", "preset": "ultrafast", "bframes": "0"} if codec == "libx264"
                   else {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"})
    dec = av.CodecContext.create(decoder, "r")
    sent, decoded = [], []
    for i in range(frames):
        rgb = scene(i)
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        sent.append(rgb)
        for packet in enc.encode(frame):
            decoded += dec.decode(packet)
    for packet in enc.encode(None):
        decoded += dec.decode(packet)
    assert len(decoded) == frames and all(f.format.name == "yuv420p" for f in decoded)
    return list(zip(sent, decoded, strict=True))


def decode(data: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def bgr_path(encoder: JpegEncoder, frame: av.VideoFrame) -> bytes:
    """The same encoder with the planes path switched off (as where simplejpeg is not installed)."""
    saved, jpeg._simplejpeg = jpeg._simplejpeg, None
    try:
        return encoder.encode(frame)
    finally:
        jpeg._simplejpeg = saved


@pytest.fixture(autouse=True)
def _needs_simplejpeg():
    if jpeg._simplejpeg is None:
        pytest.fail("simplejpeg is a core dependency and should be installed")


@pytest.mark.parametrize(("codec", "decoder"), [("libvpx", "vp8"), ("libx264", "h264")])
def test_planes_path_is_as_close_to_the_sent_picture_with_as_many_bytes(codec, decoder):
    encoder = JpegEncoder(max_side=512, quality=85)
    ours, theirs, bytes_ours, bytes_theirs = [], [], 0, 0
    for rgb, frame in sent_and_decoded(codec, decoder):
        reference = cv2.resize(rgb, (512, 288), interpolation=cv2.INTER_AREA)
        new, old = encoder.encode(frame), bgr_path(encoder, frame)
        assert decode(new).shape == (288, 512, 3)
        ours.append(psnr(decode(new), reference))
        theirs.append(psnr(decode(old), reference))
        bytes_ours, bytes_theirs = bytes_ours + len(new), bytes_theirs + len(old)
    print(f"{codec}: PSNR planes {np.mean(ours):.2f} dB, BGR {np.mean(theirs):.2f} dB; "
          f"bytes planes {bytes_ours}, BGR {bytes_theirs} ({bytes_ours / bytes_theirs - 1:+.1%})")
    assert np.mean(ours) >= np.mean(theirs) - PSNR_SLACK_DB
    assert min(ours) >= min(theirs) - WORST_FRAME_SLACK_DB
    assert abs(bytes_ours / bytes_theirs - 1) <= 0.05


def test_planes_path_keeps_colours_and_orientation():
    """The red square stays red and top-left, the blue one blue and bottom-right (a swapped U/V, a flipped or
    limited-range picture would each fail here)."""
    (rgb, frame), *_ = sent_and_decoded("libvpx", "vp8", frames=1)
    out = decode(JpegEncoder(max_side=512).encode(frame))
    scale = 512 / WIDTH
    red = out[int(180 * scale), int(230 * scale)].astype(int)
    blue = out[int(540 * scale), int(1030 * scale)].astype(int)
    assert np.abs(red - (230, 20, 20)).max() <= 12, red
    assert np.abs(blue - (20, 30, 220)).max() <= 12, blue
    assert np.abs(out[5, 5].astype(int) - cv2.resize(rgb, (512, 288), interpolation=cv2.INTER_AREA)[5, 5]).max() <= 12


@pytest.mark.parametrize("size", [(512, 288), (333, 187), (641, 359), (1, 1)])
def test_planes_cover_odd_sizes(size):
    """4:2:0 planes of any output size: chroma is half the size rounded up, and libjpeg-turbo takes it."""
    frame = av.VideoFrame.from_ndarray(scene(0), format="rgb24").reformat(format="yuv420p")
    planes = to_jpeg_planes(frame, size)
    assert planes is not None
    w, h = size
    assert [p.shape for p in planes] == [(h, w), ((h + 1) // 2, (w + 1) // 2), ((h + 1) // 2, (w + 1) // 2)]
    encoder = JpegEncoder(max_side=max(size))
    assert decode(encoder._encode_planes(*planes)).shape == (h, w, 3)


@pytest.mark.parametrize("fmt", ["rgb24", "nv12", "gray"])
def test_other_frames_keep_the_bgr_path(fmt):
    frame = av.VideoFrame.from_ndarray(scene(0), format="rgb24").reformat(format=fmt)
    assert to_jpeg_planes(frame, (512, 288)) is None
    assert decode(JpegEncoder().encode(frame)).shape == (288, 512, 3)
