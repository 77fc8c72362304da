"""`PeerRegistry`: who may publish, under which name, and for how long.

It admits peers (limits on peers and pending sessions, source names, the holder of a name), negotiates their
offers with aiortc, wires their tracks and data channels, watches them (a peer that never connects, or whose video
stops, is dropped) and drops them.

Pending sessions (answered, not connected yet) are bounded per address (`max_pending_per_client`) and all
together (`max_pending`), so offers that never connect cannot hold every peer slot, from however many addresses.
When there is no room, the oldest pending session that had `PENDING_GRACE_S` to connect yields to the new offer,
unless the new offer's address itself left a session unconnected within `NO_SHOW_MEMORY_S` (a flood from a few
addresses cannot push out the publishers it competes with). A source's rightful publisher (its reconnect, proven
with the old session's secret) takes its old session's slot and is never refused for lack of room.

The HTTP surface (`server.py`) calls `answer()`; nothing here knows HTTP beyond the status a `SignalingError`
carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import itertools
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from . import decoders, feedback, loss, sockets
from .catalog import SourceCatalog
from .config import WebRTCConfig, validate_source_name
from .errors import PeerNotFoundError, SignalingError, TooManyPeersError, WebRTCConfigError
from .heap import trim_heap
from .peers import PeerKind, PeerSession
from .sdp import check_offer_sdp
from .tracks import start_discarding

__all__ = ["DataMessageCallback", "PeerRegistry"]

logger = logging.getLogger(__name__)

DataMessageCallback = Callable[[str, str, str], "Awaitable[Any] | Any"]
"""``callback(source_name, peer_id, text)``; may be a coroutine function."""

MAX_MESSAGES_IN_FLIGHT_PER_PEER = 8
PENDING_GRACE_S = 5.0
"""A pending session has this long (at most half of `connect_timeout_s`) to connect before it may yield: ICE and
DTLS over a slow network or TURN take a few seconds."""
NO_SHOW_MEMORY_S = 60.0
"""How long an address whose session never connected may not push pending sessions out."""
NO_SHOWS_KEPT = 4096
"""Addresses remembered for that (least recently seen forgotten first): the memory an outsider can grow is bounded."""


class PeerRegistry:
    """The open peer sessions by id, and the sessions being negotiated."""

    def __init__(self, config: WebRTCConfig, catalog: SourceCatalog,
                 spawn: Callable[[Coroutine[Any, Any, Any], str], Any],
                 on_data_message: Callable[[], DataMessageCallback | None]) -> None:
        self.config = config
        self.catalog = catalog
        self._spawn = spawn
        self._on_data_message = on_data_message
        self.peers: dict[str, PeerSession] = {}
        """Admitted peers by id (connected, or answered and still connecting)."""
        self._negotiating: dict[str, int] = {}
        """Offers being answered right now, per client address."""
        self._counter = itertools.count(1)
        self._replacing: set[str] = set()
        """Sources whose rightful publisher's reconnect is being negotiated (one at a time each)."""
        self._no_shows: OrderedDict[str, float] = OrderedDict()
        """Address -> when a session from it was dropped without ever connecting (`NO_SHOW_MEMORY_S`)."""
        self.closed = False
        """Set by the server's close: every offer is refused from then on."""

    @property
    def negotiating(self) -> int:
        """Offers being negotiated now (they hold a peer slot until admitted or refused)."""
        return sum(self._negotiating.values())

    @property
    def pending(self) -> int:
        """Sessions not connected yet: being negotiated, or answered and connecting."""
        return self.negotiating + sum(1 for p in self.peers.values() if not p.ever_connected)

    def get(self, peer_id: str) -> PeerSession:
        try:
            return self.peers[peer_id]
        except KeyError:
            raise PeerNotFoundError(peer_id) from None

    def by_secret(self, secret: str) -> PeerSession | None:
        """The peer whose session secret is `secret` (compared in constant time), or None."""
        given = secret.encode("utf-8")
        return next((p for p in list(self.peers.values()) if hmac.compare_digest(given, p.secret.encode("utf-8"))), None)

    async def close_all(self) -> None:
        self.closed = True
        peers = list(self.peers.values())
        self.peers.clear()
        await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)

    # --- admission -------------------------------------------------------------------------------

    def _source_for_peer(self, requested: object, kind: PeerKind) -> tuple[str, bool]:
        if requested is None or requested == "":  # browser-<n>/whip-<n>, skipping names a publisher chose
            taken = set(self.catalog.buffers).union(p.source for p in self.peers.values())
            while (name := f"{kind.value}-{next(self._counter)}") in taken:
                pass
            return name, True
        try:
            name = validate_source_name(requested)
        except WebRTCConfigError as exc:
            raise SignalingError(str(exc)) from None
        if name in self.catalog.configured:
            raise SignalingError(f"source {name!r} is a configured source; pick another name", status=409)
        return name, False

    def _holder(self, name: str, replaces: object) -> PeerSession | None:
        """The peer holding source `name` that this offer may replace; 409 when one holds it without proof."""
        holders = [p for p in self.peers.values() if p.source == name]
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
            1 for p in self.peers.values() if p.remote == remote and not p.ever_connected)

    def _admit(self, remote: str, name: str, holder: PeerSession | None) -> None:
        """Make room for an offer from `remote` for source `name`, or refuse it (429 or 503)."""
        if holder is not None:  # the rightful publisher reconnecting: its new session takes the old one's slot
            if name in self._replacing:
                raise SignalingError(f"a reconnect for source {name!r} is already being answered", status=429)
            return
        c = self.config
        if self._pending_from(remote) >= c.max_pending_per_client:
            raise SignalingError(f"{c.max_pending_per_client} sessions from this address are still "
                                 "connecting; try again when they connect or time out", status=429)
        while self.pending >= c.max_pending or len(self.peers) + self.negotiating >= c.max_peers:
            victim = self._yielding(remote)
            if victim is None:
                if self.pending >= c.max_pending:
                    raise SignalingError(f"{self.pending} sessions are still connecting (webrtc.max_pending="
                                         f"{c.max_pending}); try again shortly", status=503)
                raise TooManyPeersError(f"peer limit of {c.max_peers} reached; try again later")
            self._note_no_show(victim)
            self._let_go(victim, f"not connected after {time.monotonic() - victim.created_at:.1f} s; yielded its "
                                 "slot to a new offer")

    def _yielding(self, remote: str) -> PeerSession | None:
        """The pending session that gives way to an offer from `remote`: the oldest that had its chance to connect;
        None when there is none, or when `remote` itself recently left a session unconnected."""
        seen = self._no_shows.get(remote)
        if seen is not None and time.monotonic() - seen < NO_SHOW_MEMORY_S:
            return None
        grace = min(PENDING_GRACE_S, self.config.connect_timeout_s / 2)
        now = time.monotonic()
        ready = [p for p in self.peers.values() if not p.ever_connected and now - p.created_at >= grace]
        return min(ready, key=lambda p: p.created_at, default=None)

    def _note_no_show(self, peer: PeerSession) -> None:
        self._no_shows.pop(peer.remote, None)
        self._no_shows[peer.remote] = time.monotonic()
        while len(self._no_shows) > NO_SHOWS_KEPT:
            self._no_shows.popitem(last=False)

    async def answer(self, sdp: object, source: object, kind: PeerKind, *, remote: str = "",
                     replaces: object = None) -> PeerSession:
        """Negotiate one peer: checks, limits, setRemoteDescription, answer. Raises `SignalingError`."""
        from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

        decoders.install()  # here, not at start: a daemon with no peer never imports aiortc
        loss.install()  # a lost packet costs a tenth of a second and a PLI, not seconds
        feedback.install()  # REMB at most every 200 ms per stream, not per packet while "overusing"
        sockets.install(self.config.udp_receive_buffer_bytes)  # media past aioice's STUN parse; its buffer size
        if self.closed:
            raise SignalingError("the server is shutting down", status=503)
        offer = check_offer_sdp(sdp)
        name, auto = self._source_for_peer(source, kind)
        holder = self._holder(name, replaces)  # a reconnect frees its old slot
        self._admit(remote, name, holder)
        self._negotiating[remote] = self._negotiating.get(remote, 0) + 1
        if holder is not None:
            self._replacing.add(name)
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
            self._negotiating[remote] -= 1
            if not self._negotiating[remote]:
                del self._negotiating[remote]
            if holder is not None:
                self._replacing.discard(name)
        try:  # the checks again, now without an await before admission: others may have come meanwhile
            if self.closed:
                raise SignalingError("the server is shutting down", status=503)
            old = self._holder(name, replaces)  # 409 when another publisher took the name meanwhile
            if peer.video_track is not None and not self.catalog.room_for(name, {p.source for p in self.peers.values()}):
                raise SignalingError(f"source limit reached (webrtc.max_sources={self.config.max_sources}, all in "
                                     "use); end a session or raise the limit", status=503)
        except SignalingError:
            await peer.close()
            raise
        self.peers[peer.id] = peer
        if peer.video_track is not None:  # only an admitted peer feeds a buffer (a refused offer has a track too)
            self.catalog.buffer_for_peer(name).attach(peer.video_track)
        peer.spawn(self._watchdog(peer), "watchdog")
        if old is not None:  # its own publisher reconnecting: the old session goes (out of the table at once)
            self._let_go(old, f"replaced by peer {peer.id}")
        logger.info("peer %s (%s) connected as source %r", peer.id, kind.value, name)
        return peer

    # --- a peer's life ---------------------------------------------------------------------------

    def _wire(self, peer: PeerSession) -> None:
        pc = peer.pc

        @pc.on("track")
        def on_track(track: Any) -> None:  # aiortc emits tracks in setRemoteDescription; `answer` attaches
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
            if state in ("failed", "closed") and peer.id in self.peers:
                self._spawn(self.drop(peer, f"connection {state}"), f"webrtc-drop-peer:{peer.id}")

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
        callback = self._on_data_message()
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
        while not peer.ever_connected and self.peers.get(peer.id) is peer:
            left = connect_by - time.monotonic()
            if left <= 0:
                why = f"not connected after {self.config.connect_timeout_s:g} s"
                self._note_no_show(peer)
                break
            await asyncio.sleep(min(left, 0.25))
        while why is None and idle is not None and self.peers.get(peer.id) is peer:
            await asyncio.sleep(min(1.0, idle / 4))
            buffer = self.catalog.buffers.get(peer.source)
            if peer.video_track is None or buffer is None or buffer.track is not peer.video_track:
                continue
            newest = buffer.latest()
            last = newest.received_at if newest is not None else peer.created_at
            if time.monotonic() - last > idle:
                why = f"no video for {idle:g} s"
        if why is not None and self.peers.get(peer.id) is peer:
            self._spawn(self.drop(peer, why), f"webrtc-drop-peer:{peer.id}")

    def _let_go(self, peer: PeerSession, why: str) -> None:
        """Take `peer` out of the table now (its slot is free at once) and close it in the background."""
        self.peers.pop(peer.id, None)
        self._spawn(self.drop(peer, why), f"webrtc-drop-peer:{peer.id}")

    async def drop(self, peer: PeerSession, why: str) -> None:
        """End one peer session: out of the table, closed, its buffer detached (and forgotten when auto-named)."""
        if self.peers.get(peer.id) is peer:
            del self.peers[peer.id]
        logger.info("peer %s (source %r) gone: %s", peer.id, peer.source, why)
        await peer.close()
        await self._release_buffer(peer)
        await trim_heap()  # its decoder's freed buffers back to the kernel (webrtc/heap.py says why)

    async def _release_buffer(self, peer: PeerSession) -> None:
        buffer = self.catalog.buffers.get(peer.source)
        if buffer is None or peer.video_track is None:
            return
        if buffer.drain_task is not None and not self._in_use(peer.source):
            await buffer.detach()
        if peer.auto_named and not self._in_use(peer.source):
            self.catalog.remove(peer.source)  # browser-<n> names are not reused


    def _in_use(self, source: str) -> bool:
        return any(p.source == source for p in self.peers.values())


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
