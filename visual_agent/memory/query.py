"""`EventQuery`: the filters of `GET /events` and `<prefix>/events/query` (source, since, until, q, kind, limit), read
and checked in one place, and `match_expression`, which turns free text into an FTS5 query that cannot be syntax.

`q` is split into words (letters and digits; everything else, FTS5's quotes, `*`, `:`, `^`, parentheses and
keywords included, is a separator) and each word is quoted, so text from outside is only ever matched, never
parsed as a query.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .events import EventKind

__all__ = [
    "DEFAULT_LIMIT",
    "EventQuery",
    "EventQueryError",
    "MAX_LIMIT",
    "MAX_Q_CHARS",
    "match_expression",
    "words",
]

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_Q_CHARS = 500
MAX_TERMS = 32
MAX_SOURCE_CHARS = 128
KEYS = ("source", "since", "until", "q", "kind", "limit")
_WORD = re.compile(r"\w+", re.UNICODE)
KINDS = tuple(k.value for k in EventKind)
STOP_WORDS = frozenset(
    "a an and are at be did do does for from had has have how i in is it its me of on or see show that the then "
    "there this to was were what when where which who why with you your any ever last today yesterday time times "
    "happen happened".split()
)
"""Words a question about the past is full of that say nothing about what to find."""


class EventQueryError(ValueError):
    """A filter is wrong; the message names it and says what it takes."""


def words(text: str, *, drop_stop_words: bool = False) -> list[str]:
    """The distinct lower-case words of `text`, in order, at most `MAX_TERMS`."""
    out: list[str] = []
    for word in _WORD.findall(text.lower()):
        if word in out or (drop_stop_words and word in STOP_WORDS):
            continue
        out.append(word)
        if len(out) >= MAX_TERMS:
            break
    return out


def match_expression(terms: list[str], *, any_term: bool = False, source: str | None = None) -> str:
    """An FTS5 MATCH string of quoted terms: all of them (AND), or with `any_term` any (OR); with `source`, only in
    rows whose source column holds the source name's words as a phrase."""
    quoted = ['"' + t.replace('"', '""') + '"' for t in terms]
    expression = (" OR " if any_term else " AND ").join(quoted)
    source_words = words(source) if source else []
    if not source_words:
        return expression
    phrase = '"' + " ".join(source_words).replace('"', '""') + '"'
    return f"source : {phrase} AND ({expression})"


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Which events to list, newest first."""

    source: str | None = None
    since: float | None = None
    until: float | None = None
    q: str | None = None
    kind: str | None = None
    limit: int = DEFAULT_LIMIT

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, strings: bool = False) -> EventQuery:
        """From JSON (`strings=False`) or URL query parameters (`strings=True`: numbers arrive as text)."""
        unknown = sorted(str(k)[:40] for k in data if k not in KEYS)
        if unknown:
            raise EventQueryError(f"unknown parameters {unknown[:5]}; the filters are {list(KEYS)}")
        source = _text(data.get("source"), "source", MAX_SOURCE_CHARS)
        q = _text(data.get("q"), "q", MAX_Q_CHARS)
        kind = _text(data.get("kind"), "kind", 32)
        if kind is not None and kind not in KINDS:
            raise EventQueryError(f"kind must be one of {list(KINDS)}, got {kind[:40]!r}")
        since = _number(data.get("since"), "since", strings)
        until = _number(data.get("until"), "until", strings)
        if since is not None and until is not None and until < since:
            raise EventQueryError("until must not be before since")
        limit_value = _number(data.get("limit"), "limit", strings)
        limit = DEFAULT_LIMIT if limit_value is None else limit_value
        if limit != int(limit) or not 1 <= limit <= MAX_LIMIT:
            raise EventQueryError(f"limit must be an integer from 1 to {MAX_LIMIT}, got {_shown(data.get('limit'))}")
        if q is not None and not words(q):
            q = None  # only punctuation: nothing to match, so no filter
        return cls(source=source, since=since, until=until, q=q, kind=kind, limit=int(limit))


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def _text(value: Any, key: str, max_chars: int) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise EventQueryError(f"{key} must be text, got {_shown(value)}")
    if len(value) > max_chars or any(ord(c) < 32 for c in value):
        raise EventQueryError(f"{key} must be at most {max_chars} printable characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise EventQueryError(f"{key} must be UTF-8 text") from None
    return value


def _number(value: Any, key: str, strings: bool) -> float | None:
    if value is None or value == "":
        return None
    if strings and isinstance(value, str):
        try:
            value = float(value) if len(value) <= 32 else math.nan
        except ValueError:
            raise EventQueryError(f"{key} must be a number, got {_shown(value)}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise EventQueryError(f"{key} must be a non-negative number (unix seconds for since/until), got {_shown(value)}")
    return float(value)
