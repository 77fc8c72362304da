"""Repair a lost video packet within a tenth of a second: skip the broken frame and ask the sender for a keyframe.

aiortc's receiver hands its decoder only whole frames, in order, from a jitter buffer of 512 packets. A packet that
never arrives (the kernel dropped it from a full socket buffer, and the one NACK aiortc sends for it was not answered
in time) stops every later frame until 512 more packets have come, seconds at 640x480, and only then does the
receiver send a PLI (picture loss indication). `RepairingJitterBuffer` gives a gap `LOSS_WAIT_S` for the NACK's
retransmission; after that it drops the packets up to the first frame end after the gap (an RTP marker bit), so the
next frame starts clean, and reports picture loss, which aiortc's receiver turns into a PLI at once; the sender's
keyframe repairs the picture. While losses go on the reports back off (`PLI_INTERVAL_S` doubling to
`PLI_MAX_INTERVAL_S`), so an overloaded receiver does not add keyframe bursts to its load.
Until it arrives the decoder sees frames whose reference is missing (brief artefacts, as after aiortc's own overflow).

aiortc has no hook for its jitter buffer, so `install()` replaces the `JitterBuffer` name its receiver module imported
(as `webrtc/decoders.py` does for decoders). It is idempotent and leaves aiortc alone, with a warning, where the
buffer's insides are not what this subclass expects.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = ["LOSS_WAIT_S", "PLI_INTERVAL_S", "PLI_MAX_INTERVAL_S", "RepairingJitterBuffer", "gaps_skipped", "install"]

logger = logging.getLogger(__name__)

LOSS_WAIT_S = 0.1
"""How long a gap may stop a video stream before it is skipped: three frame intervals at 30 fps, several NACK round
trips on a LAN."""

PLI_INTERVAL_S = 0.5
"""Skips closer together than this report picture loss once: a keyframe asked for is on its way, and asking again
while it comes would only add keyframes (large bursts) to a link that is already losing packets."""

PLI_MAX_INTERVAL_S = 4.0
"""While losses go on (a report within two intervals of the last), the interval doubles up to this: an overloaded
receiver asking every stream for keyframes twice a second made the load worse (48 streams, BENCHMARKS.md)."""

gaps_skipped = 0
"""Gaps skipped by every `RepairingJitterBuffer` (the tests and benchmarks read it)."""

_EXPECTED = ("_origin", "_packets", "_capacity", "_is_video", "_remove_frame")


def _base() -> type:
    from aiortc.jitterbuffer import JitterBuffer

    return JitterBuffer


def _make_class() -> type:
    from aiortc.utils import uint16_add

    base = _base()

    class RepairingJitterBuffer(base):  # type: ignore[misc, valid-type]
        """aiortc's `JitterBuffer` that skips a video gap left unfilled for `wait_s` and reports it as picture loss."""

        def __init__(self, capacity: int, prefetch: int = 0, is_video: bool = False, *,
                     wait_s: float = LOSS_WAIT_S, clock: Callable[[], float] = time.monotonic) -> None:
            super().__init__(capacity, prefetch=prefetch, is_video=is_video)
            self.wait_s = wait_s
            self._clock = clock
            self._stalled_since: float | None = None
            self._newest: int | None = None
            self._reported_at: float | None = None
            self._interval = PLI_INTERVAL_S

        def add(self, packet: Any) -> tuple[bool, Any]:
            pli_flag, frame = super().add(packet)
            if not self._is_video:
                return pli_flag, frame
            if self._newest is None or uint16_add(packet.sequence_number, -self._newest) < 0x8000:
                self._newest = packet.sequence_number
            if frame is not None or self._origin is None:
                self._stalled_since = None
                return pli_flag, frame
            now = self._clock()
            if self._stalled_since is None:
                self._stalled_since = now
            elif now - self._stalled_since >= self.wait_s and packet.marker and self._skip_gap():
                self._stalled_since = None
                last = self._reported_at
                report = last is None or now - last >= self._interval
                if report:
                    lossy = last is not None and now - last < 2 * self._interval
                    self._interval = min(2 * self._interval, PLI_MAX_INTERVAL_S) if lossy else PLI_INTERVAL_S
                    self._reported_at = now
                return pli_flag or report, self._remove_frame(packet.sequence_number)
            return pli_flag, frame

        def _skip_gap(self) -> bool:
            """Drop everything up to the end of the frame after the first gap; False when there is no gap (a frame
            still arriving) or the frame after it has not ended yet. `add` calls it only when a frame end arrives:
            the scan walks the buffer (up to `capacity` packets), too dear for every packet of a stalled stream."""
            assert self._origin is not None and self._newest is not None
            span = uint16_add(self._newest, -self._origin)
            if span >= self._capacity:
                return False
            gap = False
            for count in range(span + 1):
                packet = self._packets[(self._origin + count) % self._capacity]
                if packet is None:
                    gap = True
                elif gap and packet.marker:
                    self.remove(count + 1)
                    global gaps_skipped
                    gaps_skipped += 1
                    return True
            return False

    return RepairingJitterBuffer


RepairingJitterBuffer: Any = None
"""The class, made by `install()` (aiortc is imported only when a peer connects)."""


def install() -> bool:
    """Make aiortc's receivers use `RepairingJitterBuffer`; True when they do (now or already)."""
    global RepairingJitterBuffer
    try:
        from aiortc import rtcrtpreceiver
    except ImportError:
        return False
    current = getattr(rtcrtpreceiver, "JitterBuffer", None)
    if current is not None and current is RepairingJitterBuffer:
        return True
    probe = _base()(capacity=16, is_video=True)
    missing = [name for name in _EXPECTED if not hasattr(probe, name)]
    if current is None or missing:
        logger.warning("aiortc's jitter buffer is not as expected (%s): lost packets wait for its own overflow",
                       ", ".join(missing) or "no JitterBuffer in rtcrtpreceiver")
        return False
    RepairingJitterBuffer = _make_class()
    setattr(rtcrtpreceiver, "JitterBuffer", RepairingJitterBuffer)  # noqa: B010 (mypy: a module attribute that is a class)
    return True
