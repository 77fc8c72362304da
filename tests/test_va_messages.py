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
        (b'{"id": "a1", "question": ', ErrorType.BAD_PAYLOAD, True),  # the leading id is read
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


HUGE_INT = "9" * 5000  # past Python's int-digit limit (4300): json.loads raises ValueError, not JSONDecodeError


@pytest.mark.parametrize(
    "payload",
    [
        '{"id": "a1", "question": "x", "frames": ' + HUGE_INT + "}",
        '{"id": "a1", "question": ' + HUGE_INT + "}",
        '{"id": "a1", "question": "x", "frames": NaN}',
        '{"id": "a1", "question": "x", "frames": Infinity}',
        '{"id": "a1", "question": "x", "frames": -Infinity}',
        '{"id": "a1", "question": "x", "frames": 2.0}',
        '{"id": "a1", "question": "x", "frames": 1e999}',
        '{"id": "a1", "question": 1.5}',
        '{"id": "a1", "question": NaN}',
        '{"id": "a1", "question": ["what", "is", "this"]}',
        '{"id": "a1", "question": {"text": "x"}}',
        '{"id": "a1", "question": "x", "source": ["cam"]}',
        '{"id": "a1", "question": "x", "source": 5}',
        '{"id": "a1", "question": "x", "source": "' + "s" * 5000 + '"}',
        '{"id": "a1", "question": "x", "conversation": 7}',
        '{"id": "a1", "question": "x", "conversation": ""}',
        '{"id": "a1", "question": "x", "conversation": "' + "c" * 5000 + '"}',
        '{"id": "a1", "question": "x", "conversation": {"id": "c"}}',
        '{"id": "a1", "question": "x", "conversation": "a\\u0000b"}',
        '{"id": "a1", "question": "x", "stream": NaN}',
        '{"id": "a1", "question": "' + "q" * 9000 + '"}',
        '{"id": "a1", "question": "x", "frames": ' + "[" * 3000 + "]" * 3000 + "}",
    ],
)
def test_parse_question_malformed_payload_is_one_bad_payload_with_the_id(payload):
    """Whatever json or a check raises inside, the asker gets a `bad_payload` under its id, with a short message."""
    with pytest.raises(QuestionError) as info:
        parse_question(payload.encode(), max_bytes=DEFAULT_MAX_PAYLOAD_BYTES, max_chars=2000, max_frames=8)
    assert info.value.type is ErrorType.BAD_PAYLOAD
    assert info.value.id == "a1"
    assert 0 < len(info.value.message) <= 400
    assert json.loads(Answer.failed(None, info.value).payload())["id"] == "a1"


@pytest.mark.parametrize(
    "payload",
    [
        '{"id": ' + HUGE_INT + ', "question": "x"}',
        '{"id": NaN, "question": "x"}',
        '{"id": 1.5, "question": "x"}',
        '{"id": {"a": 1}, "question": "x"}',
        "{" * 3000 + "}" * 3000,
        '{"question": "x", "id": "a1"',
    ],
)
def test_parse_question_malformed_payload_without_a_readable_id_is_still_one_bad_payload(payload):
    with pytest.raises(QuestionError) as info:
        parse_question(payload.encode(), max_bytes=DEFAULT_MAX_PAYLOAD_BYTES, max_chars=2000, max_frames=8)
    assert info.value.type is ErrorType.BAD_PAYLOAD and 0 < len(info.value.message) <= 400
    assert json.loads(Answer.failed(None, info.value).payload())["error"]["type"] == "bad_payload"


def test_parse_question_conversation_is_read():
    q = parse_question(b'{"id": 1, "question": "x", "conversation": "tab-1f2e"}', **LIMITS)
    assert q.conversation == "tab-1f2e"
    assert parse_question(b'{"question": "x"}', **LIMITS).conversation is None
    assert parse_question(b"plain text", **LIMITS).conversation is None


@pytest.mark.parametrize("payload", ['{"id": "a1", "question": "x", "frames": ', '{"id":"a1","question":' + "[" * 3000])
def test_parse_question_unreadable_json_keeps_a_leading_id(payload):
    with pytest.raises(QuestionError) as info:
        parse_question(payload.encode(), max_bytes=DEFAULT_MAX_PAYLOAD_BYTES, max_chars=2000, max_frames=8)
    assert info.value.type is ErrorType.BAD_PAYLOAD and info.value.id == "a1"
