"""Video files for the file-source tests: `write_video` writes an H.264 clip at `FPS` frames a second."""

from __future__ import annotations

import fractions
from pathlib import Path

import av
import numpy as np

from tests.fixtures.webrtc import colour_bars_yuv

__all__ = ["FPS", "write_video"]

FPS = 30


def write_video(path: Path, seconds: float, *, width: int = 160, height: int = 120, audio: bool = False) -> Path:
    """An H.264 MP4 of colour bars whose brightness steps with the frame number (and optionally AAC audio)."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": "ultrafast", "tune": "zerolatency"}
        sound = None
        if audio:
            sound = container.add_stream("aac", rate=48000)
            sound.layout = "stereo"
        base = colour_bars_yuv(width, height)
        frames = int(seconds * FPS)
        for i in range(frames):
            yuv = base.copy()
            yuv[: height // 4, : width // 4] = (i * 8) % 220 + 16
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            frame.pts, frame.time_base = i, fractions.Fraction(1, FPS)
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if sound is not None:
            samples = int(seconds * 48000)
            t = np.arange(samples) / 48000
            tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            pcm = np.stack([tone, tone])
            for start in range(0, samples, 1024):
                chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[:, start:start + 1024]), format="fltp", layout="stereo")
                chunk.sample_rate, chunk.pts = 48000, start
                container.mux(sound.encode(chunk))
            container.mux(sound.encode())
    return path
