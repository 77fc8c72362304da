"""REMB feedback throttled as libwebrtc sends it: aiortc's estimator, fed packets whose arrival delays grow (what a
late event loop sees), returns a REMB for nearly every packet; the throttled one at most every 200 ms, except drops."""

from __future__ import annotations

from webrtc import feedback


def late_arrivals(estimator, packets: int = 600) -> list[tuple[int, int]]:
    """30 packets a second sent on time but read ever later (2 ms more per packet, as behind a busy loop); the REMBs
    the estimator returns, with their arrival times."""
    sent = []
    for i in range(packets):
        send_ms = i * 33
        arrival_ms = 1_000_000 + send_ms + 2 * i
        abs_send_time = int(send_ms / 1000 * (1 << 18)) & 0xFFFFFF  # 6.18 fixed-point seconds, 24 bits
        remb = estimator.add(arrival_time_ms=arrival_ms, abs_send_time=abs_send_time, payload_size=1200, ssrc=1)
        if remb is not None:
            sent.append((arrival_ms, remb[0]))
    return sent


def test_a_late_loop_gets_a_remb_per_packet_from_aiortc_and_five_a_second_from_ours():
    from aiortc.rate import RemoteBitrateEstimator

    assert feedback.install() is True
    theirs = late_arrivals(RemoteBitrateEstimator())
    before = feedback.held_back
    ours = late_arrivals(feedback.ThrottledBitrateEstimator())
    seconds = (600 * 35) / 1000
    assert len(theirs) > 300  # "overusing": aiortc answers most packets with a REMB
    assert feedback.held_back - before == len(theirs) - len(ours)
    gaps = [(b[0] - a[0], b[1] / a[1]) for a, b in zip(ours, ours[1:])]
    assert all(gap >= feedback.MIN_INTERVAL_MS or ratio < feedback.SEND_AT_ONCE_DROP for gap, ratio in gaps)
    assert len(ours) <= seconds * 1000 / feedback.MIN_INTERVAL_MS + sum(r < feedback.SEND_AT_ONCE_DROP for _, r in gaps) + 1
    assert ours[0] == theirs[0]  # the first estimate goes out at once


def test_install_is_idempotent_and_replaces_aiortc_receivers_estimator():
    from aiortc import rtcrtpreceiver

    assert feedback.install() is True
    cls = rtcrtpreceiver.RemoteBitrateEstimator
    assert feedback.install() is True and rtcrtpreceiver.RemoteBitrateEstimator is cls is feedback.ThrottledBitrateEstimator
