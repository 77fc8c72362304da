"""Question parsing and answer payloads (the MQTT / data-channel contract)."""

from __future__ import annotations

import json

import pytest

from visual_agent.config import DEFAULT_MAX_PAYLOAD_BYTES
from visual_agent.errors import ErrorType, QuestionError
from visual_agent.messages import Answer, FrameRef, Question, parse_question, partial_payload

LIMITS = dict(max_bytes=1024, max_chars=200, max_frames=8)


def test_parse_question_plain_text():
    q = parse_question("  what colour is the car?\n".encode(), **LIMITS)
    assert q.question == "what colour is the car?" and q.source is None and isinstance(q.id, str) and q.id


def test_parse_question_text_that_is_not_an_object_is_plain_text():
    assert parse_question(b"[1, 2]", **LIMITS).question == "[1, 2]"


def test_parse_question_json_full():
    q = parse_question(json.dumps({"id": 7, "question": "hi", "source": "cam", "frames": 3, "stream": True}), **LIMITS)
    assert (q.id, q.question, q.source, q.frames, q.stream) == (7, "hi", "cam", 3, True)


@pytest.mark.parametrize(
    "payload, kind, keeps_id",
    [
        (b"\xff\xfe\x00bad", ErrorType.BAD_PAYLOAD, False),
        (b"x" * 2000, ErrorType.BAD_PAYLOAD, False),
        (b'{"id": "a1", "question": ', ErrorType.BAD_PAYLOAD, False),
        (b'{"id": "a1", "question": 5}', ErrorType.BAD_PAYLOAD, True),
        (b'{"id": "a1", "question": "x", "colour": 1}', ErrorType.BAD_PAYLOAD, True),
        (b'{"id": "a1", "question": "x", "frames": 99}', ErrorType.BAD_PAYLOAD, True),
        (b'{"id": "a1", "question": "x", "frames": "2"}', ErrorType.BAD_PAYLOAD, True),
        (b'{"id": "a1", "question": "x", "stream": "yes"}', ErrorType.BAD_PAYLOAD, True),
        (b'{"id": "a1", "question": "   "}', ErrorType.EMPTY_QUESTION, True),
        (b'{"id": "a1"}', ErrorType.EMPTY_QUESTION, True),
        (b"   ", ErrorType.EMPTY_QUESTION, False),
        (b'{"id": [1], "question": "x"}', ErrorType.BAD_PAYLOAD, False),
        (b'{"id": "a1", "question": "x\\ud800"}', ErrorType.BAD_PAYLOAD, True),  # lone surrogate: no UTF-8 form
        (b'{"id": "a1", "question": "x", "source": "\\udfff"}', ErrorType.BAD_PAYLOAD, True),
        (b'{"id": "\\ud800", "question": "x"}', ErrorType.BAD_PAYLOAD, False),
    ],
)
def test_parse_question_bad_input(payload, kind, keeps_id):
    with pytest.raises(QuestionError) as info:
        parse_question(payload, **LIMITS)
    assert info.value.type is kind and info.value.message
    assert (info.value.id == "a1") is keeps_id
    assert json.loads(Answer.failed(None, info.value).payload())["error"]["type"] == kind.value  # the error answer can be sent


def test_parse_question_deeply_nested_json_is_a_bad_payload():
    """Nesting within the default payload limit makes json raise RecursionError: still a QuestionError."""
    payload = b'{"question": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert len(payload) <= DEFAULT_MAX_PAYLOAD_BYTES
    with pytest.raises(QuestionError) as info:
        parse_question(payload, max_bytes=DEFAULT_MAX_PAYLOAD_BYTES, max_chars=200, max_frames=8)
    assert info.value.type is ErrorType.BAD_PAYLOAD and "nested" in info.value.message


def test_answer_payload_shape():
    q = Question(question="q?", id="x1", source="cam")
    a = Answer(id=q.id, question=q.question, text="a car", source="cam", frames=[FrameRef(90000, 0.01234567)],
               model="m", provider="vllm", latency_s=0.5)
    d = json.loads(a.payload())
    assert set(d) == {"id", "question", "text", "source", "frames", "model", "provider", "latency_s", "error"}
    assert d["frames"] == [{"pts": 90000, "age_s": 0.0123}] and d["error"] is None
    failed = json.loads(Answer.failed(q, QuestionError(ErrorType.NO_FRAME, "no frame yet")).payload())
    assert failed["id"] == "x1" and failed["error"] == {"type": "no_frame", "message": "no frame yet"} and failed["text"] == ""
    assert json.loads(partial_payload("x1", 2, "ca")) == {"id": "x1", "seq": 2, "delta": "ca"}
