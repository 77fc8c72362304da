"""`EventStore`: the daemon's memory of what it saw and said, embedded (SQLite in `storage.path`), searchable by
text (FTS5) and time, and by image similarity where an image encoder is configured (`image_search`).

    store = EventStore(StorageConfig(path=...)); store.open()       # or `await store.start()`
    store.add(Event(source="door", kind="answer", text=..., image=frame))   # never blocks; False: dropped
    await store.aquery(EventQuery(q="parcel", since=...))           # newest first
    await store.athumbnail(event_id)                                # JPEG bytes or None
    store.close()

Writes go through one thread (`writer.EventWriter`), reads through a small pool of read-only connections (WAL: they
never wait for the writer), so nothing here blocks the event loop when called through the `a*` methods. A store
that cannot be opened (a corrupt file, no permission) or cannot write (a full disk) says so in `health()` and the
log; the daemon goes on without it: `add` drops and counts, queries raise `StoreUnavailableError`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

from .config import StorageConfig
from .events import Event, StoredEvent
from .image_search import ImageSearch, build_image_search
from .query import EventQuery, match_expression, words
from .ranking import rank_matches
from .retention import Retention
from .schema import EVENT_COLUMNS, IMAGE_SLOTS, connect, row_to_event
from .thumbnails import Thumbnailer
from .vectors import VectorIndexError
from .writer import EventWriter, StoreUnavailableError

__all__ = ["EventStore", "StoreUnavailableError"]

logger = logging.getLogger(__name__)

READERS = 2
"""Read connections (threads) at once: queries beyond them wait their turn instead of opening more."""
_SECONDS_PER_DAY = 86400.0
SEARCH_CANDIDATES = 1000
"""Matches of each word a search ranks at most (the newest of the window)."""
ID_WINDOW_SLACK_S = 600.0
"""How far an event's time may lie from the time it was written (see `EventStore._id_window`)."""


class EventStore:
    """See the module docstring. `open()` never raises for a bad file: it reports it (`health()`, the log)."""

    def __init__(self, config: StorageConfig | None = None, *, path: str | Path | None = None) -> None:
        self.config = config or StorageConfig()
        self.path = Path(path) if path is not None else self.config.db_path()
        self.error: str | None = None
        """Why the store is unavailable (it could not be opened); None when it is open or closed cleanly."""
        self.dropped_unavailable = 0
        self._writer: EventWriter | None = None
        self._readers: concurrent.futures.ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._thumbnailer = Thumbnailer(self.config.thumbnail_max_side, self.config.thumbnail_quality)

    def __repr__(self) -> str:
        return f"EventStore({str(self.path)!r}, {'open' if self.is_open else 'closed'})"

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    # --- lifecycle -----------------------------------------------------------------------------------

    def open(self) -> bool:
        """Create the directory and the file if needed and start the writer; False (and `error` says why, also in the
        log) when the store cannot be used. Blocking: from the loop use `await start()`."""
        if self._writer is not None:
            return True
        cfg = self.config
        retention = Retention(max_age_s=cfg.retention_days * _SECONDS_PER_DAY, max_bytes=int(cfg.max_mb * 1024 * 1024))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            writer = EventWriter(self.path, retention, self._thumbnailer, queue_max=cfg.queue_max,
                                 image_search=build_image_search(cfg, self.path.parent))
            writer.start()
        except (OSError, sqlite3.Error) as exc:
            self.error = f"cannot open the event store {self.path}: {type(exc).__name__}: {exc}"
            logger.error("%s. The daemon runs without it (nothing is recorded, questions about the past fail); "
                         "move the file aside or fix storage.path to start a new store", self.error)
            return False
        self.error = None
        self._writer = writer
        self._readers = concurrent.futures.ThreadPoolExecutor(READERS, thread_name_prefix="event-store-read")
        logger.info("event store: %s (keeps %g days, at most %g MiB)", self.path, cfg.retention_days, cfg.max_mb)
        return True

    async def start(self) -> bool:
        """`open()` in a worker thread."""
        return await asyncio.to_thread(self.open)

    def close(self) -> None:
        """Write what is queued, stop the writer, close the readers. Safe twice."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        readers, self._readers = self._readers, None
        if readers is not None:
            readers.shutdown(wait=True)
        if writer is not None and writer.image_search is not None:
            writer.image_search.close()
        with self._lock:
            for conn in self._reader_conns:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._reader_conns.clear()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    # --- writing -------------------------------------------------------------------------------------

    def add(self, event: Event) -> bool:
        """Queue `event` for the writer; never blocks. False when it was dropped (store unavailable, queue full)."""
        future = self.submit(event)
        return not (future.done() and future.exception() is not None)

    def submit(self, event: Event) -> concurrent.futures.Future[int]:
        """Queue `event`; the future gets its id once written, or fails (dropped, or the write failed)."""
        writer = self._writer
        if writer is None:
            self.dropped_unavailable += 1
            future: concurrent.futures.Future[int] = concurrent.futures.Future()
            future.set_exception(StoreUnavailableError(self.error or "the event store is not open"))
            return future
        return writer.submit(event)

    def make_thumbnail(self, image: Any) -> bytes:
        """The stored form of `image` (a frame, an RGB array or a JPEG): a JPEG of at most
        `storage.thumbnail_max_side` (blocking: call it in a worker thread)."""
        return self._thumbnailer.thumbnail(image)

    async def write(self, event: Event) -> int:
        """Queue `event` and wait until it is written; its id. Raises when it was dropped or the write failed."""
        return await asyncio.wrap_future(self.submit(event))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait (blocking) until what was queued so far is written."""
        writer = self._writer
        return True if writer is None else writer.flush(timeout)

    # --- reading -------------------------------------------------------------------------------------

    def query(self, query: EventQuery | None = None) -> list[StoredEvent]:
        """Events matching `query`, newest first (blocking; `aquery` from the loop)."""
        q = query or EventQuery()
        where, args = _filters(q, "e.")
        if q.q:
            ids, id_args = self._id_window(q.since, q.until)
            sql = (f"SELECT {_prefixed('e.')} FROM events_fts JOIN events e ON e.id = events_fts.rowid "
                   f"WHERE events_fts MATCH ?{ids}{where} ORDER BY events_fts.rowid DESC LIMIT ?")
            args = [match_expression(words(q.q), source=q.source), *id_args, *args, q.limit]
        else:
            sql = f"SELECT {_prefixed('e.')} FROM events e WHERE 1{where} ORDER BY e.at DESC, e.id DESC LIMIT ?"
            args = [*args, q.limit]
        return [row_to_event(r) for r in self._read(sql, args)]

    def search(self, text: str, *, source: str | None = None, since: float | None = None, until: float | None = None,
               limit: int = 20) -> list[StoredEvent]:
        """Events that best match the words of `text` within the filters, best first (`ranking.rank_matches`: the
        rarer a word in the window, the more it counts; ties go to the newer). Words like "when", "did", "the" are
        left out. Each word brings at most its newest `SEARCH_CANDIDATES` matches of the window, so a common word
        over a long history costs no more than over a short one."""
        terms = words(text, drop_stop_words=True)
        bounds = self._id_bounds(since, until) if terms else None
        if bounds is None:
            return []
        low, high = bounds
        hits = {term: [r[0] for r in self._read(
            "SELECT rowid FROM events_fts WHERE events_fts MATCH ? AND rowid >= ? AND rowid <= ? "
            f"ORDER BY rowid DESC LIMIT {SEARCH_CANDIDATES}", [match_expression([term], source=source), low, high])]
            for term in terms}
        ranked = rank_matches(hits, low=low, high=high, cap=SEARCH_CANDIDATES)
        where, args = _filters(EventQuery(source=source, since=since, until=until), "")
        found: list[StoredEvent] = []
        for start in range(0, len(ranked), 4 * limit):  # the exact filters may refuse a few: fetch more until full
            chunk = ranked[start:start + 4 * limit]
            marks = ", ".join("?" * len(chunk))
            rows = self._read(f"SELECT {EVENT_COLUMNS} FROM events WHERE id IN ({marks}){where}", [*chunk, *args])
            by_id = {row[0]: row_to_event(row) for row in rows}
            found += [by_id[i] for i in chunk if i in by_id]
            if len(found) >= limit:
                break
        return found[:limit]

    @property
    def image_search(self) -> ImageSearch | None:
        """The image index and its encoder when image search is on (see `image_search.py`), else None."""
        writer = self._writer
        return writer.image_search if writer is not None else None

    def similar(self, text: str, *, source: str | None = None, since: float | None = None,
                until: float | None = None, limit: int = 20) -> list[StoredEvent]:
        """Events whose thumbnails look most like `text` describes (CLIP text vs image vectors), nearest first;
        [] without image search or a text tower."""
        search = self.image_search
        vector = search.embed_question(text) if search is not None else None
        return [] if search is None or vector is None else self.nearest(vector, source=source, since=since,
                                                                         until=until, limit=limit)

    def nearest(self, vector: Any, *, source: str | None = None, since: float | None = None,
                until: float | None = None, limit: int = 20) -> list[StoredEvent]:
        """Events whose thumbnail vectors lie nearest `vector` (cosine) within the filters, nearest first."""
        search = self.image_search
        if search is None:
            return []
        try:
            ids = [i for i, _ in search.index.nearest(vector, k=limit, source=source, since=since, until=until)]
        except VectorIndexError as exc:
            raise StoreUnavailableError(str(exc)) from exc
        if not ids:
            return []
        rows = self._read(f"SELECT {EVENT_COLUMNS} FROM events WHERE id IN ({', '.join('?' * len(ids))})", ids)
        by_id = {row[0]: row_to_event(row) for row in rows}
        return [by_id[i] for i in ids if i in by_id]  # a vector whose event is gone is skipped

    async def asimilar(self, text: str, **filters: Any) -> list[StoredEvent]:
        search = self.image_search
        if search is None or not search.can_search:
            return []
        return await self._in_reader(lambda: self.similar(text, **filters))

    def _id_bounds(self, since: float | None, until: float | None) -> tuple[int, int] | None:
        """The id range holding every event of [since, until] (None: no event there), found in the time index. Ids
        grow in the order events are written and an event is written within moments of its time, so
        `ID_WINDOW_SLACK_S` of slack on each side is ample; the exact time filter still applies."""
        if since is None:
            low = self._read("SELECT min(id) FROM events", [])[0][0]
        else:
            row = self._read("SELECT id FROM events WHERE at >= ? ORDER BY at LIMIT 1", [since - ID_WINDOW_SLACK_S])
            low = row[0][0] if row else None
        if until is None:
            high = self._read("SELECT max(id) FROM events", [])[0][0]
        else:
            row = self._read("SELECT id FROM events WHERE at <= ? ORDER BY at DESC LIMIT 1", [until + ID_WINDOW_SLACK_S])
            high = row[0][0] if row else None
        if low is None or high is None or high < low:
            return None
        return int(low), int(high)

    def _id_window(self, since: float | None, until: float | None) -> tuple[str, list[Any]]:
        """`_id_bounds` as a clause on the text index's rowid (nothing when there is no time filter)."""
        if since is None and until is None:
            return "", []
        bounds = self._id_bounds(since, until)
        if bounds is None:
            return " AND 0", []
        return " AND events_fts.rowid >= ? AND events_fts.rowid <= ?", list(bounds)

    def get(self, event_id: int) -> StoredEvent | None:
        rows = self._read(f"SELECT {EVENT_COLUMNS} FROM events WHERE id = ?", [int(event_id)])
        return row_to_event(rows[0]) if rows else None

    def thumbnail(self, event_id: int, n: int = 0) -> bytes | None:
        """The JPEG of event `event_id` (n = 0: its thumbnail; 1..: its look-back strip), or None."""
        if not 0 <= n < IMAGE_SLOTS or event_id < 0 or event_id > (2**63 - 1) // IMAGE_SLOTS - 1:
            return None
        rows = self._read("SELECT jpeg FROM images WHERE key = ?", [int(event_id) * IMAGE_SLOTS + n])
        return bytes(rows[0][0]) if rows else None

    get_thumbnail = thumbnail

    def count(self) -> int:
        return int(self._read("SELECT count(*) FROM events", [])[0][0])

    async def aquery(self, query: EventQuery | None = None) -> list[StoredEvent]:
        return await self._in_reader(self.query, query)

    async def asearch(self, text: str, **filters: Any) -> list[StoredEvent]:
        return await self._in_reader(lambda: self.search(text, **filters))

    async def aget(self, event_id: int) -> StoredEvent | None:
        return await self._in_reader(self.get, event_id)

    async def athumbnail(self, event_id: int, n: int = 0) -> bytes | None:
        return await self._in_reader(self.thumbnail, event_id, n)

    async def _in_reader(self, fn: Any, *args: Any) -> Any:
        readers = self._readers
        if readers is None:
            raise StoreUnavailableError(self.error or "the event store is not open")
        return await asyncio.wrap_future(readers.submit(fn, *args))

    def _read(self, sql: str, args: list[Any]) -> list[tuple[Any, ...]]:
        if self._writer is None:
            raise StoreUnavailableError(self.error or "the event store is not open")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, readonly=True)
            self._local.conn = conn
            with self._lock:
                self._reader_conns.append(conn)
        try:
            return conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"the event store could not be read: {type(exc).__name__}: {exc}") from exc

    # --- state ---------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """For /healthz: `state` ok / failing / unavailable / disabled, the file, counters, the last error."""
        if not self.config.enabled:
            return {"state": "disabled"}
        writer = self._writer
        if writer is None:
            return {"state": "unavailable", "path": str(self.path), "error": self.error or "closed",
                    "dropped": self.dropped_unavailable}
        s = writer.stats
        return {
            "state": "failing" if writer.failing else "ok", "path": str(self.path),
            "written": s.written, "queued": writer.pending(), "dropped_queue_full": s.dropped_full,
            "failed_writes": s.failed, "last_error": s.last_error,
            "used_mb": round(writer.used_bytes() / 1048576, 2), "max_mb": self.config.max_mb,
            "retention_days": self.config.retention_days,
            "deleted_by_age": writer.retention.deleted_by_age, "deleted_by_size": writer.retention.deleted_by_size,
            "image_search": _image_health(writer.image_search),
        }

    @property
    def writer(self) -> EventWriter | None:
        return self._writer

    def writer_seconds(self) -> float:
        """Seconds the writer thread spent writing so far (the benchmark's cost per event)."""
        return self._writer.stats.write_s if self._writer is not None else 0.0


def _image_health(search: ImageSearch | None) -> dict[str, Any] | None:
    if search is None:
        return None
    return {"model": search.index.model, "dims": search.index.dim, "questions": search.can_search,
            "failures": search.failures, "skipped": search.skipped}


def _prefixed(prefix: str) -> str:
    return ", ".join(prefix + c.strip() for c in EVENT_COLUMNS.split(","))


def _filters(q: EventQuery, prefix: str) -> tuple[str, list[Any]]:
    """`AND ...` clauses and their arguments for source, since, until and kind."""
    clauses, args = [], []
    for column, op, value in (("source", "=", q.source), ("at", ">=", q.since), ("at", "<=", q.until),
                              ("kind", "=", q.kind)):
        if value is not None:
            clauses.append(f" AND {prefix}{column} {op} ?")
            args.append(value)
    return "".join(clauses), args
