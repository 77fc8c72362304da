"""`recall`: which stored events a question about the past shows the model.

The best text matches of the question's words in the window come first (`EventStore.search`: the more of its
words, and the rarer they are in the window, the better; `ranking.rank_matches`); when they are fewer than `limit`,
the most recent events of the window fill the rest, so "what happened at the door this morning?" still sees the
morning. Returned best first (the matches by rank, then the recent ones newest first): the caller keeps as many as
fit and shows them oldest first.

With image search (`storage.image_model` with a text tower) the question's text vector also finds the thumbnails
nearest to it in the window (`EventStore.similar`), and the two rankings are fused (`ranking.fuse_rankings`), so an
event whose picture shows what was asked is found even when no stored text names it.
"""

from __future__ import annotations

from .events import StoredEvent
from .query import EventQuery
from .ranking import fuse_rankings
from .store import EventStore

__all__ = ["recall"]


async def recall(store: EventStore, text: str, *, source: str | None, since: float | None, until: float | None,
                 limit: int) -> list[StoredEvent]:
    """Up to `limit` events of [since, until] (and `source`) for a question, best first."""
    by_text = await store.asearch(text, source=source, since=since, until=until, limit=limit)
    by_image = await store.asimilar(text, source=source, since=since, until=until, limit=limit)
    found = {e.id: e for e in [*by_text, *by_image]}
    fused = fuse_rankings([e.id for e in by_text], [e.id for e in by_image])
    chosen = {i: found[i] for i in fused[:limit]}
    if len(chosen) < limit:
        recent = await store.aquery(EventQuery(source=source, since=since, until=until, limit=limit))
        for event in recent:
            if len(chosen) >= limit:
                break
            chosen.setdefault(event.id, event)
    return list(chosen.values())
