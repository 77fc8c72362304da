"""`WebRTCServer` (alias `WebRTCDriver`): the aiohttp signaling server, its peers, sources and buffers.

Endpoints (ARCHITECTURE.md):

=========================  ===================================================================
``GET /``                  the browser page (``static/index.html``; its scripts ``GET /app.js``, ``/console.js``,
                           ``/rules.js``, ``/timeline.js``)
``GET /webrtc-config``     ICE servers and limits for the page (TURN credentials included)
``POST /offer``            JSON ``{"sdp", "type": "offer", "source"?, "replaces"?}`` -> ``{"sdp", "type":
                           "answer", "peer_id", "source", "session_secret"}``
``POST /whip``             RFC 9725: ``application/sdp`` offer (``?source=name`` optional) ->
                           ``201 Created``, ``Location: /whip/<secret>``, ``X-Peer-Id``, answer SDP
``DELETE /whip/<secret>``  ends that WHIP session (``PATCH`` and other methods: 405)
``GET /healthz``           JSON ``{"status"}``; with the token (or none configured) also sources with buffer
                           stats, peers, and ``healthz_extra()``
``GET /metrics``           whatever ``metrics_exposition()`` returns (the daemon's Prometheus text; token when set);
                           404 when unset
=========================  ===================================================================

Every request first passes `webrtc.http_guard.HttpGuard` (Host, Origin, ``Authorization: Bearer`` when
``auth_token`` is set, policy headers) and `DeadlineSite` (request-head timeout). A source name held by a
peer is not given to another (409) unless the offer's ``replaces`` is that session's ``session_secret``
(the page's reconnect); WHIP resources are secrets, not the peer ids shown in /healthz.

Refusals carry a one-line reason (JSON ``{"error": ...}`` for /offer, text for /whip): 400 malformed or
non-offer SDP, 401 missing token, 403 cross-origin, 404 unknown WHIP resource, 408 body too slow, 409
source name owned by a configured source or a live peer, 413 body over ``max_body_bytes``, 415 wrong content
type, 421 unknown Host, 429 too many pending sessions from one address, 503 peer or source limit reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import itertools
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from importlib import resources
from typing import Any

from aiohttp import web

from . import decoders
from .addresses import reachable_hosts
from .config import SourceConfig, WebRTCConfig, validate_source_name
from .errors import PeerNotFoundError, SignalingError, TooManyPeersError, WebRTCConfigError
from .frame_buffer import FrameBuffer
from .heap import trim_heap
from .http_guard import PAGE_SCRIPTS, DeadlineSite, HttpGuard, content_security_policy, inline_styles
from .ice import restrict_host_addresses
from .peers import PeerKind, PeerSession
from .sdp import add_bitrate_hint, check_offer_sdp
from .sources import SourceRunner
from .tracks import start_discarding

__all__ = ["DataMessageCallback", "WebRTCDriver", "WebRTCServer", "names_preview"]

logger = logging.getLogger(__name__)

DataMessageCallback = Callable[[str, str, str], "Awaitable[Any] | Any"]
"""``callback(source_name, peer_id, text)``; may be a coroutine function."""

MAX_MESSAGES_IN_FLIGHT_PER_PEER = 8
NAMES_SHOWN_IN_ERRORS = 5
_STATIC = "static"


class WebRTCServer:
    """Owns the HTTP server, every peer, every configured source and one `FrameBuffer` per source.

    Use ``async with WebRTCServer(config, sources) as server:`` or ``await start()`` / ``await close()``.
    Add routes to `app` before `start()`.
    """

    def __init__(self, config: WebRTCConfig | None = None, sources: Iterable[SourceConfig] = ()) -> None:
        self.config = config or WebRTCConfig()
        self.sources = list(sources)
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise WebRTCConfigError(f"sources: duplicate names in {names}")
        self.on_data_message: DataMessageCallback | None = None
        """Called with (source, peer_id, text) for each data-channel text message."""
        self.healthz_extra: Callable[[], dict[str, Any]] | None = None
        """Returns extra fields merged into GET /healthz (the daemon adds broker and LLM state)."""
        self.metrics_exposition: Callable[[], tuple[bytes, str]] | None = None
        """Returns (body, content type) for GET /metrics (the daemon's Prometheus registry); None: 404."""
        self.buffers: dict[str, FrameBuffer] = {}
        """One `FrameBuffer` per source name (configured sources and peers)."""
        self._sources_version = 0
        """Goes up by one whenever a source is added to or removed from `buffers` (`wait_sources_changed`)."""
        self._sources_event: asyncio.Event | None = None
        self.guard: HttpGuard | None = None
        """The Host/Origin/token checks (made at start, when the certificate's names are known)."""
        self.app = web.Application(client_max_size=self.config.max_body_bytes, middlewares=[self._guarded])
        self.app.on_response_prepare.append(self._add_headers)
        self._peers: dict[str, PeerSession] = {}
        self._pending = 0
        self._negotiating: dict[str, int] = {}
        self._site: DeadlineSite | None = None
        self._runners: dict[str, SourceRunner] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._counter = itertools.count(1)
        self._http: web.AppRunner | None = None
        self._started_at: float | None = None
        self._closed = False
        self._port: int | None = None
        self._certificate_names: list[str] = []
        for source in self.sources:
            self.buffers[source.name] = self._new_buffer(source.name)
        self._add_routes()

    def __repr__(self) -> str:
        return f"WebRTCServer(url={self.url if self._port else None!r}, sources={self.source_names()}, peers={len(self._peers)})"

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the HTTP server and start the configured sources."""
        if self._http is not None:
            return
        if self._closed:
            raise RuntimeError("WebRTCServer was closed; make a new one")
        c = self.config
        ssl_context, cert_names = None, []
        if c.tls_certfile and c.tls_keyfile:  # the config allows both or neither
            from .tls import certificate_names, server_ssl_context

            ssl_context = server_ssl_context(c.tls_certfile, c.tls_keyfile)
            cert_names = certificate_names(c.tls_certfile)
        self._certificate_names = list(cert_names)
        self.guard = HttpGuard(token=c.auth_token, tls=c.tls, bound_host=c.host, allowed_hosts=c.allowed_hosts,
                               certificate_names=cert_names,
                               csp=content_security_policy(inline_styles(_static_text("index.html"))))
        if c.host_candidate_addresses is not None:
            restrict_host_addresses(c.host_candidate_addresses)
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0,
                               keepalive_timeout=c.header_timeout_s, lingering_time=c.body_timeout_s)
        await runner.setup()
        site = DeadlineSite(runner, c.host, c.port, header_timeout_s=c.header_timeout_s, ssl_context=ssl_context)
        self.guard.deadlines = self._site = site
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise WebRTCConfigError(f"cannot listen on {self.config.host}:{self.config.port}: {exc}") from exc
        self._http = runner
        self._port = runner.addresses[0][1]
        if c.open_to_anyone:  # allowed by webrtc.allow_unauthenticated; said at every start
            logger.warning("SECURITY: webrtc.allow_unauthenticated is true and webrtc.host %r is reachable from other "
                           "machines: ANYONE who reaches port %s can publish video, take source names and ask "
                           "questions. Set webrtc.auth_token instead.", c.host, self._port)
        self._started_at = time.monotonic()
        for source in self.sources:
            source_runner = SourceRunner(source, self.buffers[source.name])
            self._runners[source.name] = source_runner
            source_runner.start()
        logger.info("webrtc ingest listening on %s (sources: %s; %s)", self.url,
                    ", ".join(self.source_names()) or "none",
                    "token required" if c.auth_token else "no token: anyone who reaches the port may publish")

    async def close(self) -> None:
        """Close peers, sources, buffers and the HTTP server; cancel every task. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._http is not None:
            await self._http.shutdown()
        peers = list(self._peers.values())
        self._peers.clear()
        await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)
        await asyncio.gather(*(r.close() for r in self._runners.values()), return_exceptions=True)
        await asyncio.gather(*(b.detach() for b in self.buffers.values()), return_exceptions=True)
        if self._tasks:  # drop-peer tasks finish quickly; give them a moment before cancelling
            await asyncio.wait(list(self._tasks), timeout=2.0)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.cleanup()
            self._http = None

    async def __aenter__(self) -> WebRTCServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        """The bound TCP port (the real one when the config said 0)."""
        if self._port is None:
            raise RuntimeError("WebRTCServer is not started")
        return self._port

    @property
    def url(self) -> str:
        """``http(s)://host:port`` of the running server (``http://[::1]:port`` for an IPv6 host)."""
        host = self.config.host
        return f"{'https' if self.config.tls else 'http'}://{f'[{host}]' if ':' in host else host}:{self.port}"

    def page_url(self, host: str | None = None) -> str:
        """The page's URL with the token in its fragment (``/#token=...``): for the user's terminal, never a log.

        With no `host`, a server bound to every interface names the first of `page_hosts()` (a certificate name or
        a LAN address), which a phone can open, instead of ``0.0.0.0``."""
        host = host or self.page_hosts()[0]
        base = f"{'https' if self.config.tls else 'http'}://{f'[{host}]' if ':' in host else host}:{self.port}"
        return f"{base}/#token={self.config.auth_token}" if self.config.auth_token else f"{base}/"

    def page_hosts(self) -> list[str]:
        """Where the page can be opened, best first (`webrtc.addresses.reachable_hosts`)."""
        return reachable_hosts(self.config.host, self._certificate_names)

    # --- the daemon's API ----------------------------------------------------------------------

    def source_names(self) -> list[str]:
        """Names of every source with a buffer: configured sources first, then peers in arrival order."""
        return list(self.buffers)

    async def wait_sources_changed(self, seen: int = 0) -> int:
        """Wait until the set of sources has changed since version `seen` (at once if it has); returns the version now.

        The agent's per-source MQTT topics follow `source_names()` with this instead of polling it.
        """
        while self._sources_version <= seen:
            if self._sources_event is None:
                self._sources_event = asyncio.Event()
            await self._sources_event.wait()
        return self._sources_version

    def _note_sources_changed(self) -> None:
        self._sources_version += 1
        if self._sources_event is not None:
            self._sources_event.set()
            self._sources_event = None

    def get_buffer(self, name: str) -> FrameBuffer:
        """The `FrameBuffer` of source `name`; `KeyError` naming the known sources otherwise."""
        try:
            return self.buffers[name]
        except KeyError:
            raise KeyError(f"no source {name!r}; known: {names_preview(self.source_names())}") from None

    def peers(self) -> list[PeerSession]:
        """The open peer sessions."""
        return list(self._peers.values())

    def get_peer(self, peer_id: str) -> PeerSession:
        try:
            return self._peers[peer_id]
        except KeyError:
            raise PeerNotFoundError(peer_id) from None

    async def send_data(self, peer_id: str, text: str) -> None:
        """Send `text` on that peer's data channel (`PeerNotFoundError`, `DataChannelClosedError`)."""
        self.get_peer(peer_id).send(text)

    async def broadcast(self, source: str, text: str) -> int:
        """Send `text` to every peer of `source` with an open data channel; returns how many got it."""
        sent = 0
        for peer in self.peers():
            if peer.source == source and peer.channel is not None and peer.channel.readyState == "open":
                peer.send(text)
                sent += 1
        return sent

    async def close_peer(self, peer_id: str) -> None:
        """End one peer session (its buffer stays, state ended)."""
        await self._drop_peer(self.get_peer(peer_id), "closed by the server")

    def health(self, detail: bool = True) -> dict[str, Any]:
        """The /healthz document; with ``detail=False`` only ``{"status"}`` (what callers without the token see)."""
        status = "ok" if self._http is not None and not self._closed else "stopped"
        if not detail:
            return {"status": status}
        sources = {}
        for name, buffer in self.buffers.items():
            entry = buffer.stats().as_dict()
            if name in self._runners:
                entry.update(self._runners[name].info())
            else:
                entry["kind"] = "peer"
            sources[name] = entry
        doc: dict[str, Any] = {
            "status": status,
            "uptime_s": None if self._started_at is None else round(time.monotonic() - self._started_at, 1),
            "sources": sources,
            "peers": [p.info() for p in self._peers.values()],
            "max_peers": self.config.max_peers,
        }
        if self.healthz_extra is not None:
            try:
                doc.update(self.healthz_extra())
            except Exception as exc:  # the health page must answer even when the daemon's part fails
                doc["healthz_extra_error"] = f"{type(exc).__name__}: {exc}"
        return doc

    # --- internals -----------------------------------------------------------------------------

    def _new_buffer(self, name: str) -> FrameBuffer:
        c = self.config
        return FrameBuffer(name, max_frames=c.buffer_max_frames, max_seconds=c.buffer_max_seconds,
                           spread_frames=c.buffer_spread_frames,
                           first_frame_timeout_s=c.first_frame_timeout_s)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _add_routes(self) -> None:
        r = self.app.router
        if self.config.serve_page:
            r.add_get("/", self._handle_index)
            for script in PAGE_SCRIPTS:
                r.add_get(f"/{script}", self._handle_static)
        r.add_get("/webrtc-config", self._handle_page_config)
        r.add_post("/offer", self._handle_offer)
        r.add_post("/whip", self._handle_whip)
        r.add_delete("/whip/{resource}", self._handle_whip_delete)
        r.add_get("/healthz", self._handle_healthz)
        r.add_get("/metrics", self._handle_metrics)

    def add_route(self, method: str, path: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> None:
        """Serve one more route (the daemon's event and console APIs) behind the same guard as every other: the
        token, the Host/Origin checks and the policy headers apply. Call before `start()` (aiohttp freezes its
        router then); `webrtc` stays free of our other packages because the caller brings the handler."""
        if self._http is not None:
            raise RuntimeError("add_route must be called before start()")
        self.app.router.add_route(method, path, handler)

    async def _read_body(self, request: web.Request, content_type: str) -> bytes:
        if request.content_type != content_type:
            raise SignalingError(
                f"wrong content type {request.content_type or 'none'!r}: send {content_type}", status=415
            )
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise SignalingError(f"body of {request.content_length} bytes is over the {limit}-byte limit", status=413)

        async def read_all() -> bytes:
            chunks: list[bytes] = []
            size = 0
            while True:  # read() may return less than asked: loop until EOF or over the limit
                chunk = await request.content.read(limit + 1 - size)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    raise SignalingError(f"body is over the {limit}-byte limit", status=413)

        try:
            return await asyncio.wait_for(read_all(), self.config.body_timeout_s)
        except TimeoutError:
            raise SignalingError(f"body not received within {self.config.body_timeout_s:g} s", status=408) from None

    def _source_for_peer(self, requested: object, kind: PeerKind) -> tuple[str, bool]:
        if requested is None or requested == "":  # browser-<n>/whip-<n>, skipping names a publisher chose
            taken = set(self.buffers).union(p.source for p in self._peers.values())
            while (name := f"{kind.value}-{next(self._counter)}") in taken:
                pass
            return name, True
        try:
            name = validate_source_name(requested)
        except WebRTCConfigError as exc:
            raise SignalingError(str(exc)) from None
        if name in self._runners or any(s.name == name for s in self.sources):
            raise SignalingError(f"source {name!r} is a configured source; pick another name", status=409)
        return name, False

    def _holder(self, name: str, replaces: object) -> PeerSession | None:
        """The peer holding source `name` that this offer may replace; 409 when one holds it without proof."""
        holders = [p for p in self._peers.values() if p.source == name]
        if not holders:
            return None
        proof = replaces.encode("utf-8") if isinstance(replaces, str) else b""
        proven = [p for p in holders if hmac.compare_digest(proof, p.secret.encode("utf-8"))]
        if len(proven) == len(holders) == 1:
            return proven[0]
        raise SignalingError(f"source {name!r} is in use by another publisher; pick another name, or end that "
                             "session first (a reconnect sends its old session_secret as \"replaces\")", status=409)

    def _pending_from(self, remote: str) -> int:
        """Sessions from `remote` being negotiated or answered but not yet connected."""
        return self._negotiating.get(remote, 0) + sum(
            1 for p in self._peers.values() if p.remote == remote and not p.ever_connected)

    def _room_for_source(self, name: str) -> bool:
        """True when `name` has a buffer or one more fits `max_sources` (freeing the oldest ended one if needed)."""
        if name in self.buffers:
            return True
        configured = {s.name for s in self.sources}
        made = [n for n in self.buffers if n not in configured]
        if len(made) < self.config.max_sources:
            return True
        in_use = {p.source for p in self._peers.values()}
        for old in made:  # creation order: the oldest ended source goes first
            if old not in in_use:
                buffer = self.buffers.pop(old)
                self._note_sources_changed()
                self._spawn(buffer.detach(), f"webrtc-free-source:{old}")
                logger.info("source %r freed (ended; the source limit of %d is reached)", old, self.config.max_sources)
                return True
        return False

    async def _answer(self, sdp: object, source: object, kind: PeerKind, *, remote: str = "",
                      replaces: object = None) -> PeerSession:
        """Negotiate one peer: checks, limits, setRemoteDescription, answer. Raises `SignalingError`."""
        from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

        decoders.install()  # here, not at start: a daemon with no peer never imports aiortc
        if self._closed or self._http is None:
            raise SignalingError("the server is shutting down", status=503)
        offer = check_offer_sdp(sdp)
        name, auto = self._source_for_peer(source, kind)
        holder = self._holder(name, replaces)  # a reconnect frees its old slot
        if self._pending_from(remote) >= self.config.max_pending_per_client:
            raise SignalingError(f"{self.config.max_pending_per_client} sessions from this address are still "
                                 "connecting; try again when they connect or time out", status=429)
        if len(self._peers) + self._pending - (holder is not None) >= self.config.max_peers:
            raise TooManyPeersError(f"peer limit of {self.config.max_peers} reached; try again later")
        self._pending += 1
        self._negotiating[remote] = self._negotiating.get(remote, 0) + 1
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[
            RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential)
            for s in self.config.ice_servers
        ]))
        peer = PeerSession(secrets.token_hex(8), name, kind, pc, auto_named=auto, remote=remote)
        self._wire(peer)
        try:
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            except Exception as exc:
                raise SignalingError(f"malformed SDP offer: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
            try:
                answer = await pc.createAnswer()
                await pc.setLocalDescription(answer)
            except Exception as exc:
                raise SignalingError(f"cannot answer this offer: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
        except BaseException:
            await peer.close()
            raise
        finally:
            self._pending -= 1
            self._negotiating[remote] -= 1
            if not self._negotiating[remote]:
                del self._negotiating[remote]
        try:  # the checks again, now without an await before admission: others may have come meanwhile
            if self._closed:
                raise SignalingError("the server is shutting down", status=503)
            old = self._holder(name, replaces)  # 409 when another publisher took the name meanwhile
            if peer.video_track is not None and not self._room_for_source(name):
                raise SignalingError(f"source limit reached (webrtc.max_sources={self.config.max_sources}, all in "
                                     "use); end a session or raise the limit", status=503)
        except SignalingError:
            await peer.close()
            raise
        self._peers[peer.id] = peer
        if peer.video_track is not None:  # only an admitted peer feeds a buffer (a refused offer has a track too)
            buffer = self.buffers.get(name)
            if buffer is None:
                buffer = self.buffers[name] = self._new_buffer(name)
                self._note_sources_changed()
            buffer.attach(peer.video_track)
        peer.spawn(self._watchdog(peer), "watchdog")
        if old is not None:  # its own publisher reconnecting: the old session goes (out of the table at once)
            self._peers.pop(old.id, None)
            self._spawn(self._drop_peer(old, f"replaced by peer {peer.id}"), f"webrtc-drop-peer:{old.id}")
        logger.info("peer %s (%s) connected as source %r", peer.id, kind.value, name)
        return peer

    def _wire(self, peer: PeerSession) -> None:
        pc = peer.pc

        @pc.on("track")
        def on_track(track: Any) -> None:  # aiortc emits tracks in setRemoteDescription; `_answer` attaches
            if track.kind == "video" and peer.video_track is None:
                peer.video_track = track
            else:  # audio (or a second video): read and dropped, else aiortc queues it forever
                peer.spawn(_discard_until_closed(track, peer.source), f"discard-{track.kind}")

        @pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            if peer.channel is None:
                peer.channel = channel
            channel.on("message", lambda message: self._on_message(peer, message))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            state = pc.connectionState
            logger.info("peer %s: connection %s", peer.id, state)
            if state == "connected":
                peer.ever_connected = True
            if state in ("failed", "closed") and peer.id in self._peers:
                self._spawn(self._drop_peer(peer, f"connection {state}"), f"webrtc-drop-peer:{peer.id}")

    def _on_message(self, peer: PeerSession, message: str | bytes) -> None:
        if isinstance(message, bytes):
            try:
                message = message.decode("utf-8")
            except UnicodeDecodeError:
                peer.messages_dropped += 1
                logger.warning("peer %s: dropped a binary data-channel message (text only)", peer.id)
                return
        if len(message.encode("utf-8")) > self.config.max_message_bytes:
            peer.messages_dropped += 1
            logger.warning("peer %s: dropped a %d-byte message (limit %d)", peer.id, len(message), self.config.max_message_bytes)
            return
        peer.messages_in += 1
        callback = self.on_data_message
        if callback is None:
            logger.info("peer %s: data-channel message with no on_data_message set; ignored", peer.id)
            return
        busy = sum(1 for t in peer.tasks if t.get_name().endswith(":message"))
        if busy >= MAX_MESSAGES_IN_FLIGHT_PER_PEER:
            peer.messages_dropped += 1
            logger.warning("peer %s: %d messages already in flight; dropped one", peer.id, busy)
            return
        try:
            result = callback(peer.source, peer.id, message)
        except Exception:
            logger.exception("peer %s: on_data_message failed", peer.id)
            return
        if inspect.isawaitable(result):
            peer.spawn(_await_logged(result, peer.id), "message")

    async def _watchdog(self, peer: PeerSession) -> None:
        """Drop a peer that never connects, or whose video stops (a tab closed without a goodbye). The idle check
        starts at the connection, not after `connect_timeout_s`, so a publisher that vanishes just after connecting
        is freed within `peer_idle_timeout_s` too."""
        connect_by = time.monotonic() + self.config.connect_timeout_s
        idle = self.config.peer_idle_timeout_s
        why = None
        while not peer.ever_connected and self._peers.get(peer.id) is peer:
            left = connect_by - time.monotonic()
            if left <= 0:
                why = f"not connected after {self.config.connect_timeout_s:g} s"
                break
            await asyncio.sleep(min(left, 0.25))
        while why is None and idle is not None and self._peers.get(peer.id) is peer:
            await asyncio.sleep(min(1.0, idle / 4))
            buffer = self.buffers.get(peer.source)
            if peer.video_track is None or buffer is None or buffer.track is not peer.video_track:
                continue
            newest = buffer.latest()
            last = newest.received_at if newest is not None else peer.created_at
            if time.monotonic() - last > idle:
                why = f"no video for {idle:g} s"
        if why is not None and self._peers.get(peer.id) is peer:
            self._spawn(self._drop_peer(peer, why), f"webrtc-drop-peer:{peer.id}")

    async def _drop_peer(self, peer: PeerSession, why: str) -> None:
        if self._peers.get(peer.id) is peer:
            del self._peers[peer.id]
        logger.info("peer %s (source %r) gone: %s", peer.id, peer.source, why)
        await peer.close()
        await self._release_buffer(peer)
        await trim_heap()  # its decoder's freed buffers back to the kernel (webrtc/heap.py says why)

    async def _release_buffer(self, peer: PeerSession) -> None:
        buffer = self.buffers.get(peer.source)
        if buffer is None or peer.video_track is None:
            return
        if buffer.drain_task is not None and not any(p.source == peer.source for p in self._peers.values()):
            await buffer.detach()
        if peer.auto_named and not any(p.source == peer.source for p in self._peers.values()):
            if self.buffers.pop(peer.source, None) is not None:  # browser-<n> names are not reused
                self._note_sources_changed()

    # --- handlers ------------------------------------------------------------------------------

    @web.middleware
    async def _guarded(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.guard is None:  # not started: nothing is served yet
            return web.Response(status=503, text="starting\n")
        return await self.guard.middleware(request, handler)

    async def _add_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        if self.guard is not None:
            await self.guard.add_headers(request, response)

    async def _handle_index(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text=_static_text("index.html"), content_type="text/html")

    async def _handle_static(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text=_static_text(request.path.lstrip("/")), content_type="application/javascript")

    async def _handle_page_config(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({
            "iceServers": [s.to_browser() for s in self.config.ice_servers],
            "maxMessageBytes": self.config.max_message_bytes,
        })

    async def _handle_healthz(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.health(detail=self.guard is None or self.guard.authorized(request)))

    async def _handle_metrics(self, request: web.Request) -> web.StreamResponse:
        if self.metrics_exposition is None:
            return web.Response(status=404, text="no metrics here\n")
        body, content_type = self.metrics_exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _handle_offer(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._read_body(request, "application/json")
            try:
                data = json.loads(body)
            except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, "[[[[..." too deep
                raise SignalingError(f"body is not JSON: {exc}") from exc
            if not isinstance(data, dict):
                raise SignalingError('body must be a JSON object {"sdp", "type": "offer", "source"?}')
            if data.get("type") != "offer":
                raise SignalingError(f"type must be 'offer', got {data.get('type')!r}")
            peer = await self._answer(data.get("sdp"), data.get("source"), PeerKind.BROWSER,
                                      remote=request.remote or "", replaces=data.get("replaces"))
        except SignalingError as exc:
            logger.info("POST /offer refused (%d): %s", exc.status, exc.reason)
            response = web.json_response({"error": exc.reason}, status=exc.status, headers=_retry_after(exc))
            if exc.status == 408:
                response.force_close()  # the rest of a slow body is not waited for
            return response
        local = peer.pc.localDescription
        return web.json_response({
            "sdp": add_bitrate_hint(local.sdp, self.config.video_bitrate_hint_kbps),
            "type": local.type,
            "peer_id": peer.id,
            "source": peer.source,
            "session_secret": peer.secret,
        })

    async def _handle_whip(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._read_body(request, "application/sdp")
            try:
                sdp = body.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SignalingError("SDP offer is not UTF-8 text") from exc
            peer = await self._answer(sdp, request.query.get("source"), PeerKind.WHIP, remote=request.remote or "")
        except SignalingError as exc:
            logger.info("POST /whip refused (%d): %s", exc.status, exc.reason)
            response = web.Response(text=exc.reason + "\n", status=exc.status, headers=_retry_after(exc))
            if exc.status == 408:
                response.force_close()  # the rest of a slow body is not waited for
            return response
        location = f"/whip/{peer.secret}"  # the resource URL is the session's secret: only its publisher knows it
        return web.Response(
            status=201,
            text=add_bitrate_hint(peer.pc.localDescription.sdp, self.config.video_bitrate_hint_kbps),
            content_type="application/sdp",
            headers={"Location": location, "ETag": f'"{peer.id}"', "X-Source": peer.source, "X-Peer-Id": peer.id},
        )

    async def _handle_whip_delete(self, request: web.Request) -> web.StreamResponse:
        given = request.match_info["resource"].encode("utf-8")
        peer = next((p for p in list(self._peers.values())
                     if hmac.compare_digest(given, p.secret.encode("utf-8"))), None)
        if peer is None or peer.kind is not PeerKind.WHIP:
            return web.Response(text="unknown WHIP resource (already ended, or never existed)\n", status=404)
        await self._drop_peer(peer, "WHIP DELETE")
        return web.Response(text="session ended\n", status=200)


WebRTCDriver = WebRTCServer
"""The name the daemon uses for the same class."""


def _retry_after(exc: SignalingError) -> dict[str, str]:
    return {"Retry-After": "5"} if exc.status in (429, 503) else {}


def names_preview(names: list[str], shown: int = NAMES_SHOWN_IN_ERRORS) -> str:
    """At most `shown` names for an error message, then how many more: errors stay short with many sources."""
    if len(names) <= shown:
        return ", ".join(names) or "none"
    return f"{', '.join(names[:shown])} and {len(names) - shown} more"


def _static_text(name: str) -> str:
    return resources.files(__package__).joinpath(_STATIC, name).read_text(encoding="utf-8")


async def _discard_until_closed(track: Any, source: str) -> None:
    task = start_discarding(track, source)
    try:
        await task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _await_logged(awaitable: Awaitable[Any], peer_id: str) -> None:
    try:
        await awaitable
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("peer %s: on_data_message failed", peer_id)
