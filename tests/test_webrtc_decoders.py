"""webrtc.decoders: FFmpeg's own VP8 decoder (one thread) gives the very pixels aiortc's libvpx decoder gives, and
the server's receivers use it."""

from __future__ import annotations

import fractions
import threading
from dataclasses import dataclass

import av
import numpy as np
import pytest

from tests.fixtures.webrtc import CounterVideoTrack, encode_moving_clip, publish
from webrtc import decoders
from webrtc.decode_pool import DECODE_THREADS, PooledDecodeQueue, is_keyframe
from webrtc.decoders import FFmpegVideoDecoder


@dataclass
class EncodedFrame:
    """What aiortc's jitter buffer hands a decoder: the frame's bytes and its RTP timestamp."""

    data: bytes
    timestamp: int


def encoded_clip(codec: str, frames: int = 45) -> list[EncodedFrame]:
    """A moving 640x480 clip (a scrolling band and a square, as a camera) through a real encoder, a keyframe every
    30 frames (golden/reference updates both ways)."""
    packets = encode_moving_clip(codec, 640, 480, 30, frames, gop=30, bit_rate=1_000_000)
    return [EncodedFrame(bytes(p), (p.pts or 0) * 3000) for p in packets]


def planes(frame: av.VideoFrame) -> list[np.ndarray]:
    return [np.frombuffer(bytes(p), np.uint8) for p in frame.planes]


@pytest.mark.parametrize(("encoder", "reference"), [("libvpx", "libvpx"), ("libx264", "h264")])
def test_decoders_give_the_same_pixels_as_aiortc_own(encoder, reference):
    """Frame by frame, plane by plane, byte for byte: libvpx (what aiortc uses for VP8) against FFmpeg's vp8, and
    FFmpeg's h264 with its default threads against one thread."""
    clip = encoded_clip(encoder)
    theirs = av.CodecContext.create(reference, "r")
    ours = FFmpegVideoDecoder("vp8" if encoder == "libvpx" else "h264")
    assert ours.codec.thread_count == 1
    compared = 0
    for packet in clip:
        expected = theirs.decode(av.Packet(packet.data))
        got = ours.decode(packet)
        assert len(got) == len(expected)
        for a, b in zip(got, expected, strict=True):
            assert (a.width, a.height, a.format.name) == (b.width, b.height, b.format.name)
            assert all(np.array_equal(x, y) for x, y in zip(planes(a), planes(b), strict=True)), compared
            assert a.pts == packet.timestamp and a.time_base == fractions.Fraction(1, 90_000)
            compared += 1
    assert compared >= 40


def test_decoders_install_wraps_aiortc_once_and_leaves_audio_to_it():
    from aiortc import rtcrtpreceiver
    from aiortc.codecs.opus import OpusDecoder
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    assert decoders.install() is True
    wrapper = rtcrtpreceiver.get_decoder
    assert decoders.install() is True and rtcrtpreceiver.get_decoder is wrapper  # not wrapped twice
    assert rtcrtpreceiver.decoder_worker is decoders.pooled_worker
    assert rtcrtpreceiver.queue.Queue is PooledDecodeQueue  # the receivers' decoder queues are the pool's
    vp8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    opus = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
    before = decoders.decoders_made["vp8"]
    made = wrapper(vp8)
    assert isinstance(made, FFmpegVideoDecoder) and made.codec.name == "vp8"
    assert decoders.decoders_made["vp8"] == before + 1
    assert isinstance(wrapper(opus), OpusDecoder)


@pytest.mark.webrtc
@pytest.mark.timeout(60)
async def test_decoders_serve_the_server_receivers(webrtc_server):
    """A real VP8 stream into the server is decoded by FFmpeg's vp8 decoder, and its frames arrive whole."""
    before = decoders.decoders_made["vp8"]
    track = CounterVideoTrack(320, 240, 30, moving=True)
    async with publish(webrtc_server.url, track, source="cam", codec="VP8"):
        buffer = webrtc_server.get_buffer("cam")
        first = await buffer.wait_for_frame(10)
        newest = await buffer.wait_for_frame(10, newer_than=first.seq + 10)
        per_stream = [t for t in threading.enumerate() if t.name == "video-decoder"]
        pool = [t for t in threading.enumerate() if t.name.startswith("video-decode-")]
    assert not per_stream and len(pool) == DECODE_THREADS  # no thread per stream: the shared pool decoded it
    assert decoders.decoders_made["vp8"] == before + 1
    assert (newest.width, newest.height, newest.frame.format.name) == (320, 240, "yuv420p")


def test_the_hand_over_keeps_the_newest_frames_when_the_loop_is_behind():
    """`_deliver` runs on the loop: past MAX_QUEUED_FRAMES the oldest go, the newest and the end-of-track stay."""
    import asyncio

    q: asyncio.Queue = asyncio.Queue()
    before = decoders.frames_dropped_behind
    for i in range(10):
        decoders._deliver(q, i)
    decoders._deliver(q, None)
    got = [q.get_nowait() for _ in range(q.qsize())]
    kept = decoders.MAX_QUEUED_FRAMES - 1  # the end of the track takes a place too
    assert got == [*range(10 - kept, 10), None] and decoders.frames_dropped_behind == before + 10 - kept


def test_the_mailbox_holds_the_newest_frames_and_wakes_the_loop_once_while_it_is_busy():
    """A decoder thread posting 100 frames while the loop is busy: one wake-up pending, the newest MAX_QUEUED_FRAMES
    kept, in order, and the end of the track after them."""
    import asyncio

    async def run() -> tuple[list, int]:
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        mailbox = decoders._Mailbox(loop, q)
        scheduled = []
        real = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda cb, *a: scheduled.append(cb) or real(cb, *a)  # type: ignore[method-assign]
        thread = threading.Thread(target=lambda: ([mailbox.post(i) for i in range(100)], mailbox.end()))
        thread.start()
        thread.join()  # the loop has not run meanwhile: everything waits in the mailbox
        got = [await asyncio.wait_for(q.get(), 5) for _ in range(decoders.MAX_QUEUED_FRAMES + 1)]
        return got, len(scheduled)

    got, wakeups = asyncio.run(run())
    assert got[-1] is None and got[:-1] == list(range(100 - decoders.MAX_QUEUED_FRAMES, 100))
    assert wakeups == 2  # one drain, one end


class _Collect:
    """A mailbox stand-in that records what the pool hands over, with the thread that handed it (no loop needed)."""

    def __init__(self) -> None:
        self.frames: list[int | None] = []
        self.threads: set[str] = set()
        self.done = threading.Event()

    def post(self, frame: av.VideoFrame) -> None:
        self.frames.append(frame.pts)
        self.threads.add(threading.current_thread().name)

    def end(self) -> None:
        self.frames.append(None)
        self.done.set()


def test_the_pool_decodes_many_streams_in_order_on_its_few_threads():
    """Eight real VP8 streams through `PooledDecodeQueue`s: every frame decoded once, each stream's in order, the end
    of each track after its frames (even frames put before `attach`, as when a packet beats the receiver's thread),
    and only the pool's threads decoding."""
    from aiortc import rtcrtpreceiver
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    assert decoders.install() is True
    vp8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    clip = encoded_clip("libvpx", frames=30)
    streams = [(rtcrtpreceiver.queue.Queue(), _Collect(), threading.Event()) for _ in range(8)]
    for index, (q, sink, error) in enumerate(streams):
        if index % 2:
            q.attach(sink, error)
        for packet in clip:
            q.put((vp8, packet))
        q.put(None)
        q.put((vp8, clip[0]))  # after the end: ignored
    for q, sink, error in streams[::2]:
        q.attach(sink, error)
    for _, sink, error in streams:
        assert sink.done.wait(30)
        assert sink.frames == [p.timestamp for p in clip] + [None] and not error.is_set()
        assert sink.threads <= {f"video-decode-{i}" for i in range(DECODE_THREADS)}


@pytest.mark.parametrize(("encoder", "name"), [("libvpx", "VP8"), ("libx264", "H264")])
def test_keyframes_are_told_apart_from_the_frames_that_need_them(encoder, name):
    """The pool's resume point: real encoders' frames, a keyframe every 30 (as `encoded_clip` makes them)."""
    clip = encoded_clip(encoder, frames=61)
    assert [i for i, p in enumerate(clip) if is_keyframe(name, p.data)] == [0, 30, 60]


def test_a_stream_too_far_behind_drops_its_backlog_asks_for_a_keyframe_and_resumes_there():
    """More than MAX_PENDING_FRAMES waiting (here: a stream not yet served) are dropped, a keyframe is asked for (the
    decode-error flag aiortc's receiver turns into a PLI), frames until the next keyframe are dropped too, and
    decoding resumes at that keyframe, in order: bounded, where aiortc's queue grew without end."""
    from aiortc import rtcrtpreceiver
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    from webrtc import decode_pool

    assert decoders.install() is True
    vp8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    clip = encoded_clip("libvpx", frames=75)  # keyframes at 0, 30 and 60
    q, sink, error = rtcrtpreceiver.queue.Queue(), _Collect(), threading.Event()
    before = decode_pool.frames_dropped_pending
    for packet in clip[:45]:  # the 31st put finds 30 waiting
        q.put((vp8, packet))
    q.put(None)
    q.attach(sink, error)
    assert error.is_set()  # a keyframe asked for (the stream's own came next here)
    assert sink.done.wait(30)
    # frames 0-29 dropped at the 31st (frame 30, itself a keyframe: decoding resumes there)
    assert sink.frames == [p.timestamp for p in clip[30:45]] + [None]
    assert decode_pool.frames_dropped_pending == before + 30


def test_a_backlog_dropped_between_keyframes_waits_for_the_next_one():
    from aiortc import rtcrtpreceiver
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    from webrtc import decode_pool

    assert decoders.install() is True
    vp8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    clip = encoded_clip("libvpx", frames=75)
    q, sink, error = rtcrtpreceiver.queue.Queue(), _Collect(), threading.Event()
    before = decode_pool.frames_dropped_pending
    for packet in clip[1:]:  # 1-29 wait, the 31st put (frame 31) overflows; 31-59 are dropped; 60 resumes
        q.put((vp8, packet))
    q.attach(sink, error)
    q.put(None)
    assert sink.done.wait(30)
    assert sink.frames == [p.timestamp for p in clip[60:]] + [None] and error.is_set()
    assert decode_pool.frames_dropped_pending == before + 30 + 29
