"""Smaller copies of decoded frames, so a buffer's older frames do not each hold a full-size decoder picture.

A 1280x720 yuv420p frame is 1.38 MB, and a frame the buffer holds also keeps its buffer checked out of the decoder's
pool: eight of them made up most of a 720p stream's 17 MB. The older frames of a spread buffer serve multi-frame
questions, whose frames the encoders shrink to `encoder.jpeg_max_side` anyway; a copy at that size (0.22 MB at
512x288) lets the decoder's picture go back to its pool. One libswscale pass (area), about 0.2 ms for 720p; it runs
once per kept frame (a few a second per source), on the event loop's thread, where the buffers live.
"""

from __future__ import annotations

import threading
from typing import Any

import av

__all__ = ["shrunk"]

_local = threading.local()


def _reformatter() -> Any:
    """This thread's libswscale converter (a frame's own `reformat` shares one per frame across threads: unsafe)."""
    reformatter = getattr(_local, "reformatter", None)
    if reformatter is None:
        from av.video.reformatter import VideoReformatter

        reformatter = _local.reformatter = VideoReformatter()
    return reformatter


def shrunk(frame: av.VideoFrame, max_side: int) -> av.VideoFrame | None:
    """A copy of `frame` with its longer side at `max_side` (aspect, pixel format, pts kept), or None when it is no
    larger than that already."""
    width, height = frame.width, frame.height
    if max(width, height) <= max_side:
        return None
    scale = max_side / max(width, height)
    size = max(1, round(width * scale)), max(1, round(height * scale))
    out: av.VideoFrame = _reformatter().reformat(frame, width=size[0], height=size[1], interpolation="AREA", threads=1)
    out.pts = frame.pts
    if frame.time_base is not None:
        out.time_base = frame.time_base
    return out
