"""`FrameBuffer(spread_frames=...)`: only the frames sampling can use (the newest plus one per slot), so a 640x480
stream holds about 10 decoded frames instead of 32, and `window(seconds, k)` still finds k frames over the window.
"""

from __future__ import annotations

import asyncio

import av
import numpy as np
import pytest

from tests.fixtures.webrtc import CounterVideoTrack, publish
from webrtc import FrameBuffer, WebRTCConfig


def frame() -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")


def expected_kept(puts: list[tuple[int, float]], slot_s: float, max_seconds: float, max_frames: int) -> list[int]:
    """The seqs the rule keeps: the newest, and before it the latest put of each slot, within the bounds."""
    newest_seq, newest_t = puts[-1]
    by_slot: dict[float, int] = {}
    for seq, t in puts[:-1]:
        by_slot[t // slot_s] = seq  # later puts of a slot replace earlier ones
    times = dict(puts)
    kept = [s for s in sorted(by_slot.values()) if times[s] >= newest_t - max_seconds] + [newest_seq]
    return kept[-max_frames:]


async def test_frame_buffer_spread_keeps_one_frame_per_slot():
    buffer = FrameBuffer("s", max_frames=32, max_seconds=0.3, spread_frames=4)
    assert buffer.slot_s == pytest.approx(0.075)
    puts: list[tuple[int, float]] = []
    loop = asyncio.get_running_loop()
    start = loop.time()
    while loop.time() - start < 0.8:  # a producer at ~100 fps, longer than max_seconds
        item = buffer.put(frame())
        puts.append((item.seq, item.received_at))
        held = [f.seq for f in buffer.frames()]
        assert held == expected_kept(puts, buffer.slot_s, buffer.max_seconds, buffer.max_frames)
        assert len(held) <= 4 + 2  # spread slots, a partly covered one, the newest
        await asyncio.sleep(0.01)
    assert len(puts) > 30
    assert buffer.stats().dropped == len(puts) - len(buffer)
    # every slot is represented, so a k-frame sample spans the window
    picks = buffer.window(0.3, 4)
    assert len(picks) == 4 and picks[-1].seq == puts[-1][0]
    assert picks[-1].received_at - picks[0].received_at >= 0.3 - 2 * buffer.slot_s


def test_frame_buffer_spread_refuses_zero():
    from webrtc.errors import WebRTCConfigError

    with pytest.raises(WebRTCConfigError):
        FrameBuffer("s", spread_frames=0)
    with pytest.raises(WebRTCConfigError):
        WebRTCConfig(buffer_spread_frames=0)


@pytest.mark.webrtc
@pytest.mark.timeout(60)
async def test_frame_buffer_spread_live_stream_k_frames_over_the_window(webrtc_server_factory):
    """A real 640x480@30 aiortc stream: about 10 frames held (not 32), and k = 1..8 frames over the 2 s window."""
    from visual_agent.config import parse_config
    from visual_agent.daemon import ingest_config

    config = ingest_config(parse_config({"webrtc": {"port": 0, "host_candidate_addresses": ["127.0.0.1"]}}))
    assert config.buffer_spread_frames == 9 and config.buffer_max_seconds == 2.0  # agent.max_frames + 1, window_s
    assert ingest_config(parse_config({"webrtc": {"buffer_spread_frames": None}})).buffer_spread_frames is None
    server = await webrtc_server_factory(config)
    async with publish(server.url, CounterVideoTrack(640, 480, 30), source="cam"):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while "cam" not in server.buffers or server.get_buffer("cam").stats().received < 80:  # ~2.7 s of video
            assert loop.time() < deadline, server.health()
            await asyncio.sleep(0.05)
        buffer = server.get_buffer("cam")
        held = buffer.frames()
        assert 8 <= len(held) <= 11, [round(f.age_s, 3) for f in held]
        megabytes = sum(f.frame.width * f.frame.height * 1.5 for f in held) / 1e6
        for k in range(1, 9):
            picks = buffer.window(2.0, k)
            assert len(picks) == k and picks[-1] is held[-1], k
            if k >= 2:
                assert picks[-1].received_at - picks[0].received_at > 1.5, k  # spread over the window
    assert megabytes < 5.1  # ≤ 11 frames of 0.46 MB (32 consecutive frames were 14.7 MB and covered 1.07 s)
