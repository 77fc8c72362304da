"""For the memory tests: a video file whose picture is one flat colour per segment (known scenes at known times), and
the STAND-IN model's script, which answers from the pictures it is sent.

- a description ("describe what you see") is answered "the scene is <colour>", the colour of its last image;
- a question about the past (the request carries stored observations: a caption "[time source] text" before each
  image) asking about a colour is answered with the captions' times of the images of that colour, so the test can
  check that retrieval gave the model the right thumbnails with the right times.
"""

from __future__ import annotations

import base64
import fractions
import re
import threading
from pathlib import Path
from typing import Any

import av
import numpy as np

__all__ = ["COLOURS", "ColourWitness", "colour_of_jpeg", "write_colour_clip"]

COLOURS: dict[str, tuple[int, int, int]] = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (20, 20, 200)}
_CAPTION = re.compile(r"^\[([^\]]+)\]")


def write_colour_clip(path: Path, segments: list[tuple[float, str]], *, fps: int = 15, width: int = 160,
                      height: int = 120) -> Path:
    """An H.264 MP4 of `segments` (seconds, colour name of `COLOURS`) played one after the other."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "tune": "zerolatency", "crf": "18"}
        n = 0
        for seconds, colour in segments:
            rgb = np.full((height, width, 3), COLOURS[colour], np.uint8)
            for _ in range(int(round(seconds * fps))):
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
                frame.pts, frame.time_base = n, fractions.Fraction(1, fps)
                container.mux(stream.encode(frame))
                n += 1
        container.mux(stream.encode())
    return path


def colour_of_jpeg(jpeg: bytes) -> str:
    """The named colour nearest the picture's mean colour."""
    import cv2

    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    mean = bgr.reshape(-1, 3).mean(axis=0)[::-1]  # RGB
    return min(COLOURS, key=lambda name: float(np.sum((np.array(COLOURS[name]) - mean) ** 2)))


def _jpeg_of(part: dict[str, Any]) -> bytes:
    return base64.b64decode(part["image_url"]["url"].split(",", 1)[1])


class ColourWitness:
    """The stand-in model's script (see the module docstring); `past_requests` counts questions about the past."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.descriptions = 0
        self.past_requests: list[list[tuple[str, str]]] = []
        """Per question about the past: (caption, colour of the image after it), in the order sent."""

    def __call__(self, body: dict[str, Any]) -> str:
        content = body["messages"][-1]["content"]
        parts = content if isinstance(content, list) else [{"type": "text", "text": str(content)}]
        question = parts[0].get("text", "") if parts else ""
        shown: list[tuple[str, str]] = []
        caption = None
        for part in parts[1:]:
            if part.get("type") == "text" and _CAPTION.match(part.get("text", "")):
                caption = part["text"]
            elif part.get("type") == "image_url" and caption is not None:
                shown.append((caption, colour_of_jpeg(_jpeg_of(part))))
                caption = None
        if shown or "Stored observations" in question:
            with self.lock:
                self.past_requests.append(shown)
            asked_words = re.findall(r"[a-z]+", question.splitlines()[0].lower()) if question else []
            asked = next((c for c in COLOURS if c in asked_words), None)
            times = [_CAPTION.match(c).group(1) for c, colour in shown if colour == asked]
            return f"{asked} at {', '.join(times)}" if times else f"no {asked} scene was seen"
        images = [p for p in parts if p.get("type") == "image_url"]
        with self.lock:
            self.descriptions += 1
        return f"the scene is {colour_of_jpeg(_jpeg_of(images[-1]))}" if images else "nothing to see"
