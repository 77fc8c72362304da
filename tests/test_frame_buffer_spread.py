"""`FrameBuffer(spread_frames=...)`: only the frames sampling can use (the newest plus `spread_frames` older ones spaced
over `max_seconds`), so a 640x480 stream holds 8 decoded frames instead of 32, and `window(seconds, k)` still finds k
frames over the window for every k up to `spread_frames + 1`.
"""

from __future__ import annotations

import asyncio
import random

import av
import numpy as np
import pytest

from tests.fixtures.webrtc import CounterVideoTrack, publish
from webrtc import FrameBuffer, WebRTCConfig


def frame() -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")


class Clock:
    """Simulated time for the buffer: the test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("fps", "jitter"), [(30, 0.0), (30, 0.6), (15, 0.5), (60, 0.3), (5, 0.2)])
def test_frame_buffer_spread_always_has_k_frames_over_the_window(fps, jitter):
    """At every arrival and between arrivals, with jittery frame times: never more than `spread_frames + 1` frames,
    none older than `max_seconds`, and once `max_seconds` of video has come, `window(max_seconds, k)` gives k frames
    for every k up to `spread_frames + 1`, spread over most of the window."""
    clock, rng = Clock(), random.Random(fps)
    spread, seconds = 7, 2.0
    buffer = FrameBuffer("s", max_frames=32, max_seconds=seconds, spread_frames=spread, clock=clock)
    start, interval = clock.now, 1 / fps
    checked = 0
    while clock.now - start < 12:
        buffer.put(frame())
        for step in (0.0, 0.5, 0.99):  # reads at the arrival and later, before the next frame
            read_at = clock.now + step * interval
            saved, clock.now = clock.now, read_at
            held = buffer.frames()
            assert len(held) <= spread + 1
            assert held[-1].seq == buffer.latest().seq
            assert all(read_at - f.received_at <= seconds for f in held[:-1])
            if read_at - start > seconds + 0.5:
                checked += 1
                for k in range(1, spread + 2):
                    picks = buffer.window(seconds, k)
                    assert len(picks) == k, (k, [round(read_at - f.received_at, 3) for f in held])
                span = picks[-1].received_at - picks[0].received_at
                assert span > 0.55 * seconds, span
            clock.now = saved
        clock.now += interval * (1 + rng.uniform(-jitter, jitter))
    assert checked > 20


def test_frame_buffer_spread_refuses_zero():
    from webrtc.errors import WebRTCConfigError

    with pytest.raises(WebRTCConfigError):
        FrameBuffer("s", spread_frames=0)
    with pytest.raises(WebRTCConfigError):
        WebRTCConfig(buffer_spread_frames=0)


@pytest.mark.webrtc
@pytest.mark.timeout(60)
async def test_frame_buffer_spread_live_stream_k_frames_over_the_window(webrtc_server_factory, stub_llm):
    """A real 640x480@30 aiortc stream: 8 frames held (not 32), k = 1..8 frames over the 2 s window, and a question
    for `agent.max_frames` frames sends the model 8 distinct frames (the stand-in LLM counts the images)."""
    from providers import create_provider
    from visual_agent.agent import VisualAgent
    from visual_agent.config_loading import parse_config
    from visual_agent.daemon import ingest_config
    from visual_agent.messages import Question

    config = ingest_config(parse_config({"webrtc": {"port": 0, "host_candidate_addresses": ["127.0.0.1"]}}))
    assert config.buffer_spread_frames == 7 and config.buffer_max_seconds == 2.0  # agent.max_frames - 1, window_s
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
        assert len(held) == 8, [round(f.age_s, 3) for f in held]
        megabytes = sum(f.frame.width * f.frame.height * 1.5 for f in held) / 1e6
        for k in range(1, 9):
            picks = buffer.window(2.0, k)
            assert len(picks) == k and picks[-1] is held[-1], k
            if k >= 2:
                assert picks[-1].received_at - picks[0].received_at > 1.2, k  # spread over the window
        provider = create_provider({"provider": "openai", "base_url": stub_llm.base_url, "model_name": stub_llm.model})
        agent = VisualAgent(llm=provider, webrtc_driver=server, provider_name="openai")
        try:
            answer = await agent.ask(Question(question="What moved?", source="cam", frames=8))
        finally:
            await agent.close()
            await provider.aclose()
    assert answer.error is None, answer.error
    assert len(answer.frames) == 8 and stub_llm.images_in_last_request() == 8
    ages = [f.age_s for f in answer.frames]
    assert ages == sorted(ages, reverse=True) and ages[0] - ages[-1] > 1.2, ages  # oldest first, over the window
    assert megabytes < 3.7  # 8 frames of 0.46 MB (32 consecutive frames were 14.7 MB and covered 1.07 s)


def test_frame_buffer_keeps_older_frames_small_and_the_newest_as_decoded():
    """With `older_max_side` the older frames are area-shrunk copies (same picture, pts, format, arrival order), the
    newest is the decoder's own frame; without it every frame stays as decoded."""
    clock = Clock()
    small = FrameBuffer("s", max_frames=32, max_seconds=2.0, spread_frames=7, older_max_side=512, clock=clock)
    full = FrameBuffer("f", max_frames=32, max_seconds=2.0, spread_frames=7, clock=clock)
    picture = np.zeros((720, 1280, 3), np.uint8)
    picture[:360, :640] = (230, 20, 20)  # red top-left quarter
    sent = {}
    for n in range(90):
        f = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
        f.pts = n * 3000
        sent[n * 3000] = f
        small.put(f)
        full.put(f)
        clock.now += 1 / 30
    held = small.frames()
    assert len(held) == len(full.frames()) == 8
    assert [b.seq for b in held] == [b.seq for b in full.frames()]
    assert held[-1].frame is sent[held[-1].pts]
    for b in held[:-1]:
        assert (b.width, b.height, b.frame.format.name) == (512, 288, "yuv420p")
        assert b.frame.pts == b.pts and b.frame is not sent[b.pts]
        rgb = b.frame.to_ndarray(format="rgb24")
        assert np.abs(rgb[40, 40].astype(int) - (230, 20, 20)).max() <= 8  # still red, still top-left
        assert rgb[250, 450].max() <= 8
    assert all((b.width, b.height) == (1280, 720) for b in full.frames())
    assert len(small.window(2.0, 8)) == 8
