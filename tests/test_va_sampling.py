"""Which frames the agent takes and when a scene counts as changed (real FrameBuffer, real av frames)."""

from __future__ import annotations

import asyncio

import av
import numpy as np

from visual_agent.sampling import SceneChangeDetector, select_frames, thumbnail, thumbnail_distance
from webrtc import FrameBuffer


def frame(value: int, width: int = 64, height: int = 48, pts: int = 0) -> av.VideoFrame:
    img = np.full((height, width, 3), value, np.uint8)
    f = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
    f.pts = pts
    return f


async def test_select_frames_newest_or_spread_over_window():
    buf = FrameBuffer("cam", max_frames=32, max_seconds=10)
    assert select_frames(buf, 1, 2.0) == []
    for i in range(10):
        buf.put(frame(i * 20, pts=i * 3000))
        await asyncio.sleep(0.01)
    newest = select_frames(buf, 1, 2.0)
    assert [f.pts for f in newest] == [27000] and newest[0].seq == buf.latest().seq  # the newest
    spread = select_frames(buf, 4, 2.0)
    assert len(spread) == 4 and spread[-1].pts == 27000 and spread[0].pts == 0
    assert [f.pts for f in spread] == sorted(f.pts for f in spread)
    assert spread[0].age_s > spread[-1].age_s


def test_thumbnail_distance_of_equal_and_opposite_frames():
    black, white = thumbnail(frame(0)), thumbnail(frame(255))
    assert black.shape == (18, 32) and black.dtype == np.float32
    assert thumbnail_distance(black, thumbnail(frame(0))) < 0.01
    assert thumbnail_distance(black, white) > 0.8


def test_scene_change_threshold_and_min_gap():
    det = SceneChangeDetector(threshold=0.2, min_gap_s=5.0)
    grey, light, dark = thumbnail(frame(128)), thumbnail(frame(140)), thumbnail(frame(10))
    assert det.check_thumbnail(grey, now=0.0) is False  # the first frame only sets the reference
    assert det.check_thumbnail(light, now=1.0) is False  # small change: below the threshold
    assert det.check_thumbnail(dark, now=2.0) is True  # big change
    assert det.check_thumbnail(grey, now=3.0) is False  # big change again, but within min_gap_s
    assert det.check_thumbnail(grey, now=8.0) is True  # after the gap it counts (reference was dark)
