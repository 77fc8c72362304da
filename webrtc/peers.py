"""One remote peer (a browser page or a WHIP publisher): its connection, data channel and tasks."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
import time
from collections.abc import Coroutine
from typing import Any

from .errors import DataChannelClosedError

__all__ = ["PeerKind", "PeerSession"]

logger = logging.getLogger(__name__)


class PeerKind(str, enum.Enum):
    """How a peer reached the server."""

    BROWSER = "browser"
    """POST /offer (the page, or any JSON offer/answer client)."""
    WHIP = "whip"
    """POST /whip (RFC 9725); ended by DELETE on its Location."""


class PeerSession:
    """A peer connection the server answered, with everything it owns.

    Tasks started for the peer (`spawn`) are cancelled when it closes; `close()` is safe to call twice.
    """

    def __init__(self, peer_id: str, source: str, kind: PeerKind, pc: Any, *, auto_named: bool,
                 remote: str = "") -> None:
        self.id = peer_id
        """Public id (shown in /healthz, used by the daemon to answer on the data channel)."""
        self.secret = secrets.token_urlsafe(32)
        """Known only to the publisher: its WHIP resource URL, or the proof a reconnecting page sends (never shown)."""
        self.remote = remote
        """The client's IP address (pending sessions are limited per address)."""
        self.ever_connected = False
        """True once the connection reached "connected" (until then the session is pending)."""
        self.source = source
        self.kind = kind
        self.pc = pc
        self.auto_named = auto_named
        """True when the source name was made up by the server (browser-<n>, whip-<n>)."""
        self.created_at = time.monotonic()
        self.channel: Any = None
        self.video_track: Any = None
        self.messages_in = 0
        self.messages_dropped = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"PeerSession({self.id!r}, source={self.source!r}, kind={self.kind.value}, state={self.state})"

    @property
    def state(self) -> str:
        """The peer connection's state (new, connecting, connected, failed, closed)."""
        return "closed" if self._closed else self.pc.connectionState

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def tasks(self) -> frozenset[asyncio.Task[Any]]:
        return frozenset(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run `coro` as a named task owned by this peer (cancelled when it closes)."""
        task = asyncio.get_running_loop().create_task(coro, name=f"webrtc-peer:{self.id}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("peer %s: task %s failed: %r", self.id, task.get_name(), task.exception())

    def send(self, text: str) -> None:
        """Send `text` on the peer's data channel, or raise `DataChannelClosedError`."""
        channel = self.channel
        if self._closed or channel is None or channel.readyState != "open":
            raise DataChannelClosedError(f"peer {self.id!r} has no open data channel")
        channel.send(text)

    def info(self) -> dict[str, Any]:
        """What /healthz shows about this peer."""
        return {
            "id": self.id,
            "source": self.source,
            "kind": self.kind.value,
            "state": self.state,
            "data_channel": None if self.channel is None else self.channel.readyState,
            "age_s": round(time.monotonic() - self.created_at, 1),
            "messages_in": self.messages_in,
            "messages_dropped": self.messages_dropped,
        }

    async def close(self) -> None:
        """Close the connection and cancel the peer's tasks. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        # shielded: a cancelled caller must not cancel aiortc's close half-way (it then fails with
        # InvalidStateError in a task nobody awaits)
        with contextlib.suppress(Exception):
            await asyncio.shield(self.pc.close())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
