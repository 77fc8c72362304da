"""Small SDP helpers: a first sanity check of offers, and Chromium bitrate hints in answers."""

from __future__ import annotations

import re

from .errors import SignalingError

__all__ = ["add_bitrate_hint", "check_offer_sdp"]

_RTPMAP = re.compile(r"^a=rtpmap:(\d+) (VP8|VP9|H264|AV1)/", re.IGNORECASE)


def check_offer_sdp(sdp: object) -> str:
    """Return `sdp` if it looks like a complete SDP offer, else raise `SignalingError` (400) saying why.

    aiortc parses the rest; this catches the obvious cases (empty, not text, truncated before any media
    section or before the ICE/DTLS attributes) with a message a person can act on.
    """
    if not isinstance(sdp, str) or not sdp.strip():
        raise SignalingError("malformed offer: 'sdp' must be a non-empty string")
    text = sdp.replace("\r\n", "\n")
    if not text.startswith("v=0"):
        raise SignalingError("malformed SDP offer: it must start with 'v=0'")
    if "\nm=" not in text:
        raise SignalingError("malformed SDP offer: no media section (m=) - truncated?")
    for needed, what in (("a=ice-ufrag:", "ICE credentials (a=ice-ufrag)"), ("a=fingerprint:", "DTLS fingerprint")):
        if needed not in text:
            raise SignalingError(f"malformed SDP offer: no {what} - truncated?")
    return sdp


def add_bitrate_hint(sdp: str, kbps: int | None) -> str:
    """Add ``x-google-start-bitrate``/``x-google-min-bitrate`` to each video codec of an answer.

    Chromium reads them from the remote description; without them it starts low and scales 720p down
    for many seconds. Other browsers ignore them.
    """
    if not kbps:
        return sdp
    hint = f"x-google-start-bitrate={int(kbps)};x-google-min-bitrate={max(1, int(kbps) // 2)}"
    lines = sdp.split("\r\n")
    fmtp = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"^a=fmtp:(\d+) ", line))}
    out = list(lines)
    inserts: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        m = _RTPMAP.match(line)
        if not m:
            continue
        pt = m.group(1)
        if pt in fmtp:
            j = fmtp[pt]
            if "x-google-" not in out[j]:
                out[j] = out[j] + ";" + hint
        else:
            inserts.append((i + 1, f"a=fmtp:{pt} {hint}"))
    for index, text in reversed(inserts):
        out.insert(index, text)
    return "\r\n".join(out)
