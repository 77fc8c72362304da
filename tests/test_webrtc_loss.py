"""webrtc.loss and webrtc.sockets: a lost video packet is skipped within `LOSS_WAIT_S` and reported as picture loss
(aiortc then sends a PLI), a late retransmission or a slow frame is not; aioice's media sockets get the larger receive
buffer, and a kernel cap is logged."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
from aiortc.rtp import RtpPacket

from webrtc import loss, sockets

PACKETS_PER_FRAME = 4


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def frame_packets(first_seq: int, frame: int) -> list[RtpPacket]:
    """One video frame's packets, as aiortc's receiver hands them to its jitter buffer (payload depayloaded)."""
    packets = []
    for i in range(PACKETS_PER_FRAME):
        p = RtpPacket(payload_type=96, marker=int(i == PACKETS_PER_FRAME - 1),
                      sequence_number=(first_seq + i) & 0xFFFF, timestamp=frame * 3000, ssrc=1)
        p._data = bytes([frame & 0xFF, i])  # type: ignore[attr-defined]
        packets.append(p)
    return packets


def feed(buffer, packets, clock: Clock, step: float = 0.033 / PACKETS_PER_FRAME) -> list[tuple[bool, int | None]]:
    """(pli_flag, frame number or None) for each packet added."""
    out = []
    for p in packets:
        clock.now += step
        pli, frame = buffer.add(p)
        out.append((pli, None if frame is None else frame.timestamp // 3000))
    return out


@pytest.fixture
def buffer_class():
    assert loss.install() is True
    return loss.RepairingJitterBuffer


@pytest.mark.parametrize("first_seq", [100, 65_530])  # and across the 16-bit wrap
def test_a_lost_packet_is_skipped_after_the_wait_and_reported(buffer_class, first_seq):
    clock = Clock()
    buffer = buffer_class(capacity=512, is_video=True, clock=clock)
    packets = [p for f in range(40) for p in frame_packets(first_seq + f * PACKETS_PER_FRAME, f)]
    lost = 5 * PACKETS_PER_FRAME + 1  # the second packet of frame 5
    before = loss.gaps_skipped
    results = feed(buffer, packets[:lost] + packets[lost + 1:], clock)
    frames = [f for _, f in results if f is not None]
    assert frames[:5] == [0, 1, 2, 3, 4]
    assert 5 not in frames, "a frame with a hole went to the decoder"
    # frame 5's own marker ends the skip; frame 6 on come out, the first once the gap is older than LOSS_WAIT_S
    # (about 3 frame intervals, where aiortc alone waits for 512 more packets)
    assert frames[5:] == list(range(6, 39))
    resumed_at = next(i for i, (_, f) in enumerate(results) if f == 6)
    assert (resumed_at - lost) * 0.033 / PACKETS_PER_FRAME <= loss.LOSS_WAIT_S + 0.033
    assert sum(pli for pli, _ in results) == 1 and loss.gaps_skipped == before + 1


def test_gaps_close_together_ask_for_one_keyframe(buffer_class):
    clock = Clock()
    buffer = buffer_class(capacity=512, is_video=True, clock=clock)
    packets = [p for f in range(60) for p in frame_packets(f * PACKETS_PER_FRAME, f)]
    lost = {5 * PACKETS_PER_FRAME, 10 * PACKETS_PER_FRAME, 40 * PACKETS_PER_FRAME}  # 0.17 s apart, then 1 s later
    before = loss.gaps_skipped
    results = feed(buffer, [p for i, p in enumerate(packets) if i not in lost], clock)
    assert loss.gaps_skipped == before + 3
    assert sum(pli for pli, _ in results) == 2


def test_lasting_loss_asks_for_keyframes_ever_less_often(buffer_class):
    """A packet lost every 6 frames for 10 s: every gap is skipped, but the keyframe requests back off (0.5, 1, 2, 4 s
    apart) instead of 2 a second."""
    clock = Clock()
    buffer = buffer_class(capacity=512, is_video=True, clock=clock)
    packets = [p for f in range(300) for p in frame_packets(f * PACKETS_PER_FRAME, f)]
    lost = {f * PACKETS_PER_FRAME + 1 for f in range(6, 300, 6)}
    before = loss.gaps_skipped
    results = feed(buffer, [p for i, p in enumerate(packets) if i not in lost], clock)
    assert loss.gaps_skipped - before >= 45
    assert 4 <= sum(pli for pli, _ in results) <= 6


def test_a_retransmission_in_time_fills_the_gap(buffer_class):
    clock = Clock()
    buffer = buffer_class(capacity=512, is_video=True, clock=clock)
    packets = [p for f in range(12) for p in frame_packets(1000 + f * PACKETS_PER_FRAME, f)]
    lost = 3 * PACKETS_PER_FRAME
    order = packets[:lost] + packets[lost + 1: lost + 6] + [packets[lost]] + packets[lost + 6:]  # NACK answered
    results = feed(buffer, order, clock)
    assert [f for _, f in results if f is not None] == list(range(11))
    assert not any(pli for pli, _ in results)


def test_a_slow_frame_without_a_gap_is_waited_for(buffer_class):
    """A large keyframe on a slow link takes longer than the wait: nothing is missing, so nothing is skipped."""
    clock = Clock()
    buffer = buffer_class(capacity=512, is_video=True, clock=clock)
    packets = [p for f in range(3) for p in frame_packets(f * PACKETS_PER_FRAME, f)]
    results = feed(buffer, packets, clock, step=0.5)
    assert [f for _, f in results if f is not None] == [0, 1]
    assert not any(pli for pli, _ in results)


def test_install_is_idempotent_and_audio_buffers_pass_through(buffer_class):
    from aiortc import rtcrtpreceiver

    assert loss.install() is True and rtcrtpreceiver.JitterBuffer is buffer_class
    audio = buffer_class(capacity=16, prefetch=4)
    clock_free = [audio.add(p) for p in frame_packets(0, 0)]
    assert all(frame is None and not pli for pli, frame in clock_free)


def test_media_sockets_get_the_receive_buffer_asked_for(monkeypatch):
    import asyncio

    import aioice
    from aioice import turn

    monkeypatch.setattr(sockets, "installed_rcvbuf", None)
    monkeypatch.setattr(turn, "UDP_SOCKET_BUFFER_SIZE", 262144)
    assert sockets.install() == 262144  # None: aioice's own size
    size = sockets.install(1 << 20)
    assert size == 1 << 20 and sockets.install(2 << 20) == size  # the first size set stays

    async def bind() -> int:
        connection = aioice.Connection(ice_controlling=True, components=1)
        await connection.get_component_candidates(component=1, addresses=["127.0.0.1"])
        try:
            sock = connection._protocols[0].transport.get_extra_info("socket")
            return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        finally:
            await connection.close()

    assert asyncio.run(bind()) == 2 * size  # Linux reports the doubled bookkeeping size


def test_media_datagrams_skip_the_stun_parse_and_stun_still_works(monkeypatch):
    """An RTP datagram reaches the ICE connection's queue without a STUN parse; a STUN request is still parsed."""
    import asyncio

    import aioice
    from aioice import ice, stun

    assert sockets.install_media_demux() is True
    wrapped = ice.StunProtocol.datagram_received
    assert sockets.install_media_demux() is True and ice.StunProtocol.datagram_received is wrapped
    parsed = []
    real_parse = stun.parse_message
    monkeypatch.setattr(stun, "parse_message", lambda data: parsed.append(data) or real_parse(data))

    async def run() -> tuple[object, int]:
        connection = aioice.Connection(ice_controlling=True, components=1)
        await connection.get_component_candidates(component=1, addresses=["127.0.0.1"])
        try:
            protocol = connection._protocols[0]
            rtp = bytes([0x80, 0x60]) + bytes(100)
            protocol.datagram_received(rtp, ("127.0.0.1", 9))
            got = await asyncio.wait_for(connection._queue.get(), 5)
            request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
            protocol.datagram_received(bytes(request), ("127.0.0.1", 9))  # no credentials: answered with an error
            return got, len(parsed)
        finally:
            await connection.close()

    got, parses = asyncio.run(run())
    assert got == (bytes([0x80, 0x60]) + bytes(100), 1)
    assert parses == 1  # only the STUN request


def test_a_kernel_cap_is_logged(caplog, monkeypatch):
    from aioice import turn

    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    monkeypatch.setattr(sockets, "installed_rcvbuf", None)
    monkeypatch.setattr(turn, "UDP_SOCKET_BUFFER_SIZE", 262144)
    with caplog.at_level(logging.WARNING, logger="webrtc.sockets"):
        size = sockets.install(wanted=2 * rmem_max)
    assert size == rmem_max
    assert "net.core.rmem_max" in caplog.text and str(rmem_max // 1024) in caplog.text


@pytest.mark.webrtc
@pytest.mark.timeout(60)
async def test_a_packet_lost_for_good_costs_a_keyframe_not_the_stream(webrtc_server):
    """A real aiortc publisher whose one RTP packet (and every retransmission of it) never arrives: the server's
    receiver skips the broken frame, asks the publisher's encoder for a keyframe, and frames keep coming. aiortc alone
    stalls until 512 more packets have come (seconds at this bitrate) and the wait below fails."""
    from aiortc.rtp import is_rtcp

    from tests.fixtures.webrtc import CounterVideoTrack, publish
    from tests.waiting import wait_until

    track = CounterVideoTrack(320, 240, 30, moving=True)
    async with publish(webrtc_server.url, track, source="cam", codec="VP8") as publisher:  # VP8 alone: no RTX
        buffer = webrtc_server.get_buffer("cam")
        await buffer.wait_for_frame(10)
        sender = next(s for s in publisher.pc.getSenders() if s.track is track)
        transport, lost, keyframes = sender.transport, [], []
        send, send_keyframe = transport._send_rtp, sender._send_keyframe

        async def lossy(data: bytes) -> None:
            if not is_rtcp(data):
                seq = int.from_bytes(data[2:4], "big")
                if not lost and not data[1] & 0x80:  # a packet inside a frame (not its last)
                    lost.append(seq)
                if lost and seq == lost[0]:
                    return  # lost, and so is every retransmission the NACK asks for
            await send(data)

        def keyframe_asked() -> None:
            keyframes.append(buffer.latest().seq)
            send_keyframe()

        skipped = loss.gaps_skipped
        transport._send_rtp = lossy
        sender._send_keyframe = keyframe_asked
        await wait_until(lambda: bool(lost), timeout=5, what="a packet to lose")
        at_loss = buffer.latest().seq
        after = await buffer.wait_for_frame(5, newer_than=at_loss + 15)
    assert after.seq > at_loss + 15
    assert loss.gaps_skipped > skipped and keyframes, (loss.gaps_skipped, skipped, keyframes)


def test_a_stalled_stream_scans_its_buffer_once_per_frame_end_not_per_packet(buffer_class):
    """While a gap waits for a frame end to skip to, each packet must not walk the whole buffer (up to 512 packets
    of Python per packet, on the loop's thread, for every stalled stream): the scan runs only when a marker arrives."""
    scans = []

    class Counting(buffer_class):
        def _skip_gap(self) -> bool:
            scans.append(1)
            return super()._skip_gap()

    clock = Clock()
    buffer = Counting(capacity=512, is_video=True, clock=clock)
    packets = [p for f in range(60) for p in frame_packets(100 + f * PACKETS_PER_FRAME, f)]
    lost = 5 * PACKETS_PER_FRAME + 1
    fed = packets[:lost] + packets[lost + 1:]
    results = feed(buffer, fed, clock, step=0.2)  # so slow that every frame still arriving looks stalled
    assert [f for _, f in results if f is not None][5:] == list(range(6, 59))
    assert 1 <= len(scans) <= sum(p.marker for p in fed)  # per packet it would be about three times as many
