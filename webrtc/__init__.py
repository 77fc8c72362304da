"""webrtc: live video in (browser pages, WHIP publishers, cameras, RTSP, files), one fresh `FrameBuffer` per source.

Imports nothing else of this project. The daemon uses it like this::

    from webrtc import FrameTimeoutError, SourceConfig, WebRTCConfig, WebRTCServer

    driver = WebRTCServer(WebRTCConfig(port=8080), [SourceConfig(name="door", kind="rtsp", url="rtsp://...")])
    driver.on_data_message = on_text          # (source_name, peer_id, text) -> None | awaitable
    driver.healthz_extra = lambda: {"broker": "connected", "llm": "ready"}
    driver.add_route("GET", "/mine", handler)  # extra routes behind the same guard: before start()
    async with driver:                         # or: await driver.start() ... await driver.close()
        buffer = driver.get_buffer("door")     # or driver.buffers["door"]; driver.source_names()
        newest = await buffer.wait_for_frame(timeout=5)   # FrameTimeoutError (a TimeoutError) if none
        newest = buffer.latest()               # BufferedFrame: .frame (av.VideoFrame), .pts, .received_at, .age_s
        frames = buffer.window(seconds=4, k=3) # k frames spread over the last seconds, oldest first
        buffer.stats()                         # FrameBufferStats: fps, received, dropped, newest_age_s, width, height
        await driver.send_data(peer_id, text)  # answer the peer that asked (PeerNotFoundError, DataChannelClosedError)
        await driver.broadcast("browser-1", text)  # every open data channel of that source

Sources: each configured `SourceConfig` (file, rtsp, v4l2) gets a buffer at construction. A browser page
(POST /offer) or WHIP publisher (POST /whip) gets a buffer when its offer with video is answered, named by the
offer's ``source`` field (``?source=`` for WHIP) or ``browser-<n>`` / ``whip-<n>``; a second peer with the
same name gets 409 unless its offer's ``replaces`` is the first one's ``session_secret`` (the page's reconnect),
and then replaces it. When a peer leaves, a named source's buffer stays (state ``ended``; its frames
age out after ``buffer_max_seconds`` as in a live buffer, the newest stays readable) and the next peer under
that name reuses it; a ``browser-<n>``/``whip-<n>`` buffer is removed. Peers that never connect
(``connect_timeout_s``) or stop sending video (``peer_idle_timeout_s``) are dropped. `WebRTCDriver` is
another name of `WebRTCServer`, kept for code written against it.
``await driver.wait_sources_changed(version)`` returns once sources were added or removed since ``version``
(the daemon's per-source MQTT topics follow it). Peers' video is decoded by FFmpeg's own VP8/H.264 decoders
on a shared pool of one thread per core beside the event loop (decoders.py and decode_pool.py say why).

The page (GET /) sends each question as data-channel text ``{"id", "question", "stream": true, "source"}``;
it renders partials ``{"id", "seq", "delta"}`` in ``seq`` order and replaces them with the final answer
``{"id", "question", "text", ..., "error": null | {"type", "message"}}`` (ARCHITECTURE.md); any other text
is shown as it is. Browsers allow the camera only on https:// or http://localhost / 127.0.0.1 pages.

Security (docs/SECURITY.md): `WebRTCConfig.tls_certfile`/``tls_keyfile`` serve HTTPS; ``auth_token`` makes
signaling, ``/webrtc-config``, the /healthz detail and added routes take ``Authorization: Bearer`` (the page
reads it from ``/#token=``); every request passes the Host/Origin checks of `HttpGuard`; sources made by peers
(``max_sources``), pending sessions per address and in all (``max_pending_per_client``, ``max_pending``) and
slow requests (``header_timeout_s``, ``body_timeout_s``) are bounded.

ICE: `WebRTCConfig.ice_servers` (STUN/TURN, credentials masked in reprs) are used by the server's peers and
handed to the page; `WebRTCConfig.host_candidate_addresses` (e.g. ``["127.0.0.1"]``) restricts the host
candidates aioice offers, process-wide (see `webrtc.ice`).
"""

from .addresses import WILDCARD_HOSTS, lan_addresses, page_url, reachable_hosts
from .catalog import SourceCatalog
from .config import (
    DEFAULT_BUFFER_MAX_FRAMES,
    DEFAULT_BUFFER_MAX_SECONDS,
    DEFAULT_HOST,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_PEERS,
    DEFAULT_MAX_SOURCES,
    DEFAULT_PORT,
    IceServer,
    SourceConfig,
    SourceKind,
    WebRTCConfig,
    is_loopback_host,
)
from .errors import (
    DataChannelClosedError,
    FrameTimeoutError,
    PeerError,
    PeerNotFoundError,
    SignalingError,
    SourceError,
    TooManyPeersError,
    WebRTCConfigError,
    WebRTCError,
)
from .frame_buffer import BufferedFrame, BufferState, FrameBuffer, FrameBufferStats
from .http_guard import PAGE_SCRIPTS, DeadlineSite, HttpGuard, bearer_token_ok, content_security_policy, inline_styles
from .ice import current_host_addresses, restrict_host_addresses
from .peers import PeerKind, PeerSession
from .plain_http import TlsOrHint
from .registry import PeerRegistry
from .server import DataMessageCallback, WebRTCDriver, WebRTCServer, names_preview
from .sources import SourceRunner
from .tls import certificate_names, server_ssl_context

__all__ = [
    "DEFAULT_BUFFER_MAX_FRAMES",
    "DEFAULT_BUFFER_MAX_SECONDS",
    "DEFAULT_HOST",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_PEERS",
    "DEFAULT_MAX_SOURCES",
    "DEFAULT_PORT",
    "PAGE_SCRIPTS",
    "WILDCARD_HOSTS",
    "BufferState",
    "BufferedFrame",
    "DataChannelClosedError",
    "DataMessageCallback",
    "DeadlineSite",
    "FrameBuffer",
    "FrameBufferStats",
    "FrameTimeoutError",
    "HttpGuard",
    "IceServer",
    "PeerError",
    "PeerKind",
    "PeerNotFoundError",
    "PeerRegistry",
    "PeerSession",
    "SignalingError",
    "SourceCatalog",
    "SourceConfig",
    "SourceError",
    "SourceKind",
    "SourceRunner",
    "TlsOrHint",
    "TooManyPeersError",
    "WebRTCConfig",
    "WebRTCConfigError",
    "WebRTCDriver",
    "WebRTCError",
    "WebRTCServer",
    "bearer_token_ok",
    "certificate_names",
    "content_security_policy",
    "current_host_addresses",
    "inline_styles",
    "is_loopback_host",
    "lan_addresses",
    "names_preview",
    "page_url",
    "reachable_hosts",
    "restrict_host_addresses",
    "server_ssl_context",
]
