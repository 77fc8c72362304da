"""The store's SQLite file: connection settings, tables, the FTS5 index and the row ↔ `StoredEvent` mapping.

WAL mode: readers never wait for the writer, and a committed event survives the process being killed (the WAL is
in the file system before `commit` returns; `synchronous=NORMAL` leaves only a power cut able to lose the newest
commits). `auto_vacuum=INCREMENTAL` lets retention hand freed pages back a few at a time. Images live in their own
table keyed ``event_id * IMAGE_SLOTS + n`` (n = 0: the thumbnail, 1..: a rule's look-back strip), so listing events
never reads a JPEG and deleting an event's images is one range. The source is in the text index too (weight 0 in the
ranking), so a text search on one source narrows inside the index; the exact source filter still applies.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from .events import StoredEvent

__all__ = ["EVENT_COLUMNS", "IMAGE_SLOTS", "SCHEMA_VERSION", "connect", "create_schema", "rollback", "row_to_event", "used_bytes"]

SCHEMA_VERSION = 1
IMAGE_SLOTS = 64
"""Images an event may have (the thumbnail and up to 63 look-back images)."""
BUSY_TIMEOUT_MS = 5000

EVENT_COLUMNS = "id, at, source, kind, text, question, rule, state, model, frame_times, images"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    source TEXT NOT NULL,
    kind TEXT NOT NULL,
    text TEXT NOT NULL,
    question TEXT,
    rule TEXT,
    state TEXT,
    model TEXT,
    frame_times TEXT NOT NULL DEFAULT '[]',
    images INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_at ON events(at);
CREATE INDEX IF NOT EXISTS events_source_at ON events(source, at);
CREATE TABLE IF NOT EXISTS images (key INTEGER PRIMARY KEY, jpeg BLOB NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS events_fts USING fts5(
    text, question, rule, source, content='events', content_rowid='id', tokenize='porter unicode61'
);
CREATE TRIGGER IF NOT EXISTS events_fts_insert AFTER INSERT ON events BEGIN
    INSERT INTO events_fts(rowid, text, question, rule, source) VALUES (new.id, new.text, new.question, new.rule, new.source);
END;
CREATE TRIGGER IF NOT EXISTS events_fts_delete AFTER DELETE ON events BEGIN
    INSERT INTO events_fts(events_fts, rowid, text, question, rule, source)
    VALUES ('delete', old.id, old.text, old.question, old.rule, old.source);
END;
"""


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection in WAL mode; `readonly` ones refuse writes (`query_only`). Raises `sqlite3.Error` on a file that
    is not a database or cannot be opened."""
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=True)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if readonly:
            conn.execute("PRAGMA query_only = 1")
        else:
            conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # a file that is not a database fails here
    except BaseException:
        conn.close()
        raise
    return conn


def create_schema(conn: sqlite3.Connection) -> None:
    """Tables, indexes and the FTS5 index (idempotent); refuses a file written by a newer schema."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(f"the store has schema version {version}; this daemon reads up to {SCHEMA_VERSION}")
    tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    if tables == 0:
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only takes effect before the first table
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise sqlite3.OperationalError(f"cannot switch the store to WAL mode (got {mode})")
    conn.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")


def rollback(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if SQLite has not already (it does on a full disk): the original error is
    the one worth reporting."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def used_bytes(conn: sqlite3.Connection) -> int:
    """Bytes of the file's pages in use (its size less the free list): what `storage.max_mb` bounds."""
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return int((pages - free) * page_size)


def row_to_event(row: tuple[Any, ...]) -> StoredEvent:
    """A row of `EVENT_COLUMNS` as a `StoredEvent`."""
    id_, at, source, kind, text, question, rule, state, model, frame_times, images = row
    try:
        times = tuple(float(t) for t in json.loads(frame_times or "[]"))
    except (ValueError, TypeError):
        times = ()
    return StoredEvent(id=id_, at=at, source=source, kind=kind, text=text, question=question, rule=rule, state=state,
                       model=model, frame_times=times, has_thumbnail=images > 0, strip=max(0, images - 1))
