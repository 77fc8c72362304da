"""`WebRTCServer`: the aiohttp signaling server, its peers, sources and buffers.

Endpoints (ARCHITECTURE.md):

=========================  ===================================================================
``GET /``                  the browser page (``static/index.html``; its scripts: ``http_guard.PAGE_SCRIPTS``)
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
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from importlib import resources
from typing import Any

from aiohttp import web

from . import http_guard
from .addresses import page_url
from .catalog import SourceCatalog
from .config import SourceConfig, WebRTCConfig
from .errors import SignalingError, WebRTCConfigError
from .frame_buffer import FrameBuffer
from .http_guard import ClientErrorLogger, DeadlineSite, HttpGuard, content_security_policy, inline_styles, is_text
from .ice import restrict_host_addresses
from .peers import PeerKind, PeerSession
from .registry import DataMessageCallback, PeerRegistry
from .sdp import add_bitrate_hint
from .sources import SourceRunner

__all__ = ["DataMessageCallback", "WebRTCDriver", "WebRTCServer", "names_preview"]

logger = logging.getLogger(__name__)

NAMES_SHOWN_IN_ERRORS = 5
_STATIC = "static"


class WebRTCServer:
    """Owns the HTTP server, the peers (`registry`), the configured sources and one `FrameBuffer` per source
    (`catalog`).

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
        self._tasks: set[asyncio.Task[Any]] = set()
        self.catalog = SourceCatalog(self.config, names, self._spawn)
        self.buffers: dict[str, FrameBuffer] = self.catalog.buffers
        """One `FrameBuffer` per source name (configured sources and peers)."""
        self.registry = PeerRegistry(self.config, self.catalog, self._spawn, lambda: self.on_data_message)
        self.guard: HttpGuard | None = None
        """The Host/Origin/token checks (made at start, when the certificate's names are known)."""
        self.app = web.Application(client_max_size=self.config.max_body_bytes, middlewares=[self._guarded])
        self.app.on_response_prepare.append(self._add_headers)
        self._site: DeadlineSite | None = None
        self._runners: dict[str, SourceRunner] = {}
        self._http: web.AppRunner | None = None
        self._started_at: float | None = None
        self._closing: asyncio.Future[None] | None = None
        """Set by the first `close()`; later callers await it."""
        self._port: int | None = None
        self._add_routes()

    def __repr__(self) -> str:
        return f"WebRTCServer(url={self.url if self._port else None!r}, sources={self.source_names()}, peers={len(self.registry.peers)})"

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the HTTP server and start the configured sources."""
        if self._http is not None:
            return
        if self._closing is not None:
            raise RuntimeError("WebRTCServer was closed; make a new one")
        c = self.config
        ssl_context, cert_names = None, []
        if c.tls_certfile and c.tls_keyfile:  # the config allows both or neither
            from .tls import certificate_names, server_ssl_context

            ssl_context = server_ssl_context(c.tls_certfile, c.tls_keyfile)
            cert_names = certificate_names(c.tls_certfile)
        self.guard = HttpGuard(token=c.auth_token, tls=c.tls, bound_host=c.host, allowed_hosts=c.allowed_hosts,
                               certificate_names=cert_names,
                               csp=content_security_policy(inline_styles(_static_text("index.html"))))
        if c.host_candidate_addresses is not None:
            restrict_host_addresses(c.host_candidate_addresses)
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0,
                               logger=ClientErrorLogger(logging.getLogger("aiohttp.server")),
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
        """Close peers, sources, buffers and the HTTP server; cancel every task. Safe to call twice: the first call
        does the work, a concurrent or later call waits until it is done (as aiortc's `RTCPeerConnection.close`)."""
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_future()
            try:
                await self._close()
            finally:
                self._closing.set_result(None)
        await asyncio.shield(self._closing)

    @property
    def closed(self) -> bool:
        return self._closing is not None

    async def _close(self) -> None:
        if self._http is not None:
            await self._http.shutdown()
        await self.registry.close_all()
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
        """The page's URL with its token (`webrtc.addresses.page_url`: never 0.0.0.0): for a terminal, never a log."""
        return page_url(self.config, self.port, host)

    # --- the daemon's API ----------------------------------------------------------------------

    def source_names(self) -> list[str]:
        """Names of every source with a buffer: configured sources first, then peers in arrival order."""
        return list(self.buffers)

    async def wait_sources_changed(self, seen: int = 0) -> int:
        """Wait until the set of sources has changed since version `seen` (at once if it has); returns the version now.

        The agent's per-source MQTT topics follow `source_names()` with this instead of polling it.
        """
        return await self.catalog.wait_changed(seen)

    def get_buffer(self, name: str) -> FrameBuffer:
        """The `FrameBuffer` of source `name`; `KeyError` naming the known sources otherwise."""
        try:
            return self.buffers[name]
        except KeyError:
            raise KeyError(f"no source {name!r}; known: {names_preview(self.source_names())}") from None

    def peers(self) -> list[PeerSession]:
        """The open peer sessions."""
        return list(self.registry.peers.values())

    def get_peer(self, peer_id: str) -> PeerSession:
        """The open session `peer_id`; `PeerNotFoundError` otherwise."""
        return self.registry.get(peer_id)

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
        await self.registry.drop(self.get_peer(peer_id), "closed by the server")

    def health(self, detail: bool = True) -> dict[str, Any]:
        """The /healthz document; with ``detail=False`` only ``{"status"}`` (what callers without the token see)."""
        status = "ok" if self._http is not None and not self.closed else "stopped"
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
            "peers": [p.info() for p in self.peers()],
            "max_peers": self.config.max_peers,
        }
        if self.healthz_extra is not None:
            try:
                doc.update(self.healthz_extra())
            except Exception as exc:  # the health page must answer even when the daemon's part fails
                doc["healthz_extra_error"] = f"{type(exc).__name__}: {exc}"
        return doc

    # --- internals -----------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _add_routes(self) -> None:
        r = self.app.router
        if self.config.serve_page:
            r.add_get("/", self._handle_index)
            for script in http_guard.PAGE_SCRIPTS:
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
            for key in ("sdp", "source", "replaces"):  # "\ud800" is valid JSON but no text: refused here, not a 500
                if isinstance(data.get(key), str) and not is_text(data[key]):
                    raise SignalingError(f"{key} is not valid Unicode text (it holds a lone surrogate escape)")
            peer = await self.registry.answer(data.get("sdp"), data.get("source"), PeerKind.BROWSER,
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
            peer = await self.registry.answer(sdp, request.query.get("source"), PeerKind.WHIP, remote=request.remote or "")
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
        peer = self.registry.by_secret(request.match_info["resource"])
        if peer is None or peer.kind is not PeerKind.WHIP:
            return web.Response(text="unknown WHIP resource (already ended, or never existed)\n", status=404)
        await self.registry.drop(peer, "WHIP DELETE")
        return web.Response(text="session ended\n", status=200)


WebRTCDriver = WebRTCServer
"""Another name of `WebRTCServer`, kept for code written against it (the agent's parameter is `webrtc_driver`)."""


def _retry_after(exc: SignalingError) -> dict[str, str]:
    return {"Retry-After": "5"} if exc.status in (429, 503) else {}


def names_preview(names: list[str], shown: int = NAMES_SHOWN_IN_ERRORS) -> str:
    """At most `shown` names for an error message, then how many more: errors stay short with many sources."""
    if len(names) <= shown:
        return ", ".join(names) or "none"
    return f"{', '.join(names[:shown])} and {len(names) - shown} more"


def _static_text(name: str) -> str:
    return resources.files(__package__).joinpath(_STATIC, name).read_text(encoding="utf-8")
