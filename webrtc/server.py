"""`WebRTCServer` (alias `WebRTCDriver`): the aiohttp signaling server, its peers, sources and buffers.

Endpoints (ARCHITECTURE.md):

=========================  ===================================================================
``GET /``                  the browser page (``static/index.html``; its script is ``GET /app.js``)
``GET /webrtc-config``     ICE servers and limits for the page (TURN credentials included)
``POST /offer``            JSON ``{"sdp", "type": "offer", "source"?}`` -> ``{"sdp", "type": "answer",
                           "peer_id", "source"}``
``POST /whip``             RFC 9725: ``application/sdp`` offer (``?source=name`` optional) ->
                           ``201 Created``, ``Location: /whip/<id>``, answer SDP
``DELETE /whip/<id>``      ends that WHIP session (``PATCH`` and other methods: 405)
``GET /healthz``           JSON: sources with buffer stats, peers, plus ``healthz_extra()``
``GET /metrics``           whatever ``metrics_exposition()`` returns (the daemon's Prometheus text); 404 unset
=========================  ===================================================================

Refusals carry a one-line reason (JSON ``{"error": ...}`` for /offer, text for /whip): 400 malformed or
non-offer SDP, 404 unknown WHIP resource, 409 source name owned by a configured source, 413 body over
``max_body_bytes``, 415 wrong content type, 503 peer limit reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import logging
import secrets
import time
from importlib import resources
from typing import Any, Awaitable, Callable, Iterable

from aiohttp import web

from .config import SourceConfig, WebRTCConfig, validate_source_name
from .errors import PeerNotFoundError, SignalingError, TooManyPeersError, WebRTCConfigError
from .frame_buffer import FrameBuffer
from .ice import restrict_host_addresses
from .peers import PeerKind, PeerSession
from .sdp import add_bitrate_hint, check_offer_sdp
from .sources import SourceRunner
from .tracks import start_discarding

__all__ = ["DataMessageCallback", "WebRTCDriver", "WebRTCServer"]

logger = logging.getLogger(__name__)

DataMessageCallback = Callable[[str, str, str], "Awaitable[Any] | Any"]
"""``callback(source_name, peer_id, text)``; may be a coroutine function."""

MAX_MESSAGES_IN_FLIGHT_PER_PEER = 8
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
        self.app = web.Application(client_max_size=self.config.max_body_bytes)
        self._peers: dict[str, PeerSession] = {}
        self._pending = 0
        self._runners: dict[str, SourceRunner] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._counter = itertools.count(1)
        self._http: web.AppRunner | None = None
        self._started_at: float | None = None
        self._closed = False
        self._port: int | None = None
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
        if self.config.host_candidate_addresses is not None:
            restrict_host_addresses(self.config.host_candidate_addresses)
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise WebRTCConfigError(f"cannot listen on {self.config.host}:{self.config.port}: {exc}") from exc
        self._http = runner
        self._port = runner.addresses[0][1]
        self._started_at = time.monotonic()
        for source in self.sources:
            source_runner = SourceRunner(source, self.buffers[source.name])
            self._runners[source.name] = source_runner
            source_runner.start()
        logger.info("webrtc ingest listening on %s (sources: %s)", self.url, ", ".join(self.source_names()) or "none")

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

    async def __aenter__(self) -> "WebRTCServer":
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
        """``http://host:port`` of the running server (``http://[::1]:port`` for an IPv6 host)."""
        host = self.config.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    # --- the daemon's API ----------------------------------------------------------------------

    def source_names(self) -> list[str]:
        """Names of every source with a buffer: configured sources first, then peers in arrival order."""
        return list(self.buffers)

    def get_buffer(self, name: str) -> FrameBuffer:
        """The `FrameBuffer` of source `name`; `KeyError` naming the known sources otherwise."""
        try:
            return self.buffers[name]
        except KeyError:
            raise KeyError(f"no source {name!r}; known: {self.source_names()}") from None

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

    def health(self) -> dict[str, Any]:
        """The /healthz document."""
        sources = {}
        for name, buffer in self.buffers.items():
            entry = buffer.stats().as_dict()
            if name in self._runners:
                entry.update(self._runners[name].info())
            else:
                entry["kind"] = "peer"
            sources[name] = entry
        doc: dict[str, Any] = {
            "status": "ok" if self._http is not None and not self._closed else "stopped",
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
            r.add_get("/app.js", self._handle_static)
        r.add_get("/webrtc-config", self._handle_page_config)
        r.add_post("/offer", self._handle_offer)
        r.add_post("/whip", self._handle_whip)
        r.add_delete("/whip/{peer_id}", self._handle_whip_delete)
        r.add_get("/healthz", self._handle_healthz)
        r.add_get("/metrics", self._handle_metrics)

    async def _read_body(self, request: web.Request, content_type: str) -> bytes:
        if request.content_type != content_type:
            raise SignalingError(
                f"wrong content type {request.content_type or 'none'!r}: send {content_type}", status=415
            )
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise SignalingError(f"body of {request.content_length} bytes is over the {limit}-byte limit", status=413)
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

    async def _answer(self, sdp: object, source: object, kind: PeerKind) -> PeerSession:
        """Negotiate one peer: checks, limit, setRemoteDescription, answer. Raises `SignalingError`."""
        from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

        if self._closed or self._http is None:
            raise SignalingError("the server is shutting down", status=503)
        check_offer_sdp(sdp)
        name, auto = self._source_for_peer(source, kind)
        replacing = any(p.source == name for p in self._peers.values())  # a reconnect frees its old slot
        if len(self._peers) + self._pending - replacing >= self.config.max_peers:
            raise TooManyPeersError(f"peer limit of {self.config.max_peers} reached; try again later")
        self._pending += 1
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[
            RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential)
            for s in self.config.ice_servers
        ]))
        peer = PeerSession(secrets.token_hex(8), name, kind, pc, auto_named=auto)
        self._wire(peer)
        try:
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
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
        if self._closed:
            await peer.close()
            raise SignalingError("the server is shutting down", status=503)
        old = next((p for p in self._peers.values() if p.source == name), None)
        self._peers[peer.id] = peer
        if peer.video_track is not None:  # only an admitted peer feeds a buffer (a refused offer has a track too)
            buffer = self.buffers.get(name)
            if buffer is None:
                buffer = self.buffers[name] = self._new_buffer(name)
            buffer.attach(peer.video_track)
        peer.spawn(self._watchdog(peer), "watchdog")
        if old is not None:  # a page reconnecting under the same name: the newest publisher wins
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
        """Drop a peer that never connects, or whose video stops (a tab closed without a goodbye)."""
        await asyncio.sleep(self.config.connect_timeout_s)
        why = None
        if peer.pc.connectionState != "connected":
            why = f"not connected after {self.config.connect_timeout_s:g} s"
        idle = self.config.peer_idle_timeout_s
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

    async def _release_buffer(self, peer: PeerSession) -> None:
        buffer = self.buffers.get(peer.source)
        if buffer is None or peer.video_track is None:
            return
        if buffer.drain_task is not None and not any(p.source == peer.source for p in self._peers.values()):
            await buffer.detach()
        if peer.auto_named and not any(p.source == peer.source for p in self._peers.values()):
            self.buffers.pop(peer.source, None)  # browser-<n> names are not reused

    # --- handlers ------------------------------------------------------------------------------

    async def _handle_index(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text=_static_text("index.html"), content_type="text/html")

    async def _handle_static(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text=_static_text("app.js"), content_type="application/javascript")

    async def _handle_page_config(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({
            "iceServers": [s.to_browser() for s in self.config.ice_servers],
            "maxMessageBytes": self.config.max_message_bytes,
        })

    async def _handle_healthz(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.health())

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
            peer = await self._answer(data.get("sdp"), data.get("source"), PeerKind.BROWSER)
        except SignalingError as exc:
            logger.info("POST /offer refused (%d): %s", exc.status, exc.reason)
            return web.json_response({"error": exc.reason}, status=exc.status, headers=_retry_after(exc))
        local = peer.pc.localDescription
        return web.json_response({
            "sdp": add_bitrate_hint(local.sdp, self.config.video_bitrate_hint_kbps),
            "type": local.type,
            "peer_id": peer.id,
            "source": peer.source,
        })

    async def _handle_whip(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._read_body(request, "application/sdp")
            try:
                sdp = body.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SignalingError("SDP offer is not UTF-8 text") from exc
            peer = await self._answer(sdp, request.query.get("source"), PeerKind.WHIP)
        except SignalingError as exc:
            logger.info("POST /whip refused (%d): %s", exc.status, exc.reason)
            return web.Response(text=exc.reason + "\n", status=exc.status, headers=_retry_after(exc))
        location = f"/whip/{peer.id}"
        return web.Response(
            status=201,
            text=add_bitrate_hint(peer.pc.localDescription.sdp, self.config.video_bitrate_hint_kbps),
            content_type="application/sdp",
            headers={"Location": location, "ETag": f'"{peer.id}"', "X-Source": peer.source},
        )

    async def _handle_whip_delete(self, request: web.Request) -> web.StreamResponse:
        peer = self._peers.get(request.match_info["peer_id"])
        if peer is None or peer.kind is not PeerKind.WHIP:
            return web.Response(text="unknown WHIP resource (already ended, or never existed)\n", status=404)
        await self._drop_peer(peer, "WHIP DELETE")
        return web.Response(text="session ended\n", status=200)


WebRTCDriver = WebRTCServer
"""The name the daemon uses for the same class."""


def _retry_after(exc: SignalingError) -> dict[str, str]:
    return {"Retry-After": "5"} if exc.status == 503 else {}


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
