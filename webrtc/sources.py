"""Configured sources (video file, RTSP URL, V4L2 camera) read by aiortc's `MediaPlayer` into a `FrameBuffer`.

Each source runs one named task (`webrtc-source:<name>`) that opens the player in a worker thread (opening
an RTSP URL or a camera blocks; after ``open_timeout_s`` the attempt counts as failed, and a player that the
thread still opens is stopped), attaches the player's video track to the source's buffer (whose drain task
reads every frame), waits for the track to end, stops the player in a worker thread (it joins its decode
thread), and then:

- a file with ``loop=True`` is reopened at once (after ``retry_s`` if that pass gave no frame). aiortc's
  own ``MediaPlayer(loop=True)`` seeks back, but its pacing then restarts at time 0 and the second pass
  plays as fast as the CPU decodes; reopening keeps real-time pacing;
- a file without looping ends (the buffer keeps its last frames, state ``ended``);
- RTSP and V4L2 sources with ``reconnect=True`` are reopened every ``retry_s`` after an error or end.

The buffer is the player's only consumer, so no `MediaRelay` sits between them: a relay's reader task
cannot be cancelled and waits forever once a player is stopped. Use `aiortc.contrib.media.MediaRelay` on
`SourceRunner.player.video` if another consumer needs the same camera.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from .config import SourceConfig, SourceKind, mask_url_secrets
from .errors import SourceError
from .frame_buffer import FrameBuffer
from .tracks import start_discarding

__all__ = ["SourceRunner", "open_player"]

logger = logging.getLogger(__name__)


class _MaskUrlSecretsFilter(logging.Filter):
    """aiortc's `MediaPlayer` logs its URL (``MediaPlayer(rtsp://user:pass@cam/x?token=...) Skipping video frame``):
    mask the secrets in those records before any handler sees them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg, record.args = mask_url_secrets(record.getMessage()), None
        else:
            record.msg = mask_url_secrets(str(record.msg))
        return True


_MASK_FILTER = _MaskUrlSecretsFilter()


def open_player(config: SourceConfig) -> Any:
    """Open `config` with aiortc's `MediaPlayer` (blocking; call it in a worker thread). Raises `SourceError`."""
    from aiortc.contrib.media import MediaPlayer

    media_logger = logging.getLogger("aiortc.contrib.media")
    if _MASK_FILTER not in media_logger.filters:
        media_logger.addFilter(_MASK_FILTER)
    fmt = config.format or ("v4l2" if config.kind is SourceKind.V4L2 else None)
    timeout = None if config.kind is SourceKind.FILE else max(1, int(config.open_timeout_s))
    try:
        player = MediaPlayer(config.url, format=fmt, options=dict(config.options) or None, timeout=timeout)
    except Exception as exc:  # av.FFmpegError, OSError, ...
        detail = mask_url_secrets(str(exc).replace(config.url, mask_url_secrets(config.url)))
        raise SourceError(
            f"source {config.name!r}: cannot open {config.kind.value} {mask_url_secrets(config.url)!r}: {detail}"
        ) from exc
    if player.video is None:
        _stop_player(player)
        raise SourceError(f"source {config.name!r}: {config.kind.value} input has no video stream")
    return player


def _stop_player(player: Any) -> None:
    for track in (player.audio, player.video):
        if track is not None:
            with contextlib.suppress(Exception):
                track.stop()


class SourceRunner:
    """Keeps one configured source playing into its `FrameBuffer` until `close()`."""

    def __init__(self, config: SourceConfig, buffer: FrameBuffer) -> None:
        self.config = config
        self.buffer = buffer
        self.player: Any = None
        self.opens = 0
        """Times the source was opened successfully."""
        self.last_error: str | None = None
        """The last open/read error (None when healthy)."""
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def __repr__(self) -> str:
        return f"SourceRunner({self.config!r}, opens={self.opens})"

    def start(self) -> None:
        """Start the source's task (from the event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"webrtc-source:{self.config.name}")

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def info(self) -> dict[str, Any]:
        """What /healthz shows about this source besides its buffer."""
        return {"kind": self.config.kind.value, "opens": self.opens, "error": self.last_error,
                "running": self._task is not None and not self._task.done()}

    async def _run(self) -> None:
        cfg = self.config
        while not self._closing:
            try:
                self.player = await self._open()
            except (TimeoutError, SourceError) as exc:
                self.last_error = str(exc) or f"opening took longer than {cfg.open_timeout_s:g} s"
                logger.warning("source %s: %s", cfg.name, self.last_error)
                if cfg.kind is SourceKind.FILE or not cfg.reconnect:
                    self.buffer.mark_ended(self.last_error)
                    return
                await asyncio.sleep(cfg.retry_s)
                continue
            self.opens += 1
            self.last_error = None
            received = self.buffer.stats().received
            # audio is never used, but aiortc queues it without bound unless someone reads it
            audio = start_discarding(self.player.audio, cfg.name) if self.player.audio is not None else None
            self.buffer.attach(self.player.video, clear=self.opens == 1)
            drain = self.buffer.drain_task
            assert drain is not None  # attach() just started it
            try:
                await asyncio.shield(drain)
            finally:
                if audio is not None:
                    audio.cancel()
                await self._stop_player()
            stats = self.buffer.stats()
            self.last_error = stats.last_error
            if cfg.kind is SourceKind.FILE:
                if not cfg.loop:
                    return
                if stats.received > received:
                    continue  # the next pass at once
                # a file that opens but gives no frame would be reopened hundreds of times a second
                self.last_error = self.last_error or "the file gave no video frame; reopening it"
                logger.warning("source %s: %s", cfg.name, self.last_error)
            elif not cfg.reconnect:
                return
            await asyncio.sleep(cfg.retry_s)

    async def _open(self) -> Any:
        """`open_player` in a worker thread, given `open_timeout_s`. The thread cannot be stopped: when the
        wait ends first (timeout, or `close()`), a player it still opens is stopped as soon as it exists."""
        loop = asyncio.get_running_loop()
        opening = loop.run_in_executor(None, open_player, self.config)
        try:
            return await asyncio.wait_for(asyncio.shield(opening), self.config.open_timeout_s)
        except (TimeoutError, asyncio.CancelledError):
            def stop_late(done: asyncio.Future[Any]) -> None:
                if not done.cancelled() and done.exception() is None:
                    loop.run_in_executor(None, _stop_player, done.result())

            opening.add_done_callback(stop_late)
            raise

    async def _stop_player(self) -> None:
        player, self.player = self.player, None
        if player is not None:
            await asyncio.get_running_loop().run_in_executor(None, _stop_player, player)

    async def close(self) -> None:
        """Stop the task, the buffer's drain and the player. Safe to call twice."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.buffer.detach()
        await self._stop_player()
