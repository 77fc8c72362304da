"""Typed configuration of the WebRTC ingest: the server, its ICE servers, and the configured sources."""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import WebRTCConfigError

__all__ = [
    "DEFAULT_BUFFER_MAX_FRAMES",
    "DEFAULT_BUFFER_MAX_SECONDS",
    "DEFAULT_HOST",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_PEERS",
    "DEFAULT_MAX_SOURCES",
    "DEFAULT_PORT",
    "IceServer",
    "SourceConfig",
    "SourceKind",
    "WebRTCConfig",
    "is_loopback_host",
    "mask_url_secrets",
    "validate_source_name",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_MAX_PEERS = 8
DEFAULT_MAX_BODY_BYTES = 64 * 1024
DEFAULT_BUFFER_MAX_FRAMES = 32
DEFAULT_BUFFER_MAX_SECONDS = 2.0
DEFAULT_FIRST_FRAME_TIMEOUT_S = 10.0
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024
DEFAULT_SOURCE_OPEN_TIMEOUT_S = 10.0
DEFAULT_SOURCE_RETRY_S = 2.0
DEFAULT_VIDEO_BITRATE_HINT_KBPS = 2000
DEFAULT_PEER_CONNECT_TIMEOUT_S = 10.0
DEFAULT_PEER_IDLE_TIMEOUT_S = 10.0
DEFAULT_MAX_SOURCES = 32
DEFAULT_MAX_PENDING_PER_CLIENT = 2
DEFAULT_MAX_PENDING = 4
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 10.0
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")

_SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def validate_source_name(name: object) -> str:
    """Return `name` if it is a usable source name (letters, digits, ``_.-``; 1-64 chars), else raise."""
    if not isinstance(name, str) or not _SOURCE_NAME.match(name):
        raise WebRTCConfigError(
            f"invalid source name {name!r}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


class SourceKind(str, enum.Enum):
    """Where a configured source's video comes from."""

    FILE = "file"
    """A video file read by PyAV (looping optional)."""
    RTSP = "rtsp"
    """An RTSP (or any FFmpeg-readable network) URL."""
    V4L2 = "v4l2"
    """A Linux camera device such as ``/dev/video0``."""


@dataclass(frozen=True, kw_only=True)
class IceServer:
    """One STUN or TURN server, as in the browser's ``RTCIceServer``; the credential is masked in reprs."""

    urls: tuple[str, ...]
    """``stun:host:port`` / ``turn:host:port?transport=udp`` URLs."""
    username: str | None = None
    """TURN user name."""
    credential: str | None = field(default=None, repr=False)
    """TURN password (never shown in reprs or logs)."""

    def __post_init__(self) -> None:
        urls = (self.urls,) if isinstance(self.urls, str) else tuple(self.urls)
        schemes = ("stun", "stuns", "turn", "turns")
        if not urls or not all(isinstance(u, str) and u.split(":", 1)[0] in schemes for u in urls):
            raise WebRTCConfigError(f"ice_servers: urls must be stun:/turn: URLs, got {self.urls!r}")
        object.__setattr__(self, "urls", urls)

    def __repr__(self) -> str:
        secret = "'***'" if self.credential else "None"
        return f"IceServer(urls={self.urls!r}, username={self.username!r}, credential={secret})"

    def to_browser(self) -> dict[str, Any]:
        """The ``RTCIceServer`` dict a browser page takes (includes the credential)."""
        out: dict[str, Any] = {"urls": list(self.urls)}
        if self.username is not None:
            out["username"] = self.username
        if self.credential is not None:
            out["credential"] = self.credential
        return out

    @classmethod
    def coerce(cls, value: IceServer | str | Mapping[str, Any]) -> IceServer:
        """Build from an `IceServer`, a URL string, or a mapping with urls/username/credential."""
        if isinstance(value, IceServer):
            return value
        if isinstance(value, str):
            return cls(urls=(value,))
        if isinstance(value, Mapping):
            return cls(urls=value.get("urls") or value.get("url") or (), username=value.get("username"),
                       credential=value.get("credential"))
        raise WebRTCConfigError(f"ice_servers: cannot read {type(value).__name__} as an ICE server")


@dataclass(kw_only=True)
class SourceConfig:
    """A camera, RTSP stream or video file that the driver opens at start and keeps in a `FrameBuffer`."""

    name: str
    """The source's name (buffers, /healthz and questions use it)."""
    kind: SourceKind = SourceKind.FILE
    """file, rtsp or v4l2."""
    url: str = ""
    """File path, RTSP URL, or device path such as /dev/video0."""
    loop: bool = False
    """Files only: start again at the end (the player is reopened, so pacing stays real-time)."""
    format: str | None = None
    """FFmpeg input format; None guesses (v4l2 sources default to "v4l2")."""
    options: dict[str, str] = field(default_factory=dict)
    """FFmpeg input options, e.g. {"video_size": "1280x720", "framerate": "30", "rtsp_transport": "tcp"}."""
    reconnect: bool = True
    """RTSP/V4L2: reopen after an error or end of stream, every `retry_s`."""
    retry_s: float = DEFAULT_SOURCE_RETRY_S
    """Seconds between reopen attempts."""
    open_timeout_s: float = DEFAULT_SOURCE_OPEN_TIMEOUT_S
    """How long opening the source may take before it counts as failed."""

    def __post_init__(self) -> None:
        validate_source_name(self.name)
        try:
            self.kind = SourceKind(self.kind)
        except ValueError as exc:
            raise WebRTCConfigError(
                f"source {self.name!r}: kind must be one of {[k.value for k in SourceKind]}, got {self.kind!r}"
            ) from exc
        if not self.url:
            raise WebRTCConfigError(f"source {self.name!r}: url (file path, RTSP URL or device) is required")
        if self.retry_s <= 0 or self.open_timeout_s <= 0:
            raise WebRTCConfigError(f"source {self.name!r}: retry_s and open_timeout_s must be > 0")
        self.options = {str(k): str(v) for k, v in (self.options or {}).items()}

    def __repr__(self) -> str:
        url = mask_url_secrets(self.url)
        return f"SourceConfig(name={self.name!r}, kind={self.kind.value!r}, url={url!r}, loop={self.loop})"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> SourceConfig:
        """Build from a config mapping; unknown keys are an error naming them."""
        return cls(**_known(cls, data, "sources[]"))


@dataclass(kw_only=True)
class WebRTCConfig:
    """The ingest server: where it listens, ICE, limits, and how much each `FrameBuffer` keeps."""

    host: str = DEFAULT_HOST
    """Address the HTTP server binds (loopback by default)."""
    port: int = DEFAULT_PORT
    """TCP port of the HTTP server; 0 picks a free one (see `WebRTCServer.port`)."""
    ice_servers: list[IceServer] = field(default_factory=list)
    """STUN/TURN servers used by the server's peers and handed to the page."""
    host_candidate_addresses: list[str] | None = None
    """Restrict ICE host candidates to these local addresses (e.g. ["127.0.0.1"]); None = aioice default."""
    max_peers: int = DEFAULT_MAX_PEERS
    """Most peer sessions (browser + WHIP) at once; more get HTTP 503."""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    """Largest accepted /offer or /whip body; larger gets HTTP 413."""
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """Largest data-channel text message handed to `on_data_message`; larger ones are dropped."""
    buffer_max_frames: int = DEFAULT_BUFFER_MAX_FRAMES
    """Each FrameBuffer keeps at most this many frames..."""
    buffer_max_seconds: float = DEFAULT_BUFFER_MAX_SECONDS
    """...and none older than this many seconds (the newest is always kept)."""
    buffer_spread_frames: int | None = None
    """Keep only the newest frame and at most this many older ones, spaced evenly over `buffer_max_seconds` (what
    sampling over a window can use; `visual-agent run` sets it to `agent.max_frames - 1`); None: every frame within
    the bounds."""
    buffer_older_max_side: int | None = None
    """With `buffer_spread_frames`: keep the older frames as copies whose longer side is at most this many pixels (the
    newest stays as decoded), so they do not hold full-size decoder pictures; `visual-agent run` sets it to
    `encoder.jpeg_max_side`, the size its questions' frames are sent at. None: keep them as decoded."""
    udp_receive_buffer_bytes: int | None = None
    """Kernel receive buffer asked for each media socket (`SO_RCVBUF`; capped by `net.core.rmem_max`, with a warning);
    None keeps aioice's 256 KiB, which holds seconds of a 640x480 stream (a larger one only delays an overloaded loop's
    media; for high-bitrate cameras' bursts)."""
    first_frame_timeout_s: float = DEFAULT_FIRST_FRAME_TIMEOUT_S
    """Default timeout of `FrameBuffer.wait_for_frame`."""
    connect_timeout_s: float = DEFAULT_PEER_CONNECT_TIMEOUT_S
    """A pending peer (answered, not connected) is dropped after this many seconds (frees its slot)."""
    max_pending_per_client: int = DEFAULT_MAX_PENDING_PER_CLIENT
    """Most pending (not yet connected) peers per client IP address; more get HTTP 429."""
    max_pending: int = DEFAULT_MAX_PENDING
    """Most pending peers from all addresses together (so they never hold every peer slot); when full, the oldest
    that had its chance to connect (5 s, at most half of connect_timeout_s) yields to a new offer, else HTTP 503."""
    max_sources: int = DEFAULT_MAX_SOURCES
    """Most sources made by peers (configured ones not counted); ended ones are freed oldest first, else HTTP 503."""
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    """A connection must send a whole request head (and finish TLS) this many seconds after connecting or its last answer."""
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    """An /offer or /whip body must arrive whole within this many seconds (else HTTP 408)."""
    auth_token: str | None = field(default=None, repr=False)
    """Bearer token for signaling, /webrtc-config and the /healthz detail (secret; VISUAL_AGENT__WEBRTC__AUTH_TOKEN)."""
    allow_unauthenticated: bool = False
    """Let a host beyond loopback serve without auth_token (anyone who reaches the port may publish; logged loudly)."""
    allowed_hosts: list[str] | None = None
    """Host header names accepted (others get HTTP 421); None = the bound address, localhost, 127.0.0.1, [::1], the certificate's names."""
    tls_certfile: str | None = None
    """PEM certificate (chain) to serve HTTPS; `visual-agent cert` makes a self-signed one."""
    tls_keyfile: str | None = None
    """PEM private key of tls_certfile."""
    peer_idle_timeout_s: float | None = DEFAULT_PEER_IDLE_TIMEOUT_S
    """A connected peer whose video sent no frame this long is dropped (a tab closed without goodbye);
    None = wait for ICE consent to fail (~30 s)."""
    video_bitrate_hint_kbps: int | None = DEFAULT_VIDEO_BITRATE_HINT_KBPS
    """Start/min bitrate asked of Chromium senders (x-google-* in the answer) so 720p is not scaled down;
    None = leave."""
    serve_page: bool = True
    """Serve the browser page at GET /."""
    keys_set: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)
    """The keys `from_mapping` was given (a config file's section with its environment overrides), so whoever
    derives a setting from elsewhere overrides only the ones not given; empty for a config built in code."""

    def __post_init__(self) -> None:
        self.ice_servers = [IceServer.coerce(s) for s in (self.ice_servers or [])]
        if not (0 <= int(self.port) <= 65535):
            raise WebRTCConfigError(f"webrtc.port must be 0-65535, got {self.port!r}")
        for name in ("max_peers", "max_body_bytes", "max_message_bytes", "buffer_max_frames"):
            if int(getattr(self, name)) < 1:
                raise WebRTCConfigError(f"webrtc.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.buffer_spread_frames is not None and int(self.buffer_spread_frames) < 1:
            raise WebRTCConfigError(f"webrtc.buffer_spread_frames must be >= 1 or None, got {self.buffer_spread_frames!r}")
        if self.udp_receive_buffer_bytes is not None and int(self.udp_receive_buffer_bytes) < 4096:
            raise WebRTCConfigError(f"webrtc.udp_receive_buffer_bytes must be >= 4096 or None, got {self.udp_receive_buffer_bytes!r}")
        if self.buffer_older_max_side is not None and int(self.buffer_older_max_side) < 16:
            raise WebRTCConfigError(f"webrtc.buffer_older_max_side must be >= 16 or None, got {self.buffer_older_max_side!r}")
        if self.buffer_max_seconds <= 0 or self.first_frame_timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise WebRTCConfigError(
                "webrtc.buffer_max_seconds, first_frame_timeout_s and connect_timeout_s must be > 0"
            )
        if self.peer_idle_timeout_s is not None and self.peer_idle_timeout_s <= 0:
            raise WebRTCConfigError(f"webrtc.peer_idle_timeout_s must be > 0 or None, got {self.peer_idle_timeout_s!r}")
        for name in ("max_pending_per_client", "max_pending", "max_sources"):
            if int(getattr(self, name)) < 1:
                raise WebRTCConfigError(f"webrtc.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.header_timeout_s <= 0 or self.body_timeout_s <= 0:
            raise WebRTCConfigError("webrtc.header_timeout_s and body_timeout_s must be > 0")
        if self.auth_token is not None:
            self.auth_token = str(self.auth_token)
            if len(self.auth_token) < 16 or any(c.isspace() for c in self.auth_token):
                raise WebRTCConfigError("webrtc.auth_token must be at least 16 characters without spaces "
                                        f"(make one with: {_MAKE_TOKEN})")
        if bool(self.tls_certfile) != bool(self.tls_keyfile):
            raise WebRTCConfigError("webrtc.tls_certfile and webrtc.tls_keyfile go together: set both or neither "
                                    "(`visual-agent cert` makes a pair)")
        if isinstance(self.allowed_hosts, str):
            self.allowed_hosts = [self.allowed_hosts]
        if self.allowed_hosts is not None:
            self.allowed_hosts = [h.strip().lower() for h in self.allowed_hosts if h and h.strip()]
        if self.open_to_anyone and not self.allow_unauthenticated:
            raise WebRTCConfigError(
                f"webrtc.host {self.host!r} is reachable from other machines but webrtc.auth_token is not set: "
                f"set one (e.g. export VISUAL_AGENT__WEBRTC__AUTH_TOKEN=$({_MAKE_TOKEN})) and open the page as "
                "http(s)://<host>:<port>/#token=<token>, or set webrtc.allow_unauthenticated: true to let anyone "
                "who reaches the port publish video and ask questions"
            )
        if self.host_candidate_addresses is not None:
            if isinstance(self.host_candidate_addresses, str):
                self.host_candidate_addresses = [self.host_candidate_addresses]
            try:  # the form `restrict_host_addresses` takes at start(); a mistake shows when the config is read
                self.host_candidate_addresses = [str(ipaddress.ip_address(a)) for a in self.host_candidate_addresses]
            except ValueError as exc:
                raise WebRTCConfigError(f"webrtc.host_candidate_addresses: {exc} (give IP addresses)") from None

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.repr)
        return f"WebRTCConfig({shown}, auth_token={'***' if self.auth_token else None!r})"

    @property
    def open_to_anyone(self) -> bool:
        """True when the server is reachable beyond loopback without a token (`WebRTCServer.start` warns)."""
        return not is_loopback_host(self.host) and not self.auth_token

    @property
    def tls(self) -> bool:
        """True when the server speaks HTTPS."""
        return bool(self.tls_certfile)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> WebRTCConfig:
        """Build from a config mapping (the YAML ``webrtc`` section); unknown keys are an error naming them."""
        config = cls(**_known(cls, data, "webrtc"))
        config.keys_set = frozenset(data)
        return config


_NUMBER_TYPES = frozenset({"int", "float", "int | None", "float | None"})


def _known(cls: type, data: Mapping[str, Any], section: str) -> dict[str, Any]:
    """`data` when every key is a field of `cls` and no number field is given a boolean (`true` is not 1)."""
    names = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise WebRTCConfigError(f"{section}: unknown keys {unknown}; known: {sorted(names)}")
    for f in fields(cls):
        if isinstance(data.get(f.name), bool) and str(f.type) in _NUMBER_TYPES:
            raise WebRTCConfigError(f"{section}.{f.name} must be a number, not a boolean (got {data[f.name]!r})")
    return dict(data)


_MAKE_TOKEN = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
_SECRET_QUERY = re.compile(
    r"([?&;](?:[A-Za-z0-9_.-]*[_.-])?(?:token|password|passwd|pwd|pass|secret|key|auth|signature|sig)=)[^&#;\s]*",
    re.IGNORECASE,
)


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (127.0.0.0/8, ::1): reachable from this machine only."""
    if host.lower() in LOOPBACK_NAMES or host.lower() == "localhost.":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def mask_url_secrets(text: str) -> str:
    """Hide passwords in ``scheme://user:password@host`` URLs and secret query values (``?token=``,
    ``password=``, ``api_key=``, ...) anywhere in `text`.

    Like FFmpeg, the password runs to the last ``@`` before the path, so one holding ``@`` is hidden whole.
    """
    text = re.sub(r"(://[^:/@\s]+:)[^/?#\s]*@", r"\1***@", text)
    return _SECRET_QUERY.sub(r"\1***", text)
