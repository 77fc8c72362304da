"""`Thumbnailer`: an event's image as a small JPEG (about 320 px on its long side), made in the writer thread.

Frames from a `FrameBuffer` are converted with `encoders.to_array` (through `JpegEncoder`), which keeps one
libswscale converter per thread, so the writer thread may share frames with every other reader.
"""

from __future__ import annotations

import logging
from typing import Any

import cv2
import numpy as np

from encoders import JpegEncoder

from .events import Event

__all__ = ["Thumbnailer"]

logger = logging.getLogger(__name__)


class Thumbnailer:
    """`images(event)`: [thumbnail] + the event's look-back strip, as JPEG bytes; [] when it has no image."""

    def __init__(self, max_side: int, quality: int) -> None:
        self.encoder = JpegEncoder(max_side=max_side, quality=quality)
        self.max_side = max_side
        self.failures = 0

    def images(self, event: Event) -> list[bytes]:
        if event.image is None:
            return []
        try:
            thumb = self.thumbnail(event.image)
        except Exception as exc:  # a frame the converter refuses costs the picture, never the event
            self.failures += 1
            logger.warning("event store: no thumbnail for an event of %s: %s", event.source, exc)
            return []
        return [thumb, *(bytes(j) for j in event.strip)]

    def thumbnail(self, image: Any) -> bytes:
        """JPEG bytes of a frame, an RGB array, or a JPEG (re-encoded only when larger than `max_side`)."""
        if isinstance(image, (bytes, bytearray, memoryview)):
            data = bytes(image)
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if bgr is None:
                raise ValueError("the image is not a JPEG or PNG")
            if max(bgr.shape[:2]) <= self.max_side:
                return data
            return self.encoder.encode(bgr, channel_order="bgr")
        return self.encoder.encode(image)
