"""Question and answer payloads of the MQTT and data-channel contracts (docs/VISUAL_AGENT_GUIDE.md, "MQTT contract").

In: ``{"id"?, "question", "source"?, "frames"?, "stream"?, "conversation"?, "asked_at"?, "lookback_s"?, "since"?,
"until"?}`` as JSON, or plain UTF-8 text
(the whole payload is the question). A payload that starts with ``{`` must be such a JSON object; anything else is text.
Out: the answer ``{"id", "question", "text", "source", "frames": [{"pts", "age_s"}], "model", "provider",
"latency_s", "error"}`` (plus ``"trimmed"`` when the context budget dropped history or frames, and ``"queued_s"`` when
the question said when it was asked, and ``"events"`` when it was answered from the event store) and partials ``{"id", "seq", "delta"}``.

Parsing never raises anything but `QuestionError`, whose `id` is the question's id when one could be read, so
the error answer still reaches the asker under its id: numbers too long for Python's int-digit limit, NaN and
Infinity are read as markers (never raised on), and whatever else json or a check raises becomes `bad_payload`.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .errors import ErrorType, QuestionError

__all__ = ["Answer", "FrameRef", "Question", "new_id", "parse_question", "partial_payload"]

QUESTION_KEYS = frozenset({"id", "question", "source", "frames", "stream", "conversation", "asked_at", "lookback_s",
                           "since", "until"})
_MAX_ID_CHARS = 128
_MAX_NAME_CHARS = 128
"""Longest `source` or `conversation` name."""
_MAX_NUMBER_DIGITS = 64
"""Longer JSON numbers are kept as text markers: no field needs them, and Python refuses past 4300 digits."""
_SHOWN_CHARS = 40
"""A bad value is quoted in the error message up to this many characters."""


def new_id() -> str:
    """A fresh question id (12 hex digits)."""
    return uuid.uuid4().hex[:12]


@dataclass(slots=True)
class Question:
    """One question, however it arrived."""

    question: str
    """The text asked."""
    id: Any = field(default_factory=new_id)
    """Echoed in every answer and partial (a string or an int, as the asker sent it)."""
    source: str | None = None
    """Which source to look at; None: the default."""
    frames: int | None = None
    """How many frames to look at; None: the config's."""
    stream: bool | None = None
    """Stream partials; None: the config's."""
    conversation: str | None = None
    """The conversation this question continues (its history); None: see `agent.history`."""
    asked_at: float | None = None
    """When the asker sent it (Unix seconds): the answer then says how long it waited (`queued_s`)."""
    lookback_s: float | None = None
    """Also look at a few look-back images of this many seconds before now ("what just happened?"); None: not."""
    since: float | None = None
    """A question about the past: from this unix time (answered from the event store); None: from the start."""
    until: float | None = None
    """A question about the past: up to this unix time; None: up to now (when `since` is given)."""

    @property
    def about_the_past(self) -> bool:
        """True when the question names a time window: it is answered from the event store, not the live frames."""
        return self.since is not None or self.until is not None


@dataclass(frozen=True, slots=True)
class FrameRef:
    """A frame the agent used: its presentation timestamp and how old it was when taken."""

    pts: int | None
    age_s: float

    def as_dict(self) -> dict[str, Any]:
        return {"pts": self.pts, "age_s": round(self.age_s, 4)}


@dataclass(slots=True)
class Answer:
    """The answer to one question (also when it failed: then `error` says why and `text` is empty)."""

    id: Any
    question: str
    text: str = ""
    source: str | None = None
    frames: list[FrameRef] = field(default_factory=list)
    model: str | None = None
    provider: str | None = None
    latency_s: float = 0.0
    error: dict[str, str] | None = None
    trimmed: dict[str, int] | None = None
    """What the context budget left out to fit the model (``{"history_turns": n, "frames": n}``); None: nothing."""
    queued_s: float | None = None
    """Seconds from the question's `asked_at` until the daemon received it (e.g. it was queued at the broker
    while the daemon was stopped); only when the question carried `asked_at`. `asked_at` is the asker's wall clock
    and the receipt this host's, so the figure is only as good as their synchronisation (NTP); never negative."""
    events: list[dict[str, Any]] | None = None
    """A question about the past: the stored events the model was shown, `{"id", "at", "source"}` oldest first;
    None for a question about the live frames."""
    tool_calls: list[dict[str, str]] = field(default_factory=list)
    """The tool calls the model made, `{"id", "name", "arguments"}` (`arguments`: the JSON text the model wrote),
    the same whether the answer was streamed or not; only when the agent was given tools (`llm_options`)."""

    def as_dict(self) -> dict[str, Any]:
        """The payload's fields; `tool_calls`, `trimmed` and `queued_s` only when there are some."""
        extra = {} if self.queued_s is None else {"queued_s": round(self.queued_s, 3)}
        out = {
            "id": self.id,
            "question": self.question,
            "text": self.text,
            "source": self.source,
            "frames": [f.as_dict() for f in self.frames],
            "model": self.model,
            "provider": self.provider,
            "latency_s": round(self.latency_s, 4),
            "error": self.error,
            **extra,
        }
        if self.trimmed:
            out["trimmed"] = dict(self.trimmed)
        if self.tool_calls:
            out["tool_calls"] = [dict(call) for call in self.tool_calls]
        if self.events is not None:
            out["events"] = [dict(event) for event in self.events]
        return out

    def payload(self) -> bytes:
        """The JSON bytes published on MQTT and sent on the data channel."""
        return json.dumps(self.as_dict(), ensure_ascii=False).encode("utf-8")

    @classmethod
    def failed(cls, question: Question | None, error: QuestionError, *, latency_s: float = 0.0, provider: str | None = None) -> Answer:
        """An error answer carrying the question's id (or the id the error could read)."""
        qid = question.id if question is not None else (error.id if error.id is not None else new_id())
        return cls(
            id=qid,
            question=question.question if question is not None else "",
            source=question.source if question is not None else None,
            latency_s=latency_s,
            provider=provider,
            error=error.as_dict(),
        )


def partial_payload(qid: Any, seq: int, delta: str) -> bytes:
    """A streamed piece ``{"id", "seq", "delta"}``; seq counts from 1."""
    return json.dumps({"id": qid, "seq": seq, "delta": delta}, ensure_ascii=False).encode("utf-8")


def _bad(message: str, qid: Any = None, kind: ErrorType = ErrorType.BAD_PAYLOAD) -> QuestionError:
    return QuestionError(kind, message, id=qid)


class _Unreadable:
    """A JSON value kept as a marker instead of a Python value: a number past `_MAX_NUMBER_DIGITS` digits, or
    NaN/Infinity. Never a valid field; its repr quotes it shortly for the error message."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text if len(self.text) <= 16 else f"a number of {len(self.text)} digits"


def _number(kind: type) -> Any:
    def parse(text: str) -> Any:
        return _Unreadable(text) if len(text) > _MAX_NUMBER_DIGITS else kind(text)
    return parse


_LEADING_ID = re.compile(
    r'\{\s*"id"\s*:\s*("(?:[^"\\\x00-\x1f]|\\.){1,' + str(_MAX_ID_CHARS) + r'}"|-?[0-9]{1,' + str(_MAX_ID_CHARS) + r'})\s*[,}]')


def _leading_id(text: str) -> Any:
    """The id of a payload json cannot read, when it is the object's first key (so it is surely the question's)."""
    match = _LEADING_ID.match(text)
    if match is None:
        return None
    try:
        qid = json.loads(match.group(1))
    except ValueError:
        return None
    return qid if isinstance(qid, int) or (isinstance(qid, str) and qid and _encodable(qid)) else None


def _shown(value: Any) -> str:
    """`value` quoted for an error message, cut short (it came from the asker and may be huge)."""
    if isinstance(value, (list, dict)):
        return f"a JSON {'array' if isinstance(value, list) else 'object'}"
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


def _name(data: dict[str, Any], key: str, qid: Any) -> str | None:
    """A `source` or `conversation` name: None, or short printable UTF-8 text."""
    value = data.get(key)
    if value is None:
        return None
    if (not isinstance(value, str) or not value or len(value) > _MAX_NAME_CHARS or not _encodable(value)
            or any(ord(c) < 32 for c in value)):
        raise _bad(f'"{key}" must be a non-empty string of at most {_MAX_NAME_CHARS} printable characters, '
                   f"got {_shown(value)}", qid)
    return value


def parse_question(payload: bytes | str, *, max_bytes: int, max_chars: int, max_frames: int,
                   max_lookback_s: float = 0.0, past: bool = False) -> Question:
    """Read a question payload; `QuestionError` (bad_payload / empty_question) says what is wrong, and nothing else
    escapes: an unforeseen failure of json or a check is a `bad_payload` too (with the id when it was read).
    `max_lookback_s`: the largest `lookback_s` taken (`AgentConfig.question_lookback_max_s()`; 0: look-back off).
    `past`: questions about the past can be answered (the event store is on): a `lookback_s` beyond
    `max_lookback_s` becomes `since` = now - lookback_s instead of an error."""
    read: dict[str, Any] = {}
    try:
        return _parse(payload, max_bytes, max_chars, max_frames, read, max_lookback_s, past)
    except QuestionError:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError, AttributeError, KeyError) as exc:
        detail = str(exc)[:_SHOWN_CHARS * 2]
        raise _bad(f"payload could not be read ({type(exc).__name__}: {detail})", read.get("id")) from None


def _parse(payload: bytes | str, max_bytes: int, max_chars: int, max_frames: int, read: dict[str, Any],
           max_lookback_s: float, past: bool = False) -> Question:
    raw = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else bytes(payload)
    if len(raw) > max_bytes:
        raise _bad(f"payload is {len(raw)} bytes; the limit is {max_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(f"payload is not UTF-8 text (byte {exc.start}); send JSON or plain UTF-8") from None
    stripped = text.strip()
    if not stripped.startswith("{"):
        q = Question(question=stripped)
    else:
        try:
            data = json.loads(stripped, parse_int=_number(int), parse_float=_number(float),
                              parse_constant=_Unreadable)
        except json.JSONDecodeError as exc:
            raise _bad(f"payload starts with '{{' but is not valid JSON: {exc.msg} at char {exc.pos}",
                       _leading_id(stripped)) from None
        except RecursionError:
            raise _bad("payload is JSON nested too deeply", _leading_id(stripped)) from None
        if not isinstance(data, dict):
            raise _bad("payload must be a JSON object")
        q = _from_mapping(data, read)
    if not q.question:
        raise _bad("the question is empty", q.id, ErrorType.EMPTY_QUESTION)
    if any(ord(c) < 32 and c not in "\t\n\r" for c in q.question):
        raise _bad("the question contains control characters (binary data?)", q.id)
    if len(q.question) > max_chars:
        raise _bad(f"the question is {len(q.question)} characters; the limit is {max_chars}", q.id)
    if q.frames is not None and not 1 <= q.frames <= max_frames:
        raise _bad(f"frames must be 1 to {max_frames}, got {_shown(q.frames)}", q.id)
    if q.about_the_past and not past:
        raise _bad('"since"/"until": questions about the past need the event store (storage.enabled)', q.id)
    if q.lookback_s is not None and q.about_the_past:
        raise _bad('give "lookback_s" or "since"/"until", not both', q.id)
    if q.lookback_s is not None and past and q.lookback_s > max_lookback_s:  # beyond the frames kept: the store's
        q.since, q.lookback_s = max(0.0, time.time() - q.lookback_s), None
    if q.lookback_s is not None:
        if max_lookback_s <= 0:
            raise _bad('"lookback_s": look-back is off on this daemon (agent.lookback_s is 0)', q.id)
        if q.lookback_s > max_lookback_s:
            raise _bad(f'"lookback_s" must be at most {max_lookback_s:g} s (agent.lookback_max_s), '
                       f"got {_shown(q.lookback_s)}", q.id)
    return q


def _unix_time(data: dict[str, Any], key: str, qid: Any) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise _bad(f'"{key}" must be a Unix time in seconds, got {_shown(value)}', qid)
    return float(value)


def _encodable(text: str) -> bool:
    """False for text holding lone surrogates (JSON escapes such as ``"\\ud800"``): it has no UTF-8 form, so no
    answer carrying it could be sent."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _from_mapping(data: dict[str, Any], read: dict[str, Any]) -> Question:
    qid = data.get("id")
    if qid is None:
        qid = new_id()
    elif (isinstance(qid, bool) or not isinstance(qid, (str, int)) or len(str(qid)) > _MAX_ID_CHARS
          or not _encodable(str(qid))):
        raise _bad(f"id must be a string (UTF-8 text) or an integer of at most {_MAX_ID_CHARS} characters")
    read["id"] = qid
    unknown = sorted(str(k)[:_SHOWN_CHARS] for k in set(data) - QUESTION_KEYS)
    if unknown:
        raise _bad(f"unknown keys {unknown[:5]}; a question has {sorted(QUESTION_KEYS)}", qid)
    question = data.get("question")
    if question is None:
        raise _bad('missing "question" (the text to ask)', qid, ErrorType.EMPTY_QUESTION)
    if not isinstance(question, str):
        raise _bad(f'"question" must be a string, got {_shown(question)}', qid)
    if not _encodable(question):
        raise _bad('"question" holds a lone surrogate escape (\\ud800-\\udfff): not UTF-8 text', qid)
    source = _name(data, "source", qid)
    conversation = _name(data, "conversation", qid)
    frames = data.get("frames")
    if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int)):
        raise _bad(f'"frames" must be an integer, got {_shown(frames)}', qid)
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad(f'"stream" must be true or false, got {_shown(stream)}', qid)
    asked_at = data.get("asked_at")
    if asked_at is not None and (isinstance(asked_at, bool) or not isinstance(asked_at, (int, float))
                                 or not math.isfinite(asked_at) or asked_at < 0):
        raise _bad(f'"asked_at" must be a Unix time in seconds, got {_shown(asked_at)}', qid)
    since, until = _unix_time(data, "since", qid), _unix_time(data, "until", qid)
    if since is not None and until is not None and until < since:
        raise _bad('"until" must not be before "since"', qid)
    lookback_s = data.get("lookback_s")
    if lookback_s is not None and (isinstance(lookback_s, bool) or not isinstance(lookback_s, (int, float))
                                   or not math.isfinite(lookback_s) or lookback_s <= 0):
        raise _bad(f'"lookback_s" must be a number of seconds > 0, got {_shown(lookback_s)}', qid)
    return Question(question=question.strip(), id=qid, source=source, frames=frames, stream=stream,
                    conversation=conversation, asked_at=float(asked_at) if asked_at is not None else None,
                    lookback_s=float(lookback_s) if lookback_s is not None else None, since=since, until=until)
