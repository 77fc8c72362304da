"""`Retention`: keeps the store within `storage.retention_days` and `storage.max_mb`, a small batch at a time.

The writer thread calls `step()` between its inserts; each step deletes at most `batch` of the oldest events (by
age first, then by size) and hands a few freed pages back to the file system, so no step holds the write lock for
long and new events are never kept waiting behind a large sweep.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from .schema import IMAGE_SLOTS, rollback, used_bytes

__all__ = ["DEFAULT_BATCH", "Retention"]

DEFAULT_BATCH = 100
"""Events deleted per step."""
_VACUUM_PAGES = 256
"""Free pages handed back to the file system per step (incremental vacuum)."""
_VACUUM_WHEN_FREE = 0.10
"""Hand pages back once this share of the file is free (below it, new events reuse them)."""


@dataclass
class Retention:
    """The bounds and the counters of what they removed."""

    max_age_s: float
    max_bytes: int
    batch: int = DEFAULT_BATCH
    deleted_by_age: int = 0
    deleted_by_size: int = 0
    last_used_bytes: int = 0
    on_delete: Callable[[list[int]], None] | None = None
    """Called with the ids of each deleted batch after its commit (the image index drops their vectors)."""

    def step(self, conn: sqlite3.Connection, now: float | None = None) -> bool:
        """One bounded batch; True when there may be more to do (call again soon)."""
        now = time.time() if now is None else now
        ids = [r[0] for r in conn.execute("SELECT id FROM events WHERE at < ? ORDER BY at LIMIT ?",
                                          (now - self.max_age_s, self.batch))]
        if ids:
            self._delete(conn, ids)
            self.deleted_by_age += len(ids)
            return True
        self.last_used_bytes = used_bytes(conn)
        if self.last_used_bytes > self.max_bytes:
            ids = [r[0] for r in conn.execute("SELECT id FROM events ORDER BY id LIMIT ?",
                                              (self._over_size_batch(conn),))]
            if ids:
                self._delete(conn, ids)
                self.deleted_by_size += len(ids)
                return True
        return self._give_back(conn)

    def _over_size_batch(self, conn: sqlite3.Connection) -> int:
        """About as many of the oldest events as hold the bytes over the bound (ids are dense, so their span
        counts the events without a scan), at least 1 and at most `batch`."""
        low, high = conn.execute("SELECT min(id), max(id) FROM events").fetchone()
        if low is None:
            return 1
        per_event = self.last_used_bytes / (high - low + 1)
        return max(1, min(self.batch, int((self.last_used_bytes - self.max_bytes) / max(per_event, 1.0)) + 1))

    def _delete(self, conn: sqlite3.Connection, ids: list[int]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("DELETE FROM events WHERE id = ?", [(i,) for i in ids])
            conn.executemany("DELETE FROM images WHERE key >= ? AND key < ?",
                             [(i * IMAGE_SLOTS, (i + 1) * IMAGE_SLOTS) for i in ids])
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
        if self.on_delete is not None:
            self.on_delete(ids)

    @staticmethod
    def _give_back(conn: sqlite3.Connection) -> bool:
        """Incremental vacuum of a few pages once much of the file is free; True when more remain."""
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:  # a file made without it: new events reuse pages
            return False
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        if not pages or free / pages < _VACUUM_WHEN_FREE:
            return False
        conn.execute(f"PRAGMA incremental_vacuum({_VACUUM_PAGES})").fetchall()
        return free > _VACUUM_PAGES
