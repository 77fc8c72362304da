"""`recall`: which stored events a question about the past shows the model.

The best text matches of the question's words in the window come first (`EventStore.search`: the more of its
words, and the rarer they are in the window, the better; `ranking.rank_matches`); when they are fewer than `limit`,
the most recent events of the window fill the rest, so "what happened at the door this morning?" still sees the
morning. Returned best first (the matches by rank, then the recent ones newest first): the caller keeps as many as
fit and shows them oldest first.
"""

from __future__ import annotations

from .events import StoredEvent
from .query import EventQuery
from .store import EventStore

__all__ = ["recall"]


async def recall(store: EventStore, text: str, *, source: str | None, since: float | None, until: float | None,
                 limit: int) -> list[StoredEvent]:
    """Up to `limit` events of [since, until] (and `source`) for a question, best first."""
    chosen = {e.id: e for e in await store.asearch(text, source=source, since=since, until=until, limit=limit)}
    if len(chosen) < limit:
        recent = await store.aquery(EventQuery(source=source, since=since, until=until, limit=limit))
        for event in recent:
            if len(chosen) >= limit:
                break
            chosen.setdefault(event.id, event)
    return list(chosen.values())
