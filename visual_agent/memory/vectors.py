"""`VectorIndex`: the thumbnails' image embeddings in a sqlite-vec `vec0` table (cosine), keyed by event id, with
each event's time and source as metadata so a nearest-neighbour search stays inside a question's window.

sqlite-vec 0.1.9 searches by brute force and its metadata filters do not prune the scan (10^5 vectors of 512: ~66 ms
whatever the window); a partition key does, so the table is partitioned by day (`at // 86400`) and a search reads
only the days of its window (a 1-day window of 10^5: ~12 ms). Chunks of `CHUNK_SIZE` vectors keep a quiet day's
partition small (each partition allocates a whole chunk).

The standard `sqlite3` of many Python builds cannot load extensions, so the index is opened with `apsw` (its own
SQLite, which loads `sqlite-vec`). It lives in its own file, `vectors.db` beside `events.db`: two SQLite libraries
in one process must never open the same file (each would drop the other's POSIX locks: the SQLite documentation's
"multiple copies of SQLite" way to corrupt a database). Both come with the `vectors` extra and are imported only
when an index is opened. The writer thread owns the write connection; each reader thread gets its own.

A crash between the event store's commit and this one leaves at most one batch of vectors without events (or
events without vectors): `open()` drops vectors outside the events' id range, and searches return only ids that
still have an event.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["VECTORS_FILE_NAME", "VectorIndex", "VectorIndexError", "vectors_available"]

logger = logging.getLogger(__name__)

VECTORS_FILE_NAME = "vectors.db"
CHUNK_SIZE = 256
"""Vectors per sqlite-vec chunk (its default 1024 would allocate 2 MiB of 512-float vectors for each day's first)."""
LAYOUT = "day-partitioned-1"
"""The table's layout; another one (an older file) starts the index anew."""
_DAY_S = 86400
MAX_K = 4096
"""sqlite-vec's largest k."""
BUSY_TIMEOUT_MS = 5000


class VectorIndexError(RuntimeError):
    """The index cannot be opened, written or read (the message says why)."""


def vectors_available() -> str | None:
    """None when `apsw` and `sqlite_vec` import (the `vectors` extra); else why not."""
    try:
        import apsw  # noqa: F401
        import sqlite_vec  # noqa: F401
    except ImportError as exc:
        return f"{exc} (pip install 'visual-agent[vectors]')"
    return None


class VectorIndex:
    """`add` and `delete` from the writer thread; `nearest` from any thread."""

    def __init__(self, path: Path, *, dim: int, model: str) -> None:
        self.path = path
        self.dim = int(dim)
        self.model = model
        self._writer: Any = None
        self._local = threading.local()
        self._readers: list[Any] = []
        self._lock = threading.Lock()

    def open(self, id_range: tuple[int | None, int | None] = (None, None)) -> None:
        """Create or open the file (owner-only), the table for this model and size (a different model or size
        starts a new table: its vectors cannot be compared), and drop vectors outside `id_range` (the events')."""
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        try:
            conn = self._connect()
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            stored = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            wanted = {"model": self.model, "dim": str(self.dim), "layout": LAYOUT}
            if stored and stored != wanted:
                logger.warning("event store: the image index was made by %s (%s dims); %s (%d dims) starts it anew",
                               stored.get("model"), stored.get("dim"), self.model, self.dim)
                conn.execute("DROP TABLE IF EXISTS vectors")
            conn.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS vectors USING vec0(id INTEGER PRIMARY KEY, "
                         f"embedding float[{self.dim}] distance_metric=cosine, day integer partition key, at float, "
                         f"source text, chunk_size={CHUNK_SIZE})")
            conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", list(wanted.items()))
            low, high = id_range
            conn.execute("DELETE FROM vectors WHERE id < ? OR id > ?",
                         (-1 if low is None else low, -1 if high is None else high))
        except Exception as exc:  # apsw.Error and sqlite-vec's load errors share no base class of ours
            raise VectorIndexError(f"cannot open the image index {self.path}: {type(exc).__name__}: {exc}") from exc
        self._writer = conn

    def add(self, rows: list[tuple[int, float, str, np.ndarray]]) -> None:
        """(event id, time, source, vector) rows, in one transaction."""
        conn = self._writer
        if conn is None or not rows:
            return
        try:
            with conn:
                conn.executemany("DELETE FROM vectors WHERE id = ?", [(i,) for i, *_ in rows])
                conn.executemany("INSERT INTO vectors(id, embedding, day, at, source) VALUES (?, ?, ?, ?, ?)",
                                 [(i, _blob(v, self.dim), _day(at), float(at), src) for i, at, src, v in rows])
        except Exception as exc:
            raise VectorIndexError(f"the image index could not write: {type(exc).__name__}: {exc}") from exc

    def delete(self, ids: list[int]) -> None:
        """Drop the vectors of these events (retention deleted them)."""
        conn = self._writer
        if conn is None or not ids:
            return
        try:
            with conn:
                conn.executemany("DELETE FROM vectors WHERE id = ?", [(int(i),) for i in ids])
        except Exception as exc:
            raise VectorIndexError(f"the image index could not delete: {type(exc).__name__}: {exc}") from exc

    def nearest(self, vector: Any, *, k: int, source: str | None = None, since: float | None = None,
                until: float | None = None) -> list[tuple[int, float]]:
        """Up to `k` (event id, cosine distance) pairs nearest to `vector` within the filters, nearest first."""
        sql = "SELECT id, distance FROM vectors WHERE embedding MATCH ? AND k = ?"
        args: list[Any] = [_blob(vector, self.dim), max(1, min(int(k), MAX_K))]
        for clause, value in ((" AND source = ?", source), (" AND at >= ?", since), (" AND at <= ?", until),
                              (" AND day >= ?", None if since is None else _day(since)),
                              (" AND day <= ?", None if until is None else _day(until))):
            if value is not None:
                sql += clause
                args.append(value)
        try:
            return [(int(i), float(d)) for i, d in self._reader().execute(sql, args).fetchall()]
        except Exception as exc:
            raise VectorIndexError(f"the image index could not be read: {type(exc).__name__}: {exc}") from exc

    def count(self) -> int:
        try:
            return int(self._reader().execute("SELECT count(*) FROM vectors").fetchone()[0])
        except Exception as exc:
            raise VectorIndexError(f"the image index could not be read: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        conn, self._writer = self._writer, None
        with self._lock:
            conns, self._readers = [conn, *self._readers], []
        for c in conns:
            if c is not None:
                with contextlib.suppress(Exception):
                    c.close()

    def _reader(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only = 1")
            self._local.conn = conn
            with self._lock:
                self._readers.append(conn)
        return conn

    def _connect(self) -> Any:
        import apsw
        import sqlite_vec

        conn = apsw.Connection(str(self.path))
        conn.set_busy_timeout(BUSY_TIMEOUT_MS)
        conn.enable_load_extension(True)
        conn.load_extension(sqlite_vec.loadable_path())
        conn.enable_load_extension(False)
        return conn


def _day(at: float) -> int:
    return int(float(at) // _DAY_S)


def _blob(vector: Any, dim: int) -> bytes:
    array = np.asarray(vector, dtype=np.float32).reshape(-1)
    if array.shape[0] != dim:
        raise VectorIndexError(f"a vector of {array.shape[0]} values; the index holds {dim}")
    return array.tobytes()
