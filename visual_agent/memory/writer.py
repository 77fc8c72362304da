"""`EventWriter`: the store's one writer, a thread fed by a bounded queue, so the event loop never touches the disk.

Each turn takes the waiting events (up to `BATCH_MAX`), makes their thumbnails (libswscale + libjpeg-turbo, in this
thread), inserts them in one transaction and resolves their futures with the new ids; between turns it runs one
retention step. With image search (`image_search.ImageSearch`) the thumbnails' embeddings are made in this thread too
and written to the vector index after the events' commit (a failure there costs the vectors, never the events). A
full queue drops the new event and counts it; a failed write (a full disk, a broken file) fails
that batch's futures, counts it and keeps the error for /healthz, and the thread goes on (the next write may
succeed once space is freed).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .events import Event
from .image_search import ImageSearch
from .retention import Retention
from .schema import IMAGE_SLOTS, connect, create_schema, rollback
from .thumbnails import Thumbnailer
from .vectors import VectorIndexError

__all__ = ["BATCH_MAX", "EventWriter", "StoreUnavailableError", "WriterStats"]

logger = logging.getLogger(__name__)

BATCH_MAX = 64
"""Events inserted per transaction at most."""
RETENTION_EVERY_S = 1.0
"""An idle writer checks the bounds this often."""
RETENTION_PAUSE_S = 0.01
"""Between two retention batches the writer waits this long (taking new events meanwhile), so a long sweep leaves
the interpreter to the event loop most of the time."""


class StoreUnavailableError(RuntimeError):
    """The store cannot take or give events now (it could not be opened, or is closed); the message says why."""


@dataclass
class WriterStats:
    """Counters for /healthz and the benchmark."""

    written: int = 0
    dropped_full: int = 0
    """Refused because the queue was full."""
    failed: int = 0
    """Lost because the write failed (see `last_error`)."""
    write_s: float = 0.0
    """Seconds this thread spent making thumbnails and writing (for the cost per event)."""
    last_error: dict[str, Any] | None = None
    errors: int = 0
    timings: list[float] = field(default_factory=list)


_STOP = object()


class _Flush:
    def __init__(self) -> None:
        self.done = threading.Event()


class EventWriter:
    """Owns the write connection; `start()` opens the file (raises `sqlite3.Error` when it cannot), `submit` queues."""

    def __init__(self, path: Path, retention: Retention, thumbnailer: Thumbnailer, *, queue_max: int,
                 image_search: ImageSearch | None = None) -> None:
        self.path = path
        self.image_search = image_search
        self.retention = retention
        self.thumbnailer = thumbnailer
        self.stats = WriterStats()
        self.failing = False
        self.stopped_by: str | None = None
        """Why the writer thread stopped early (a bug); None while it runs."""
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_max)
        self._thread: threading.Thread | None = None
        self._opened = threading.Event()
        self._open_error: BaseException | None = None

    def start(self) -> None:
        """Start the thread and wait until it opened the file (or failed to: that error is raised here)."""
        self._thread = threading.Thread(target=self._run, name="event-store-writer", daemon=True)
        self._thread.start()
        self._opened.wait()
        if self._open_error is not None:
            self._thread.join()
            self._thread = None
            raise self._open_error

    def submit(self, event: Event) -> concurrent.futures.Future[int]:
        """Queue `event`; its future gets the id once written. A full queue: the future fails at once
        (`queue.Full`) and the event is counted as dropped."""
        future: concurrent.futures.Future[int] = concurrent.futures.Future()
        if self._thread is None or self.stopped_by is not None:
            future.set_exception(StoreUnavailableError(f"the event store is not open ({self.stopped_by or 'closed'})"))
            return future
        try:
            self._queue.put_nowait((event, future))
        except queue.Full:
            self.stats.dropped_full += 1
            if self.stats.dropped_full == 1 or self.stats.dropped_full % 100 == 0:
                logger.warning("event store: queue full (storage.queue_max = %d): %d events dropped so far",
                               self._queue.maxsize, self.stats.dropped_full)
            future.set_exception(queue.Full("the event store's queue is full"))
        return future

    def pending(self) -> int:
        return self._queue.qsize()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued before this call is written (or failed); False on timeout."""
        if self._thread is None:
            return True
        marker = _Flush()
        self._queue.put(marker, timeout=timeout)
        return marker.done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the thread. Safe twice."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(_STOP)
        thread.join(timeout)

    # --- the thread --------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            _create_private(self.path)
            conn = connect(self.path)
            create_schema(conn)
            self._open_vectors(conn)
        except BaseException as exc:
            self._open_error = exc
            self._opened.set()
            return
        self._opened.set()
        try:
            self._loop(conn)
        except Exception as exc:  # a bug: say so in /healthz and the log rather than go quiet
            self.stopped_by = f"{type(exc).__name__}: {exc}"
            self.failing = True
            self.stats.last_error = {"message": f"the writer thread stopped: {self.stopped_by}", "at": time.time()}
            logger.exception("event store: the writer thread stopped; nothing more is recorded until a restart")
        finally:
            conn.close()

    def _open_vectors(self, conn: sqlite3.Connection) -> None:
        """Open the image index beside the events; one that cannot be opened leaves the store searching by text."""
        search = self.image_search
        if search is None:
            return
        try:
            search.index.open(conn.execute("SELECT min(id), max(id) FROM events").fetchone())
        except VectorIndexError as exc:
            logger.error("event store: %s; questions about the past use text search only", exc)
            self.image_search = None
            search.close()
            return
        self.retention.on_delete = search.index.delete

    def _loop(self, conn: sqlite3.Connection) -> None:
        next_sweep = 0.0
        more = False
        while True:
            timeout = RETENTION_PAUSE_S if more else max(0.0, next_sweep - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                item = None
            batch: list[tuple[Event, concurrent.futures.Future[int]]] = []
            markers: list[_Flush] = []
            stop = False
            while item is not None:
                if item is _STOP:
                    stop = True
                elif isinstance(item, _Flush):
                    markers.append(item)
                else:
                    batch.append(item)
                if stop or len(batch) >= BATCH_MAX:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            if batch:
                self._write(conn, batch)
            for marker in markers:
                marker.done.set()
            if stop:
                return
            if more or time.monotonic() >= next_sweep:
                more = self._sweep(conn)
                next_sweep = time.monotonic() + RETENTION_EVERY_S

    def _write(self, conn: sqlite3.Connection, batch: list[tuple[Event, concurrent.futures.Future[int]]]) -> None:
        started = time.perf_counter()
        rows = []
        for event, future in batch:
            if not future.set_running_or_notify_cancel():
                continue
            try:
                row = _row(event)
            except (TypeError, ValueError, OverflowError) as exc:  # a malformed event costs itself, not the batch
                self.stats.failed += 1
                logger.warning("event store: refused a malformed event: %s: %s", type(exc).__name__, exc)
                future.set_exception(ValueError(f"not an event the store can keep: {exc}"))
                continue
            rows.append((row, future, self.thumbnailer.images(event)))
        vectors = self._embed([images[0] if images else None for _, _, images in rows])
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                ids = [_insert(conn, row, images) for row, _, images in rows]
                conn.execute("COMMIT")
            except BaseException:
                rollback(conn)
                raise
        except sqlite3.Error as exc:
            self._failed(exc, len(rows))
            for _, future, _ in rows:
                future.set_exception(StoreUnavailableError(f"the event store could not write: {exc}"))
            return
        self._add_vectors([(i, row[0], row[1], v) for (row, _, _), i, v in zip(rows, ids, vectors, strict=True)])
        elapsed = time.perf_counter() - started
        self.stats.write_s += elapsed
        self.stats.written += len(rows)
        if len(self.stats.timings) < 100_000:
            self.stats.timings.append(elapsed / max(1, len(rows)))
        if self.failing:
            self.failing = False
            logger.info("event store: writing again after %d failed events", self.stats.failed)
        for (_, future, _), new_id in zip(rows, ids, strict=True):
            future.set_result(new_id)

    def _embed(self, thumbnails: list[bytes | None]) -> list[Any]:
        """The thumbnails' image vectors (None where there is none, or image search is off or failed)."""
        search = self.image_search
        todo = [(i, t) for i, t in enumerate(thumbnails) if t is not None]
        out: list[Any] = [None] * len(thumbnails)
        if search is None or not todo:
            return out
        if len(thumbnails) + self._queue.qsize() > self._queue.maxsize // 2:  # the encoder fell behind: keep events
            search.skipped += len(todo)
            return out
        try:
            for (i, _), vector in zip(todo, search.embed_thumbnails([t for _, t in todo]), strict=True):
                out[i] = vector
        except Exception as exc:  # the encoder refused: the events are kept without vectors
            self._vector_failed(exc)
        return out

    def _add_vectors(self, rows: list[tuple[int, float, str, Any]]) -> None:
        search = self.image_search
        rows = [r for r in rows if r[3] is not None]
        if search is None or not rows:
            return
        try:
            search.index.add(rows)
        except Exception as exc:
            self._vector_failed(exc)

    def _vector_failed(self, exc: Exception) -> None:
        assert self.image_search is not None
        self.image_search.failures += 1
        if self.image_search.failures == 1 or self.image_search.failures % 100 == 0:
            logger.warning("event store: no image vectors for a batch (%d so far): %s: %s",
                           self.image_search.failures, type(exc).__name__, exc)

    def _sweep(self, conn: sqlite3.Connection) -> bool:
        try:
            return self.retention.step(conn)
        except sqlite3.Error as exc:
            self._failed(exc, 0)
            return False
        except VectorIndexError as exc:  # the events went; their vectors wait for the next open's clean-up
            self._vector_failed(exc)
            return True

    def _failed(self, exc: sqlite3.Error, events: int) -> None:
        self.stats.failed += events
        self.stats.errors += 1
        self.stats.last_error = {"message": f"{type(exc).__name__}: {exc}", "at": round(time.time(), 3)}
        if not self.failing:
            logger.error("event store %s: writing failed (%s: %s); %d events lost so far. Free disk space or "
                         "lower storage.max_mb / storage.retention_days", self.path, type(exc).__name__, exc,
                         self.stats.failed)
        self.failing = True

    def used_bytes(self) -> int:
        return self.retention.last_used_bytes


def _create_private(path: Path) -> None:
    """Create the store's file readable by its owner only (it holds camera pictures); SQLite gives its -wal and -shm
    files the same mode. An existing file keeps its mode."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def _row(event: Event) -> tuple[Any, ...]:
    """The event's column values (at, source, kind, text, question, rule, state, model, frame_times), checked: a
    wrong type raises TypeError or ValueError here, before the transaction."""
    at = float(event.at)
    if at != at or at in (float("inf"), float("-inf")):
        raise ValueError(f"at must be a finite unix time, got {event.at!r}")
    texts = [event.source, event.text]
    optional = [event.question, event.rule, event.state, event.model]
    if not all(isinstance(t, str) for t in texts) or not all(t is None or isinstance(t, str) for t in optional):
        raise TypeError("source and text must be text; question, rule, state and model text or None")
    kind = str(getattr(event.kind, "value", event.kind))
    return (at, event.source, kind, event.text, *optional, json.dumps([round(float(t), 3) for t in event.frame_times]))


def _insert(conn: sqlite3.Connection, row: tuple[Any, ...], images: list[bytes]) -> int:
    cur = conn.execute(
        "INSERT INTO events(at, source, kind, text, question, rule, state, model, frame_times, images) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (*row, min(len(images), IMAGE_SLOTS)))
    new_id = int(cur.lastrowid or 0)
    images = images[:IMAGE_SLOTS]
    if images:
        conn.executemany("INSERT INTO images(key, jpeg) VALUES (?, ?)",
                         [(new_id * IMAGE_SLOTS + n, jpeg) for n, jpeg in enumerate(images[:IMAGE_SLOTS])])
    return new_id

