"""For the rules tests and scripts/bench_rules.py: a video file whose scene changes at known frames, and the
STAND-IN model's script, which answers the rules' yes/no question from the image's brightness.

Every frame carries its number (the counter of tests/fixtures/webrtc.py, in the top rows) so a test can tell which
frame a request or an evidence JPEG shows; below it the picture is one flat grey level per segment.
"""

from __future__ import annotations

import base64
import fractions
import json
import threading
from pathlib import Path
from typing import Any

import av
import numpy as np

from tests.fixtures.webrtc import counter_of_gray, draw_counter

__all__ = ["BrightnessJudge", "counter_of_gray", "write_scene_clip"]

DARK = 40
BRIGHT = 200


def write_scene_clip(path: Path, segments: list[tuple[float, int]], *, fps: int = 30, width: int = 160,
                     height: int = 120) -> Path:
    """An H.264 MP4 of `segments` (seconds, grey level) played one after the other, each frame numbered."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "tune": "zerolatency", "crf": "18"}
        n = 0
        for seconds, level in segments:
            for _ in range(int(round(seconds * fps))):
                yuv = np.full((height * 3 // 2, width), 128, np.uint8)
                yuv[:height] = level
                draw_counter(yuv, width, height, n)
                frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
                frame.pts, frame.time_base = n, fractions.Fraction(1, fps)
                container.mux(stream.encode(frame))
                n += 1
        container.mux(stream.encode())
    return path


def decode_gray(jpeg: bytes) -> np.ndarray:
    import cv2

    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)


class BrightnessJudge:
    """The stand-in model's script: `{"answer": mean brightness > 128, "reason": ...}` for the request's last image,
    as structured JSON; it records (frame number, answer) of each request in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, bool]] = []
        self.lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> str:
        content = body["messages"][-1]["content"]
        urls = [p["image_url"]["url"] for p in content if isinstance(p, dict) and p.get("type") == "image_url"]
        gray = decode_gray(base64.b64decode(urls[-1].split(",", 1)[1]))
        h = gray.shape[0]
        mean = float(gray[h // 4:].mean())
        bright = mean > 128
        with self.lock:
            self.seen.append((counter_of_gray(gray), bright))
        return json.dumps({"answer": bright, "reason": f"mean brightness {mean:.0f}"})
