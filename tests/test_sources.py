"""Configured sources: a video file (generated here with PyAV) plays into its FrameBuffer, in real time, looping."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.clips import FPS, write_video
from tests.fixtures.webrtc import offer_sdp
from tests.waiting import wait_until
from webrtc import SourceConfig, WebRTCConfig, WebRTCConfigError

pytestmark = [pytest.mark.webrtc, pytest.mark.timeout(60)]

async def test_sources_file_plays_into_buffer_in_real_time_and_loops(tmp_path, webrtc_server_factory):
    clip = write_video(tmp_path / "clip.mp4", 1.0)
    server = await webrtc_server_factory(
        WebRTCConfig(port=0, host_candidate_addresses=["127.0.0.1"]),
        [SourceConfig(name="clip", kind="file", url=str(clip), loop=True)],
    )
    assert server.source_names() == ["clip"]
    buf = server.get_buffer("clip")
    first = await buf.wait_for_frame(10)
    t0, seq0 = time.monotonic(), first.seq
    assert (first.width, first.height) == (160, 120)
    # more than two passes over the one-second clip
    await wait_until(lambda: buf.stats().tracks >= 3 and buf.stats().state == "live", timeout=30,
                     what="the clip reopened twice and playing")
    elapsed = time.monotonic() - t0
    st = buf.stats()
    played = buf.latest().seq - seq0
    print(f"\nfile source: {played} frames in {elapsed:.2f} s, stats {st}")
    # paced like the clip (30 fps), not as fast as the decoder can go (a load can only slow it down)
    assert played < 1.3 * FPS * elapsed
    assert st.state == "live" and server.health()["sources"]["clip"]["opens"] >= 3
    seq = buf.latest().seq  # and still going after the end: newer frames keep replacing the newest
    await wait_until(lambda: buf.latest().seq > seq, what="a newer frame after the reopen")
    await server.close()
    assert buf.drain_task is None


async def test_sources_file_without_loop_ends_and_keeps_last_frames(tmp_path, webrtc_server_factory):
    clip = write_video(tmp_path / "short.mp4", 0.5, audio=True)
    server = await webrtc_server_factory(sources=[SourceConfig(name="short", url=str(clip))])
    buf = server.get_buffer("short")
    await buf.wait_for_frame(10)
    runner = server._runners["short"]
    await wait_until(lambda: buf.state.value == "ended", 10, what="the file source ended")
    assert buf.stats().received == 15 and buf.latest() is not None  # every frame, then the end
    # the drain marks the end; the runner wakes after it (a loop turn or more), stops the player, returns
    await asyncio.wait_for(asyncio.shield(runner.task), 5)
    assert runner.task.done() and runner.player is None


async def test_sources_looping_file_without_frames_is_not_reopened_in_a_tight_loop(tmp_path, webrtc_server_factory):
    data = write_video(tmp_path / "clip.mkv", 0.3).read_bytes()
    empty = tmp_path / "empty.mkv"  # the header and the start of the first cluster: it opens, and gives no frame
    empty.write_bytes(data[: data.index(b"\x1f\x43\xb6\x75") + 16])
    started = time.monotonic()
    server = await webrtc_server_factory(sources=[SourceConfig(name="empty", url=str(empty), loop=True, retry_s=0.5)])
    await wait_until(lambda: server.health()["sources"]["empty"]["opens"] >= 3, 10, what="the empty file reopened twice")
    # Two waits of retry_s between the three opens (a tight loop would open it thousands of times a second).
    assert time.monotonic() - started >= 2 * 0.5
    health = server.health()["sources"]["empty"]
    assert health["running"] and "no video frame" in health["error"]


async def test_sources_missing_file_reports_clear_error(tmp_path, webrtc_server_factory):
    server = await webrtc_server_factory(sources=[SourceConfig(name="gone", url=str(tmp_path / "nope.mp4"))])
    buf = server.get_buffer("gone")
    with pytest.raises(TimeoutError, match="'gone'.*state: ended; last error:.*nope.mp4"):
        await buf.wait_for_frame(1.0)
    health = server.health()["sources"]["gone"]
    assert health["state"] == "ended" and "nope.mp4" in health["error"] and "cannot open" in health["error"]


async def test_sources_player_that_opens_after_the_timeout_is_stopped(tmp_path, webrtc_server_factory, monkeypatch):
    """Opening runs in a worker thread that a timeout cannot stop; what it opens late must be closed, not leaked."""
    import os
    import threading

    import webrtc.sources

    opened = []
    real_open = webrtc.sources.open_player

    def recording_open(config):
        player = real_open(config)
        opened.append(player)
        return player

    monkeypatch.setattr(webrtc.sources, "open_player", recording_open)
    data = write_video(tmp_path / "clip.ts", 0.3).read_bytes()
    fifo = tmp_path / "late.ts"
    os.mkfifo(fifo)  # opening a FIFO blocks until a writer comes: a camera that answers late

    def feed() -> None:
        with open(fifo, "wb") as w:
            w.write(data)

    writer = threading.Thread(target=feed, daemon=True)
    try:
        server = await webrtc_server_factory(sources=[SourceConfig(name="late", url=str(fifo), open_timeout_s=0.3)])
        buf = server.get_buffer("late")
        with pytest.raises(TimeoutError, match="state: ended; last error: opening took longer than 0.3 s"):
            await buf.wait_for_frame(1)
    finally:
        writer.start()  # the blocked open goes on now and returns a player nobody waits for any more
    await wait_until(lambda: opened and opened[0].video.readyState == "ended", 5, what="the late player stopped")
    writer.join(5)


def test_sources_config_rejects_bad_values():
    with pytest.raises(WebRTCConfigError, match="kind must be one of"):
        SourceConfig(name="x", kind="usb", url="/dev/video0")
    with pytest.raises(WebRTCConfigError, match="invalid source name"):
        SourceConfig(name="has space", url="a.mp4")
    with pytest.raises(WebRTCConfigError, match="url"):
        SourceConfig(name="x", kind="rtsp")
    with pytest.raises(WebRTCConfigError, match="unknown keys"):
        SourceConfig.from_mapping({"name": "x", "url": "a.mp4", "looping": True})
    cfg = SourceConfig(name="door", kind="rtsp", url="rtsp://admin:hunter2@10.0.0.5/stream")
    assert "hunter2" not in repr(cfg) and "***" in repr(cfg)
    # FFmpeg takes the last '@' before the path as the end of the password, so a password may hold '@'
    cfg = SourceConfig(name="door", kind="rtsp", url="rtsp://admin:p@ss:w0rd@10.0.0.5:554/stream?channel=1")
    assert "url='rtsp://admin:***@10.0.0.5:554/stream?channel=1'" in repr(cfg)


async def test_sources_unreachable_rtsp_reports_error_without_password(webrtc_server_factory):
    """No RTSP server runs here: a refused connection must give a clear error that hides the password."""
    cfg = SourceConfig(name="door", kind="rtsp", url="rtsp://admin:hunter2@127.0.0.1:9/stream", reconnect=False,
                       open_timeout_s=3, options={"rtsp_transport": "tcp"})
    server = await webrtc_server_factory(sources=[cfg])
    buf = server.get_buffer("door")
    await wait_until(lambda: buf.state.value == "ended", 8, what="the RTSP source ended")
    error = server.health()["sources"]["door"]["error"]
    assert "cannot open rtsp" in error and "hunter2" not in error and "***" in error


async def test_sources_configured_name_cannot_be_taken_by_a_peer(tmp_path, webrtc_server_factory):
    import aiohttp

    clip = write_video(tmp_path / "clip.mp4", 0.3)
    server = await webrtc_server_factory(sources=[SourceConfig(name="clip", url=str(clip))])
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + "/offer", json={"sdp": await offer_sdp(), "type": "offer", "source": "clip"}) as r:
            assert r.status == 409 and "configured source" in (await r.json())["error"]
    assert server.peers() == []
