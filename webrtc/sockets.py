"""The media sockets: hand media datagrams on without a STUN parse, and optionally a larger kernel receive buffer.

aioice parses every datagram a media socket receives as a STUN message and passes it on when the parse raises: an
exception per RTP packet on the event loop's thread. The first byte already tells them apart (RFC 7983: STUN 0-3,
DTLS 20-63, RTP/RTCP 128-191), so `install_media_demux()` sends a datagram whose first byte is not STUN's straight where
aioice's own fallback sends it.

aioice sizes each media socket with `SO_RCVBUF` = `aioice.turn.UDP_SOCKET_BUFFER_SIZE` (256 KiB; Linux doubles it),
read at every bind. `install(size)` sets it to `size` where the kernel grants it (`net.core.rmem_max` caps an
unprivileged request; a warning says so). Measured here (BENCHMARKS.md, "Many streams in one daemon"), the default
already holds 2.7 s of a 640x480 stream: datagrams are dropped only when the loop is seconds behind, and a larger
buffer then turns loss into delay. With 8 MiB at 8 overloaded 720p streams each socket held 7 MB (13 s) of stale
media, ICE's consent checks waited behind it, and peers were closed. So the default keeps aioice's size; a larger
one (`webrtc.udp_receive_buffer_bytes`) suits high-bitrate cameras whose bursts outgrow it.
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

__all__ = ["granted_rcvbuf", "install", "install_media_demux", "installed_rcvbuf"]

logger = logging.getLogger(__name__)


installed_rcvbuf: int | None = None
"""The `SO_RCVBUF` request `install()` set (None before)."""


def granted_rcvbuf(wanted: int) -> int:
    """The receive buffer the kernel grants a UDP socket that asks for `wanted` bytes, in the same units as the request.

    Linux doubles the request for its bookkeeping and caps it at `net.core.rmem_max` without CAP_NET_ADMIN."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
        got = probe.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return got // 2 if sys.platform.startswith("linux") else got


def install_media_demux() -> bool:
    """Wrap aioice's `StunProtocol.datagram_received` so non-STUN datagrams skip the STUN parse; True when wrapped."""
    try:
        from aioice import ice
    except ImportError:
        return False
    protocol = getattr(ice, "StunProtocol", None)
    original = getattr(protocol, "datagram_received", None)
    if protocol is None or original is None:
        logger.warning("aioice has no StunProtocol.datagram_received: media datagrams keep aioice's STUN parse")
        return False
    if getattr(original, "_visual_agent_demux", False):
        return True

    def datagram_received(self: Any, data: bytes, addr: tuple[Any, ...]) -> None:
        if data and data[0] > 3:  # DTLS, RTP or RTCP: what aioice does when the STUN parse fails
            self.receiver.data_received(data, self.local_candidate.component)
            return
        original(self, data, addr)

    datagram_received._visual_agent_demux = True  # type: ignore[attr-defined]
    protocol.datagram_received = datagram_received
    return True


def install(wanted: int | None = None) -> int | None:
    """Install the media demux, and with `wanted` make aioice ask for that many bytes of receive buffer (or what the
    kernel grants, if less) on the sockets it binds from now on; the size aioice asks for, None where aioice is
    missing. The first size set stays (every server of the process shares aioice)."""
    global installed_rcvbuf
    install_media_demux()
    try:
        from aioice import turn
    except ImportError:
        return None
    current = int(getattr(turn, "UDP_SOCKET_BUFFER_SIZE", 0))
    if wanted is None or (installed_rcvbuf is not None and current == installed_rcvbuf):
        return current
    granted = granted_rcvbuf(wanted)
    size = min(wanted, granted)  # smaller than aioice's too: a shorter queue holds less stale media
    if granted < wanted:
        logger.warning(
            "media sockets: webrtc.udp_receive_buffer_bytes asks for %d KiB of UDP receive buffer, the kernel grants "
            "%d KiB (net.core.rmem_max); to get it: `sysctl -w net.core.rmem_max=%d`",
            wanted // 1024, granted // 1024, wanted,
        )
    else:
        logger.info("media sockets: %d KiB of UDP receive buffer each", size // 1024)
    turn.UDP_SOCKET_BUFFER_SIZE = size
    installed_rcvbuf = size
    return size
