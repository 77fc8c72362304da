"""What every HTTP request to the ingest server passes before a handler sees it.

- **Host**: the ``Host`` header must name this server (`allowed_hosts`), else 421. A web page elsewhere cannot
  then reach a loopback daemon through DNS rebinding: its requests carry the attacker's name as ``Host``.
  When the server binds a wildcard address and `allowed_hosts` is not configured, any IP-address literal is
  accepted too (rebinding needs a name; an address typed into the browser is the user's own choice).
- **Origin**: a state-changing request (anything but GET/HEAD/OPTIONS) carrying an ``Origin`` whose host and
  port differ from the ``Host`` asked for gets 403. No CORS headers are ever sent, so other origins cannot read answers either.
- **Token**: with an auth token configured, every route but the page (``/``, ``/app.js``) and ``/healthz``
  needs ``Authorization: Bearer <token>`` (compared in constant time), else 401 with ``WWW-Authenticate``; the
  answer says whether no token came or the one sent was refused, and the refusal is logged (one line with the
  peer's address, at most one per `REFUSAL_LOG_INTERVAL_S`, counting the ones held back). Routes added by the
  daemon are guarded too (deny by default). ``/healthz`` decides itself what to show.
- **Malformed requests**: a request aiohttp cannot parse (a bad request line, a header it refuses) is answered 400
  by aiohttp and logged here as one rate-limited line (`ClientErrorLogger`), not as a traceback; bytes that are
  not UTF-8 in a header never reach a handler as an error (`bearer_token_ok`, `is_text`).
- **Slow clients**: `DeadlineSite` closes a connection that has not sent a whole request head within
  ``header_timeout_s`` of connecting (TLS handshake included) or of its previous answer.
- **Headers**: every answer carries a Content-Security-Policy, ``nosniff``, ``no-referrer`` and frame denial.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .plain_http import TlsOrHint

__all__ = ["PAGE_SCRIPTS", "DeadlineSite", "HttpGuard", "bearer_token_ok", "content_security_policy", "inline_styles"]

logger = logging.getLogger(__name__)

PAGE_SCRIPTS = ("app.js", "console.js", "rules.js", "timeline.js")
"""The page's scripts (``static/``), in the order index.html loads them."""
PUBLIC_PATHS = frozenset({"/", *(f"/{s}" for s in PAGE_SCRIPTS), "/healthz", "/favicon.ico"})
"""Paths anyone who passes the Host check may GET: the page and its scripts (it reads its token from the URL
fragment) and the health summary."""
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_JSON_PATHS = frozenset({"/offer", "/webrtc-config", "/healthz"})
_WILDCARDS = ("0.0.0.0", "::", "")
REFUSAL_LOG_INTERVAL_S = 10.0
"""At most one log line per this many seconds for refused tokens (and one for unparsable requests)."""
NO_TOKEN = ("this server needs Authorization: Bearer <webrtc.auth_token> (open the page as /#token=<token>; "
            "`visual-agent url` prints it)")
TOKEN_REFUSED = ("the token was refused: it is not this server's webrtc.auth_token (open the page again with the "
                 "current token; `visual-agent url` prints it)")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def bearer_token_ok(header: str | None, token: str) -> bool:
    """True when `header` is ``Bearer <token>`` (scheme case-insensitive, token compared in constant time); a header
    that is not UTF-8 (aiohttp hands its bytes on as surrogate escapes) is simply not the token."""
    if not header:
        return False
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    try:
        sent = given.strip().encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte: not from the wire, not the token
        return False
    return hmac.compare_digest(sent, token.encode("utf-8"))


def is_text(value: object) -> bool:
    """True for a str that is valid Unicode: JSON may spell a lone surrogate (``"\\ud800"``), which no text
    encoding can write, so a field holding one is refused as a client error instead of failing later."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class RateLimitedLog:
    """Log lines an outsider can cause, at most one per `interval_s`; the lines held back meanwhile are counted in
    the next one (so a flood cannot fill the journal, and an operator still sees that it happens)."""

    def __init__(self, log: logging.Logger, interval_s: float = REFUSAL_LOG_INTERVAL_S) -> None:
        self.log = log
        self.interval_s = interval_s
        self.held = 0
        """Lines held back since the last one written."""
        self._next_at = 0.0

    def __call__(self, level: int, msg: str, *args: object) -> bool:
        """Write the line unless one was written less than `interval_s` ago; True when written."""
        now = time.monotonic()
        if now < self._next_at:
            self.held += 1
            return False
        if self.held:
            msg, args = msg + " (%d more like it held back)", (*args, self.held)
        self.held = 0
        self._next_at = now + self.interval_s
        self.log.log(level, msg, *args)
        return True


class ClientErrorLogger(logging.LoggerAdapter):
    """The logger given to aiohttp's request handler: a request it cannot parse (a client's mistake or an attack)
    becomes one rate-limited INFO line instead of an ERROR with a traceback; a real error in a handler still logs
    its traceback."""

    def __init__(self, log: logging.Logger) -> None:
        super().__init__(log, {})
        self.refusals = RateLimitedLog(log)

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            remote = args[0] if args else "?"
            what = (exc_info.message or type(exc_info).__name__).splitlines()[0][:120]
            self.refusals(logging.INFO, "bad HTTP request from %s answered %d: %s", remote, exc_info.code, what)
            return
        self.logger.error(msg, *args, exc_info=exc_info, **kwargs)


def content_security_policy(inline_styles: Iterable[str] = ()) -> str:
    """The page's policy: its own script only, the named inline styles (by hash), requests to itself only."""
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(s.encode('utf-8')).digest()).decode()}'" for s in inline_styles
    )
    return ("default-src 'none'; script-src 'self'; "
            f"style-src {hashes or chr(39) + 'none' + chr(39)}; connect-src 'self'; img-src 'self' data:; "
            "media-src 'self' blob: mediastream:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _host_name(header: str) -> str:
    """``Host`` header -> bare lowercase name: ``[::1]:8080`` -> ``::1``, ``Example.com.:80`` -> ``example.com``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    if header.count(":") == 1:
        header = header.split(":", 1)[0]
    return header.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HttpGuard:
    """The checks above as one aiohttp middleware (`middleware`) and a response hook (`add_headers`)."""

    def __init__(self, *, token: str | None, tls: bool, bound_host: str, allowed_hosts: list[str] | None,
                 certificate_names: Iterable[str] = (), csp: str) -> None:
        self.token = token
        self.tls = tls
        self.csp = csp
        self.any_ip = allowed_hosts is None and bound_host in _WILDCARDS
        if allowed_hosts is not None:
            names = {_host_name(h) if h != "*" else "*" for h in allowed_hosts}
        else:
            names = {"localhost", "127.0.0.1", "::1", *(_host_name(n) for n in certificate_names)}
            if bound_host not in _WILDCARDS:
                names.add(_host_name(bound_host) if not _is_ip(bound_host) else str(ipaddress.ip_address(bound_host)))
        self.allowed = frozenset(names)
        self.deadlines: DeadlineSite | None = None
        self.refusals = {sent: RateLimitedLog(logger) for sent in (False, True)}
        """The log of 401s, rate-limited apart for no token (False) and a refused one (True)."""

    def __repr__(self) -> str:
        return f"HttpGuard(allowed={sorted(self.allowed)}, any_ip={self.any_ip}, token={'set' if self.token else None})"

    def host_ok(self, header: str | None) -> bool:
        if not header:
            return False
        name = _host_name(header)
        if "*" in self.allowed or name in self.allowed:
            return True
        if _is_ip(name):
            return self.any_ip or str(ipaddress.ip_address(name)) in self.allowed
        return False

    def origin_ok(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:
            return True  # not sent by a browser page of another site (browsers send Origin on every POST)
        # the authority must be the Host asked for (itself an allowed name); the scheme is not compared, so a
        # proxy that terminates TLS in front of a plain-HTTP daemon works
        scheme, sep, authority = origin.strip().lower().partition("://")
        return bool(sep) and scheme in ("http", "https") and authority == request.headers.get("Host", "").lower()

    def authorized(self, request: web.Request) -> bool:
        """True when no token is configured or the request carries it."""
        return self.token is None or bearer_token_ok(request.headers.get("Authorization"), self.token)

    def _unauthorized(self, request: web.Request) -> web.Response:
        """401: no token sent, or the one sent refused (said apart, so a phone with an old link knows which); logged."""
        sent = bool(request.headers.get("Authorization", "").strip())
        self.refusals[sent](logging.WARNING if sent else logging.INFO, "%s %s from %s refused (401): %s", request.method,
                      request.path[:100], request.remote or "?", "token refused" if sent else "no token")
        return _refuse(request, 401, TOKEN_REFUSED if sent else NO_TOKEN,
                       {"WWW-Authenticate": 'Bearer realm="visual-agent"' + (', error="invalid_token"' if sent else "")})

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        deadlines = self.deadlines
        if deadlines is not None:
            deadlines.request_started(request.transport)
        try:
            if not self.host_ok(request.headers.get("Host")):
                logger.info("%s %s refused (421): Host %r is not an allowed name", request.method, request.path,
                            (request.headers.get("Host") or "")[:100])
                return _refuse(request, 421, "this server does not answer to that host name; add it to "
                               "webrtc.allowed_hosts (or open the page by an allowed name)")
            if request.method not in SAFE_METHODS and not self.origin_ok(request):
                logger.info("%s %s refused (403): cross-origin request from %r", request.method, request.path,
                            request.headers.get("Origin", "")[:100])
                return _refuse(request, 403, "cross-origin request refused")
            if not (request.method in ("GET", "HEAD") and request.path in PUBLIC_PATHS) and not self.authorized(request):
                return self._unauthorized(request)
            return await handler(request)
        finally:
            if deadlines is not None:
                deadlines.request_finished(request.transport)

    async def add_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """on_response_prepare hook: the policy headers on every answer (errors included)."""
        headers = response.headers
        headers.setdefault("Content-Security-Policy", self.csp)
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("Referrer-Policy", "no-referrer")
        headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("Cache-Control", "no-store")
        for name in [h for h in headers if h.lower().startswith("access-control-")]:
            del headers[name]


def _refuse(request: web.Request, status: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    if request.path in _JSON_PATHS:
        return web.Response(text=json.dumps({"error": reason}), status=status, content_type="application/json",
                            headers=headers)
    return web.Response(text=reason + "\n", status=status, headers=headers)


class _DeadlineProtocol(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection; closes it when its request head is overdue."""

    def __init__(self, inner: Any, site: DeadlineSite) -> None:
        self.inner = inner
        self.site = site
        self.transport: Any = None
        self.timer: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        self.disarm()
        self.timer = asyncio.get_running_loop().call_later(self.site.header_timeout_s, self._expired)

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self) -> None:
        self.timer = None
        self.site.cut_off += 1
        if self.transport is not None and not self.transport.is_closing():
            logger.debug("closing a connection without a request head after %g s", self.site.header_timeout_s)
            self.transport.close()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.site.connections[transport] = self
        self.arm()
        self.inner.connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.disarm()
        self.site.connections.pop(self.transport, None)
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class DeadlineSite(web.TCPSite):
    """A `web.TCPSite` whose connections must send each request head within `header_timeout_s`.

    The clock runs from the connection (TLS handshake included) and again from the end of each answer
    (so an idle keep-alive connection is closed after the same time); it stops while a request is handled.
    aiohttp (3.14) has no request-head timeout of its own: `start` is `TCPSite.start` with the protocol factory
    wrapped. It keeps its own copies of what it listens with; the one private attribute it writes is marked there.
    """

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, header_timeout_s: float,
                 ssl_context: Any = None, backlog: int = 128) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context, backlog=backlog, shutdown_timeout=1.0)
        self.web_runner = runner
        self.listen_on = (host, port)
        self.ssl_context = ssl_context
        self.backlog = backlog
        self.header_timeout_s = header_timeout_s
        self.listening: asyncio.Server | None = None
        self.connections: dict[Any, _DeadlineProtocol] = {}
        self.cut_off = 0
        """Connections closed for sending no request head in time."""

    @property
    def port(self) -> int:
        """The bound port (the requested one before start)."""
        sockets = self.listening.sockets if self.listening is not None else ()
        return sockets[0].getsockname()[1] if sockets else self.listen_on[1]

    def request_started(self, transport: Any) -> None:
        proto = self.connections.get(transport)
        if proto is not None:
            proto.disarm()

    def request_finished(self, transport: Any) -> None:
        proto = self.connections.get(transport)
        if proto is not None and not transport.is_closing():
            proto.arm()

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self.web_runner.server
        assert server is not None
        def serve() -> asyncio.BaseProtocol:
            return _DeadlineProtocol(server(), self)

        host, port = self.listen_on
        loop = asyncio.get_running_loop()
        if self.ssl_context is None:
            self.listening = await loop.create_server(serve, host, port, backlog=self.backlog)
        else:  # TLS, or a redirect to https for a plain http:// request (plain_http.py)
            context, timeout = self.ssl_context, self.header_timeout_s
            self.listening = await loop.create_server(
                lambda: TlsOrHint(serve, context, handshake_timeout_s=timeout), host, port, backlog=self.backlog)
        # aiohttp's private attribute: `BaseSite.stop()` closes the server it finds in `_server` (pinned aiohttp
        # range in pyproject.toml; tests/test_webrtc_server.py::test_deadline_site_aiohttp_internals fails if it moves).
        self._server = self.listening


_STYLE = re.compile(r"<style>(.*?)</style>", re.DOTALL)


def inline_styles(html: str) -> list[str]:
    """The contents of the page's ``<style>`` elements (their hashes go into the CSP)."""
    return _STYLE.findall(html)
