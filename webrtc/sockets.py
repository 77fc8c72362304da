"""Larger kernel receive buffers for the media sockets, so a loop that reads its sockets late loses fewer datagrams.

Each peer's media arrives on a UDP socket that aioice opens and sizes with `SO_RCVBUF` = its module constant
`aioice.turn.UDP_SOCKET_BUFFER_SIZE` (256 KiB), read at every bind. At 48 streams of 640x480 on 2 cores the loop reads
its sockets late and the kernel dropped 11,960 datagrams in 10 s for full buffers (BENCHMARKS.md, "Many streams in one
daemon"); every loss then stalls a stream until the picture is repaired (`webrtc/loss.py`). `install()` raises that
constant to what the kernel grants an unprivileged process (`net.core.rmem_max`), and says so in the log when the
kernel caps the request. A buffer is a ceiling, not an allocation: memory is used only while datagrams wait.

`install()` also lets those sockets hand media on without trying it as STUN first: aioice parses every datagram as a
STUN message and passes it on when the parse raises, an exception per RTP packet on the event loop's thread. The
first byte already tells them apart (RFC 7983: STUN 0-3, DTLS 20-63, RTP/RTCP 128-191), so a datagram whose first
byte is not STUN's goes straight where aioice's own fallback sends it.
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

__all__ = ["WANTED_RCVBUF_BYTES", "granted_rcvbuf", "install", "install_media_demux", "installed_rcvbuf"]

logger = logging.getLogger(__name__)

WANTED_RCVBUF_BYTES = 4 * 1024 * 1024
"""What we ask for each media socket: some 2 s of a 1280x720 stream, or the backlog of 48 streams read 100 ms late."""

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


def install(wanted: int = WANTED_RCVBUF_BYTES) -> int | None:
    """Make aioice ask for `wanted` bytes of receive buffer (or what the kernel grants, if less) on the sockets it
    binds from now on; the size asked, or None where aioice is not importable."""
    global installed_rcvbuf
    install_media_demux()
    try:
        from aioice import turn
    except ImportError:
        return None
    if installed_rcvbuf is not None and turn.UDP_SOCKET_BUFFER_SIZE == installed_rcvbuf:
        return installed_rcvbuf
    current = int(getattr(turn, "UDP_SOCKET_BUFFER_SIZE", 0))
    granted = granted_rcvbuf(wanted)
    size = max(current, min(wanted, granted))
    if granted < wanted:
        logger.warning(
            "media sockets: asked the kernel for %d KiB of UDP receive buffer, it grants %d KiB "
            "(net.core.rmem_max); at many streams raise it, e.g. `sysctl -w net.core.rmem_max=%d`",
            wanted // 1024, granted // 1024, wanted,
        )
    else:
        logger.info("media sockets: %d KiB of UDP receive buffer each", size // 1024)
    turn.UDP_SOCKET_BUFFER_SIZE = size
    installed_rcvbuf = size
    return size
