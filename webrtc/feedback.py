"""Receiver bitrate feedback (REMB) at most five times a second per stream, as libwebrtc sends it.

aiortc's receiver feeds every video packet to its `RemoteBitrateEstimator` and sends a REMB each time the estimator
returns one. While the delay detector says "overusing", that is every packet: an RTCP packet, an SRTP protect and a
`sendto` per media packet. A daemon whose loop is late sees exactly that (packets are read late, so their arrival
delays grow), and the feedback then doubles its per-packet work: at 32 streams of 640x480 on 2 cores the REMB sends were
a fifth of the loop thread's samples (BENCHMARKS.md, "Many streams in one daemon"). libwebrtc sends REMB at most every
200 ms unless the estimate drops by 3 % or more; `ThrottledBitrateEstimator` does the same, keeping the estimator's
state updated by every packet and holding back only the packets it would have sent in between.

aiortc has no hook for it, so `install()` replaces the `RemoteBitrateEstimator` name its receiver module imported (as
`webrtc/loss.py` does for the jitter buffer). It is idempotent.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["MIN_INTERVAL_MS", "SEND_AT_ONCE_DROP", "ThrottledBitrateEstimator", "held_back", "install"]

logger = logging.getLogger(__name__)

MIN_INTERVAL_MS = 200
"""Least time between two REMBs of one stream, unless the estimate drops (libwebrtc's `kRembSendIntervalMs`)."""

SEND_AT_ONCE_DROP = 0.97
"""An estimate below this share of the last one sent goes out at once: a congested link hears it without delay."""

held_back = 0
"""REMBs held back by every `ThrottledBitrateEstimator` (the tests and benchmarks read it)."""


def _make_class() -> type:
    from aiortc.rate import RemoteBitrateEstimator

    class ThrottledBitrateEstimator(RemoteBitrateEstimator):
        """aiortc's estimator whose `add` returns a REMB at most every `MIN_INTERVAL_MS`, or when the estimate drops."""

        def __init__(self) -> None:
            super().__init__()
            self._sent_at_ms: int | None = None
            self._sent_bitrate: int | None = None

        def add(self, arrival_time_ms: int, abs_send_time: int, payload_size: int,
                ssrc: int) -> tuple[int, list[int]] | None:
            remb = super().add(arrival_time_ms, abs_send_time, payload_size, ssrc)
            if remb is None:
                return None
            now, bitrate = arrival_time_ms, remb[0]
            last_at, last_bitrate = self._sent_at_ms, self._sent_bitrate
            if (last_at is not None and last_bitrate is not None and now - last_at < MIN_INTERVAL_MS
                    and bitrate >= SEND_AT_ONCE_DROP * last_bitrate):
                global held_back
                held_back += 1
                return None
            self._sent_at_ms, self._sent_bitrate = now, bitrate
            return remb

    return ThrottledBitrateEstimator


ThrottledBitrateEstimator: Any = None
"""The class, made by `install()` (aiortc is imported only when a peer connects)."""


def install() -> bool:
    """Make aiortc's receivers use `ThrottledBitrateEstimator`; True when they do (now or already)."""
    global ThrottledBitrateEstimator
    try:
        from aiortc import rtcrtpreceiver
    except ImportError:
        return False
    current = getattr(rtcrtpreceiver, "RemoteBitrateEstimator", None)
    if current is not None and current is ThrottledBitrateEstimator:
        return True
    if current is None:
        logger.warning("aiortc.rtcrtpreceiver has no RemoteBitrateEstimator: its REMB feedback is not throttled")
        return False
    ThrottledBitrateEstimator = _make_class()
    setattr(rtcrtpreceiver, "RemoteBitrateEstimator", ThrottledBitrateEstimator)  # noqa: B010
    return True
