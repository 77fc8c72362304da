"""When the agent looks and which frames it takes; what else the model may see (`Recalled`: stored images).

Which frames: the newest (`k == 1`), or `k` spread over the last `window_s` seconds (`FrameBuffer.window`).
When: on a question; every N seconds (`agent.periodic_interval_s`); on a scene change, measured as the mean
absolute difference of 32x18 grey thumbnails (0-1) against the frame of the last change (at first, the first frame
seen), over a threshold and no sooner than `min_gap_s` after the last one. The thumbnail is made by libswscale from the sampled frame
only, in a worker thread.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from encoders import to_array

from .errors import ErrorType, QuestionError

__all__ = [
    "Recalled",
    "SceneChangeDetector",
    "TakenFrame",
    "resolve_source",
    "select_frames",
    "take_frames",
    "thumbnail",
    "thumbnail_distance",
]

THUMB_WIDTH = 32
THUMB_HEIGHT = 18


@dataclass(frozen=True, slots=True)
class TakenFrame:
    """A frame taken for one question, with its age measured at the moment it was taken."""

    frame: Any
    """The `av.VideoFrame`."""
    pts: int | None
    age_s: float
    seq: int = 0
    """Arrival number in its buffer (with the source name, identifies the frame for caching)."""


@dataclass(frozen=True, slots=True)
class Recalled:
    """Something seen before, for a question about the past: a stored image with what was said about it."""

    text: str
    """What the agent said then (an answer, a description, a rule's reason), or a caption."""
    image: Any = None
    """The stored picture: JPEG bytes (sent as they are), or a decoded picture (`av.VideoFrame`, RGB array, PIL
    image); None: text only."""
    at: float | None = None
    """When it was seen, unix seconds (shown to the model)."""
    source: str | None = None

    def caption(self) -> str:
        """The text the model reads beside the image: when, where, what."""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.at)) if self.at is not None else None
        head = " ".join(p for p in (when, self.source) if p)
        return f"[{head}] {self.text}" if head else self.text


def select_frames(buffer: Any, k: int, window_s: float) -> list[TakenFrame]:
    """The newest frame (k == 1) or up to k spread over `window_s`, oldest first; [] before the first frame."""
    picked = [buffer.latest()] if k <= 1 else buffer.window(window_s, k)
    now = time.monotonic()
    return [TakenFrame(f.frame, f.pts, max(0.0, now - f.received_at), f.seq) for f in picked if f is not None]


def resolve_source(frames: Any, name: str | None, default: str | None) -> str:
    """The source a question is about: `name`, else `default`, else the first one held; `QuestionError` (no_frame or
    unknown_source, naming a few known ones) when there is none such."""
    known = list(frames.source_names()) if frames is not None else []
    if name is None:
        name = default or (known[0] if known else None)
        if name is None:
            raise QuestionError(ErrorType.NO_FRAME, "no source yet: open the page and connect a camera, or "
                                "configure a source")
        if name not in known:
            raise QuestionError(ErrorType.NO_FRAME, f"the default source {name!r} is not connected yet; known "
                                f"sources: {_few(known)}")
    if name not in known:
        raise QuestionError(ErrorType.UNKNOWN_SOURCE, f"no source {name!r}; known sources: {_few(known)}")
    return name


async def take_frames(buffer: Any, source: str, k: int, window_s: float, wait_s: float) -> list[TakenFrame]:
    """`select_frames`, after waiting up to `wait_s` for a first frame (`QuestionError` no_frame after that)."""
    frames = select_frames(buffer, k, window_s)
    if not frames:
        try:
            await buffer.wait_for_frame(wait_s)
        except TimeoutError:
            raise QuestionError(ErrorType.NO_FRAME, f"source {source!r} has no frame yet (waited {wait_s:g} s); is "
                                "its camera connected and sending video?") from None
        frames = select_frames(buffer, k, window_s)
    return frames


def _few(names: list[str], shown: int = 5) -> str:
    """At most `shown` source names for an error answer (a daemon may hold many), then how many more."""
    if not names:
        return "none yet"
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def thumbnail(frame: Any) -> np.ndarray:
    """A 32x18 grey float32 thumbnail in [0, 1] (libswscale area resize; CPU work: call it off the loop)."""
    grey = to_array(frame, size=(THUMB_WIDTH, THUMB_HEIGHT), out="gray")
    return grey.astype(np.float32) / 255.0


def thumbnail_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two thumbnails, 0 (same) to 1."""
    return float(np.mean(np.abs(a - b)))


class SceneChangeDetector:
    """Says when a source's picture changed enough, and not too soon after the last change."""

    def __init__(self, threshold: float, min_gap_s: float) -> None:
        self.threshold = threshold
        self.min_gap_s = min_gap_s
        self._reference: np.ndarray | None = None
        self._last_change = float("-inf")
        self.last_distance: float | None = None

    async def check(self, frame: Any, *, now: float | None = None) -> bool:
        """True when `frame` differs from the reference past the threshold (the reference then moves to it).

        The first frame only sets the reference.
        """
        thumb = await asyncio.to_thread(thumbnail, frame)
        return self.check_thumbnail(thumb, now=time.monotonic() if now is None else now)

    def check_thumbnail(self, thumb: np.ndarray, *, now: float) -> bool:
        if self._reference is None:
            self._reference = thumb
            return False
        self.last_distance = thumbnail_distance(self._reference, thumb)
        if self.last_distance < self.threshold or now - self._last_change < self.min_gap_s:
            return False
        self._reference = thumb
        self._last_change = now
        return True
