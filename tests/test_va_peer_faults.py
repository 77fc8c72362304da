"""Peer faults, with real aiortc peers over loopback and the agent reading the server's buffers: a publisher that
vanishes without a goodbye (its process SIGKILLed) is freed within `webrtc.peer_idle_timeout_s`; a reconnect never
serves the old connection's frames; a question that arrives before a source's first frame waits for it up to
`agent.frame_wait_s`; a file source that ends still answers from its last frames, saying their age.

The LLM is the STAND-IN of tests/fixtures/llm_stub.py (these tests are about frames, not the model); it records the
images it got, so a test can see which connection's frame reached the "model".
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import signal
import sys

import av
import numpy as np
import pytest

from providers import create_provider
from tests.fixtures.frames import Buffers
from tests.fixtures.webrtc import CounterVideoTrack, publish, tasks_now
from tests.waiting import wait_until
from visual_agent.agent import VisualAgent
from visual_agent.config import AgentConfig
from visual_agent.messages import Question
from webrtc import SourceConfig, WebRTCConfig

pytestmark = [pytest.mark.webrtc, pytest.mark.timeout(90)]

IDLE_S = 2.0


def _config(**kw) -> WebRTCConfig:
    return WebRTCConfig(port=0, host_candidate_addresses=["127.0.0.1"], peer_idle_timeout_s=IDLE_S,
                        connect_timeout_s=5.0, **kw)


@contextlib.asynccontextmanager
async def publisher_process(base_url: str, source: str, via: str = "offer", size: tuple[int, int] = (160, 120)):
    """A publisher in its own process; yields (process, its JSON hello). Killed (SIGKILL) on exit if still there."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fixtures.peer_process", base_url, source, via, str(size[0]), str(size[1]),
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line, "the publisher process ended before it connected"
        yield proc, json.loads(line)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


class PausedTrack(CounterVideoTrack):
    """Sends no frame until `go` is set (a publisher whose first frame is late)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.go = asyncio.Event()

    async def recv(self):
        await self.go.wait()
        return await super().recv()


def _sent_image_size(stub) -> tuple[int, int]:
    url = stub.requests[-1]["messages"][-1]["content"][1]["image_url"]["url"]
    data = base64.b64decode(url.split(",", 1)[1])
    with av.open(io.BytesIO(data)) as container:
        frame = next(container.decode(video=0))
    return frame.width, frame.height


def _agent(stub, driver, **agent_kw) -> tuple[VisualAgent, object]:
    llm = create_provider({"provider": "openai", "base_url": stub.base_url, "model_name": "stub-model", "max_retries": 0})
    return VisualAgent(llm=llm, webrtc_driver=driver, config=AgentConfig(**agent_kw)), llm


@pytest.mark.parametrize("via", ["offer", "whip"])
async def test_peer_publisher_killed_without_goodbye_is_freed_within_idle_timeout(webrtc_server_factory, via):
    server = await webrtc_server_factory(_config())
    before = tasks_now()
    async with publisher_process(server.url, "gone", via) as (proc, hello):
        await server.get_buffer("gone").wait_for_frame(15)
        assert [p.id for p in server.peers()] == [hello["peer_id"]]
        proc.send_signal(signal.SIGKILL)  # no DTLS close, no RTCP BYE, no WHIP DELETE
        await proc.wait()
        killed_at = asyncio.get_running_loop().time()
        await wait_until(lambda: server.peers() == [], timeout=IDLE_S + 5, what="the vanished peer dropped")
        freed_after = asyncio.get_running_loop().time() - killed_at
    assert freed_after <= IDLE_S + 1.5, freed_after  # the idle watchdog, not ICE's 30 s consent expiry
    assert server.get_buffer("gone").state.value == "ended"
    assert server.health()["peers"] == []
    await wait_until(lambda: tasks_now() <= before, timeout=5, what="the peer's tasks ended")


async def test_peer_reconnect_after_vanishing_never_serves_old_frames(webrtc_server_factory, stub_llm):
    """The old connection's frames are fresh in the buffer when the publisher reconnects: a question asked after
    the reconnect waits for the new connection's first frame and never gets one of the old."""
    server = await webrtc_server_factory(_config())
    agent, llm = _agent(stub_llm, server, frame_wait_s=20, question_timeout_s=30)
    try:
        async with publisher_process(server.url, "door", size=(160, 120)) as (proc, hello):
            await server.get_buffer("door").wait_for_frame(15)
            proc.send_signal(signal.SIGKILL)  # gone without a goodbye; its frames stay in the buffer
            await proc.wait()
            assert server.get_buffer("door").latest().width == 160
            late = PausedTrack(320, 240, 30)
            async with publish(server.url, late, source="door", replaces=hello["secret"]):
                asking = asyncio.create_task(agent.ask(Question(question="who is at the door?", source="door")))
                buffer = server.get_buffer("door")
                await wait_until(lambda: buffer._new_frame is not None or asking.done(), timeout=10,
                                 what="the question waiting for the new connection's first frame")
                assert not asking.done(), asking.result()
                late.go.set()
                answer = await asyncio.wait_for(asking, 30)
        assert answer.error is None, answer.error
        assert _sent_image_size(stub_llm) == (320, 240)  # the new connection's frame, never the old 160x120
    finally:
        await agent.close()
        await llm.aclose()


async def test_peer_question_before_the_first_frame_waits_for_it(stub_llm):
    """`agent.frame_wait_s`: a question to a source with no frame yet is answered once the first frame comes."""

    camera = Buffers("cam")
    agent, llm = _agent(stub_llm, camera, frame_wait_s=20)
    try:
        asking = asyncio.create_task(agent.ask(Question(question="anything?")))
        await wait_until(lambda: camera.get_buffer("cam")._new_frame is not None or asking.done(), timeout=5,
                         what="the question waiting for a frame")
        assert not asking.done(), asking.result()
        camera.get_buffer("cam").put(av.VideoFrame.from_ndarray(np.zeros((60, 80, 3), np.uint8), format="rgb24"))
        answer = await asyncio.wait_for(asking, 20)
    finally:
        await agent.close()
        await llm.aclose()
    assert answer.error is None and answer.text == stub_llm.reply
    assert _sent_image_size(stub_llm) == (80, 60)


async def test_peer_file_source_that_ended_answers_from_its_last_frame_with_its_age(tmp_path, webrtc_server_factory,
                                                                                    stub_llm):
    from tests.clips import write_video

    clip = write_video(tmp_path / "short.mp4", 0.5)
    server = await webrtc_server_factory(sources=[SourceConfig(name="short", url=str(clip))])
    buffer = server.get_buffer("short")
    await wait_until(lambda: buffer.state.value == "ended", timeout=15, what="the file source ended")
    assert server.health()["sources"]["short"]["state"] == "ended"
    agent, llm = _agent(stub_llm, server, frame_wait_s=0.5)
    try:
        await wait_until(lambda: buffer.latest().age_s > 0.2, timeout=5, what="the last frame aged")
        answer = await agent.ask(Question(question="what was there?", source="short"))
    finally:
        await agent.close()
        await llm.aclose()
    assert answer.error is None and answer.frames and answer.frames[-1].age_s > 0.2  # says how old the view is
