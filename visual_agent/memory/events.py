"""`Event`: one thing the daemon saw and said (an answer, a description, a scene memory, a rule turning on or off),
as it is handed to the store and as it comes back from it."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Event", "EventKind", "StoredEvent"]


class EventKind(str, enum.Enum):
    """What made the event."""

    ANSWER = "answer"
    """The answer to someone's question."""
    DESCRIPTION = "description"
    """A periodic or scene-change description (`agent.periodic_*`, `agent.scene_change`)."""
    MEMORY = "memory"
    """A scene-memory description (`storage.memory`)."""
    RULE = "rule"
    """A rule turned on or off (`state`), with its evidence."""


@dataclass(slots=True)
class Event:
    """An event before it is stored. `image` becomes the thumbnail in the writer thread: an `av.VideoFrame`, an RGB
    ndarray, or JPEG bytes (a rule's evidence); None: no thumbnail."""

    source: str
    kind: EventKind | str
    text: str
    at: float = field(default_factory=time.time)
    """Unix seconds."""
    question: str | None = None
    rule: str | None = None
    state: str | None = None
    """A rule event's new state (on/off)."""
    model: str | None = None
    frame_times: list[float] = field(default_factory=list)
    """Unix seconds of the frames the text is about, oldest first."""
    image: Any = None
    strip: list[bytes] = field(default_factory=list)
    """A rule event's look-back thumbnails (JPEG, already small), oldest first: stored beside the thumbnail."""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as the store returns it (`as_dict` is the JSON of `GET /events`)."""

    id: int
    at: float
    source: str
    kind: str
    text: str
    question: str | None
    rule: str | None
    state: str | None
    model: str | None
    frame_times: tuple[float, ...]
    has_thumbnail: bool
    strip: int = 0
    """How many look-back images are stored beside the thumbnail (`/events/<id>.jpg?n=1..strip`)."""

    def as_dict(self, thumbnail_url: str | None = None) -> dict[str, Any]:
        """The public JSON: `thumbnail` is the URL of the JPEG (`/events/<id>.jpg`) or None."""
        out: dict[str, Any] = {
            "id": self.id, "at": round(self.at, 3), "source": self.source, "kind": self.kind, "text": self.text,
            "question": self.question, "rule": self.rule, "state": self.state, "model": self.model,
            "frame_times": [round(t, 3) for t in self.frame_times],
            "thumbnail": (thumbnail_url or f"/events/{self.id}.jpg") if self.has_thumbnail else None,
        }
        if self.strip:
            out["strip"] = self.strip
        return out

    def ref(self) -> dict[str, Any]:
        """`{"id", "at", "source"}`: how an answer cites it."""
        return {"id": self.id, "at": round(self.at, 3), "source": self.source}
