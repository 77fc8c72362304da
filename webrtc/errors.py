"""The exceptions of the `webrtc` package, in one tree.

::

    WebRTCError
    ├── WebRTCConfigError        (also ValueError)  a config value is out of range or unknown
    ├── FrameTimeoutError        (also TimeoutError) no frame arrived in time
    ├── SourceError                                  a camera / RTSP / file source failed to open or read
    ├── PeerError                                    something about one peer session
    │   ├── PeerNotFoundError    (also KeyError)     no such peer (closed, or never existed)
    │   └── DataChannelClosedError                   the peer has no open data channel to send on
    └── SignalingError                               an offer or WHIP request was refused; carries
        │                                            the HTTP status and a one-line reason
        └── TooManyPeersError                        the peer limit is reached (HTTP 503)

Errors of aiortc, aioice and PyAV are translated where they cross into this package, with
``raise ... from exc``, so callers catch only these.
"""

from __future__ import annotations

__all__ = [
    "DataChannelClosedError",
    "FrameTimeoutError",
    "PeerError",
    "PeerNotFoundError",
    "SignalingError",
    "SourceError",
    "TooManyPeersError",
    "WebRTCConfigError",
    "WebRTCError",
]


class WebRTCError(Exception):
    """Base class of every error raised by the `webrtc` package."""


class WebRTCConfigError(WebRTCError, ValueError):
    """A `WebRTCConfig` or `SourceConfig` value is invalid; the message names the field."""


class FrameTimeoutError(WebRTCError, TimeoutError):
    """No (new) frame reached a `FrameBuffer` within the timeout."""

    def __init__(self, source: str, timeout: float, state: str | None = None, last_error: str | None = None) -> None:
        detail = f"source state: {state}" if state else "is the camera/peer connected and sending video?"
        if last_error:
            detail += f"; last error: {last_error}"
        super().__init__(f"no frame from source {source!r} within {timeout:g} s ({detail})")
        self.source = source
        self.timeout = timeout
        self.state = state


class SourceError(WebRTCError):
    """A configured source (camera, RTSP URL, file) could not be opened or read."""


class PeerError(WebRTCError):
    """Something about one peer session went wrong."""


class PeerNotFoundError(PeerError, KeyError):
    """No peer with that id: it closed, or never existed."""

    def __init__(self, peer_id: str) -> None:
        super().__init__(f"no peer {peer_id!r} (it closed or never existed)")
        self.peer_id = peer_id

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class DataChannelClosedError(PeerError):
    """The peer exists but has no open data channel to send text on."""


class SignalingError(WebRTCError):
    """An offer or WHIP request was refused; `status` is the HTTP status, `reason` one line."""

    status = 400

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if status is not None:
            self.status = status


class TooManyPeersError(SignalingError):
    """The configured peer limit is reached; answered with HTTP 503."""

    status = 503
