"""Bounded fuzzing (hypothesis, derandomized so CI runs the same examples each time, each test well under 20 s):
the question parser, the rule-set parser, the SDP offer / WHIP handling of a real running server, the config loader.
What must hold: no exception but the documented one escapes (`QuestionError`, `RuleSetError`, `ConfigError`), the
server never answers 500 nor keeps state from refused requests, a handful of malformed questions sent through
mosquitto to a real agent get exactly one error answer each, and a handful of malformed rule sets sent to a real
daemon's `<prefix>/rules/set` get exactly one `rules/error` answer each, counted. The LLM there is the STAND-IN of
tests/fixtures/llm_stub.py (never reached: every question is malformed, except the last, which proves the agent
still answers). tests/test_webrtc_http_fuzz.py fuzzes every header and JSON field of the HTTP server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.webrtc import offer_sdp, tasks_now
from tests.waiting import wait_until
from visual_agent.config import Config
from visual_agent.config_loading import parse_config
from visual_agent.errors import ConfigError, QuestionError
from visual_agent.messages import Question, parse_question
from visual_agent.rules.config import RuleConfig, RuleSetError, parse_rule_set

LIMITS = dict(max_bytes=2048, max_chars=200, max_frames=8)
BOUNDED = settings(derandomize=True, database=None, deadline=5000, suppress_health_check=list(HealthCheck))
"""Same examples every run (no flaky CI), a per-example deadline that catches a hang, no health checks that
depend on the machine's speed."""

QUESTION_KEYS = ["id", "question", "source", "frames", "stream", "conversation", "asked_at", "response_topic", "x"]
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                         st.text(max_size=30))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                  st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)
question_objects = st.dictionaries(st.sampled_from(QUESTION_KEYS), json_values, max_size=6)


def _payloads() -> st.SearchStrategy[bytes | str]:
    as_json = question_objects.map(lambda d: json.dumps(d, allow_nan=True))
    cut_json = st.tuples(as_json, st.integers(0, 200)).map(lambda t: t[0][: t[1]])
    return st.one_of(st.binary(max_size=300), st.text(max_size=300), as_json, cut_json,
                     st.text(max_size=40).map(lambda s: "{" + s), st.integers(0, 5000).map(lambda n: "[" * n))


@settings(BOUNDED, max_examples=400)
@given(_payloads())
def test_fuzz_parse_question_raises_only_question_error(payload):
    try:
        q = parse_question(payload, **LIMITS)
    except QuestionError as exc:
        assert exc.type and str(exc)
        return
    assert isinstance(q, Question) and isinstance(q.question, str) and 0 < len(q.question) <= LIMITS["max_chars"]
    assert q.frames is None or 1 <= q.frames <= LIMITS["max_frames"]
    assert isinstance(q.id, str) and q.id


# --- the rule-set parser (`<prefix>/rules/set`) -------------------------------------------------------------

RULE_KEYS = ["name", "source", "question", "check_every_s", "only_on_change", "on_after", "off_after", "cooldown_s",
             "lookback_s", "x"]
rule_values = st.one_of(json_values, st.sampled_from(["door", "person_at_door", "Is anyone there?", True, False, 2, 0.5,
                                                      1e308, 10**300]))
rule_objects = st.dictionaries(st.sampled_from(RULE_KEYS), rule_values, max_size=8)


def _rule_sets() -> st.SearchStrategy[bytes | str]:
    as_json = st.lists(rule_objects, max_size=4).map(lambda rules: json.dumps(rules, allow_nan=True))
    cut_json = st.tuples(as_json, st.integers(0, 300)).map(lambda t: t[0][: t[1]])
    wrapped = st.lists(rule_objects, max_size=2).map(lambda rules: json.dumps({"rules": rules}))
    return st.one_of(st.binary(max_size=300), st.text(max_size=300), as_json, cut_json, wrapped,
                     st.integers(0, 6000).map(lambda n: "[" * n),
                     st.tuples(st.sampled_from(RULE_KEYS), st.integers(4000, 6000)).map(_huge_number))


def _huge_number(key_digits: tuple[str, int]) -> str:
    """A rule whose `key` is a number of so many digits (written by hand: json.dumps refuses such ints)."""
    key, digits = key_digits
    return '[{"name": "a", "source": "d", "question": "q?", "' + key + '": ' + "9" * digits + "}]"


@settings(BOUNDED, max_examples=400)
@given(_rule_sets())
def test_fuzz_parse_rule_set_raises_only_rule_set_error(payload):
    try:
        rules = parse_rule_set(payload)
    except RuleSetError as exc:
        assert str(exc) and len(str(exc)) < 2000
        return
    assert all(isinstance(r, RuleConfig) and not isinstance(r.check_every_s, bool) for r in rules)


# --- the config loader ---------------------------------------------------------------------------------------

SECTIONS = ["llm", "encoder", "webrtc", "sources", "agent", "mqtt", "bogus"]
config_keys = st.sampled_from(["provider", "base_url", "model_name", "port", "host", "frames", "max_frames", "timeout",
                               "question_timeout_s", "frame_wait_s", "prefix", "protocol", "embeddings", "name", "url",
                               "history", "client_id", "enabled", "x"])
section_values = st.one_of(json_values, st.dictionaries(config_keys, json_values, max_size=5),
                           st.lists(st.dictionaries(config_keys, json_values, max_size=4), max_size=3))


@settings(BOUNDED, max_examples=200)
@given(st.one_of(st.dictionaries(st.sampled_from(SECTIONS), section_values, max_size=5), json_values),
       st.dictionaries(st.sampled_from(["VISUAL_AGENT__AGENT__FRAMES", "VISUAL_AGENT__MQTT__PORT", "VISUAL_AGENT__X",
                                        "VISUAL_AGENT__AGENT__FRAME_WAIT_S", "VISUAL_AGENT__LLM__TIMEOUT",
                                        "VISUAL_AGENT____", "VISUAL_AGENT__MQTT__TLS__ENABLED"]),
                       st.text(max_size=12), max_size=3))
def test_fuzz_parse_config_raises_only_config_error(data, environ):
    try:
        config = parse_config(data, source="fuzz.yaml", environ=environ)
    except ConfigError as exc:
        assert "fuzz.yaml" in str(exc) or "VISUAL_AGENT__" in str(exc), str(exc)
        return
    assert isinstance(config, Config)


# --- SDP offers and WHIP, against a running server ----------------------------------------------------------

def _mutate(sdp: str, ops: list[tuple[int, int, str]]) -> str:
    lines = sdp.split("\r\n")
    for op, where, text in ops:
        i = where % max(1, len(lines))
        if op == 0:
            del lines[i: i + 1]
        elif op == 1:
            lines.insert(i, lines[i] if lines else text)
        elif op == 2:
            lines[i: i + 1] = [text]
        elif op == 3 and lines:
            key, _, _ = lines[i].partition(":")
            lines[i] = f"{key}:{text}"
        else:
            lines = lines[:i]
    return "\r\n".join(lines)


mutations = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 200), st.text(max_size=40)), min_size=1, max_size=4)
offer_bodies = st.dictionaries(st.sampled_from(["sdp", "type", "source", "replaces", "x"]), json_values, max_size=4)


@pytest.mark.webrtc
@pytest.mark.timeout(120)
async def test_fuzz_offer_and_whip_never_500_nor_leak(webrtc_server, caplog):
    caplog.set_level(logging.WARNING)
    sdp = await offer_sdp()
    before = tasks_now()
    seen: list[int] = []

    async with aiohttp.ClientSession() as http:
        async def post(path: str, data: bytes, ctype: str) -> None:
            async with http.post(webrtc_server.url + path, data=data, headers={"Content-Type": ctype}) as r:
                text = await r.text()
                seen.append(r.status)
                assert r.status < 500 or r.status == 503, f"{path}: {r.status} {text!r}"
                if r.status in (200, 201):  # a mutation the server still takes: end the session it made
                    peer_id = json.loads(text)["peer_id"] if path == "/offer" else r.headers.get("X-Peer-Id")
                    if peer_id:
                        await webrtc_server.close_peer(peer_id)

        # hypothesis drives the examples on this test's event loop: each example is run to completion here
        examples: list = []

        @settings(BOUNDED, max_examples=120)
        @given(mutations, offer_bodies, st.booleans())
        def collect(ops, body, whip):
            examples.append((ops, body, whip))

        collect()
        for ops, body, whip in examples:
            mutated = _mutate(sdp, ops)
            if whip:
                await post("/whip", mutated.encode("utf-8", "surrogatepass"), "application/sdp")
            else:
                await post("/offer", json.dumps({"type": "offer", "sdp": mutated}).encode(), "application/json")
                await post("/offer", json.dumps(body, allow_nan=True).encode(), "application/json")
    assert 400 in seen
    await wait_until(lambda: webrtc_server.peers() == [] and webrtc_server.registry.negotiating == 0, timeout=10,
                     what="no peer or pending session left")
    await wait_until(lambda: tasks_now() <= before, timeout=10, what="no task left")
    # aiortc's own connect task, started by setRemoteDescription, fails on an offer whose data channel section was
    # cut (the server answers 400 and closes the peer); asyncio logs that task's error. Ours must log none.
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and "RTCPeerConnection.__connect" not in r.getMessage()]
    assert not errors, [r.getMessage() for r in errors]


# --- a handful through a real agent and mosquitto ----------------------------------------------------------------

def _handful(seed: int = 11, n: int = 12) -> list[bytes]:
    """Malformed payloads of every kind the parser refuses, picked reproducibly."""
    rng = random.Random(seed)
    good = json.dumps({"id": "q", "question": "what is there?", "frames": 2})
    kinds = [
        lambda: bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60))) + b"\xff",
        lambda: good[: rng.randrange(1, len(good) - 1)],
        lambda: json.dumps({"id": f"f{rng.randrange(999)}", "question": rng.choice(["", " ", None, 7, []])}),
        lambda: json.dumps({"id": f"f{rng.randrange(999)}", "question": "x", "frames": rng.choice([0, -1, 99, "2", 1.5])}),
        lambda: json.dumps({"id": f"f{rng.randrange(999)}", "question": "x" * 300}),
        lambda: "[" * rng.randrange(2000, 5000),
        lambda: json.dumps({"id": f"f{rng.randrange(999)}", "question": {"nested": [1, 2]}}),
        lambda: json.dumps({"id": f"f{rng.randrange(999)}", "question": "a\x00b"}),
    ]
    out = []
    for i in range(n):
        made = kinds[i % len(kinds)]()
        out.append(made if isinstance(made, bytes) else made.encode())
    return out


@pytest.mark.mqtt
@pytest.mark.timeout(90)
async def test_fuzz_malformed_questions_each_get_one_error_answer(running_mosquitto, paho_peer, topic_prefix, stub_llm):
    from tests.agents import running_agent
    from visual_agent.topics import Topics

    t = Topics(topic_prefix).as_dict()
    peer = paho_peer("5")
    peer.subscribe(t["answer"])
    payloads = _handful()
    async with running_agent(running_mosquitto, None, stub_llm.base_url, topic_prefix, max_question_chars=200):
        got: list[dict] = []
        for payload in payloads:  # one at a time: a second answer to one would arrive before the next one's
            peer.publish(t["ask"], payload)
            got.append(json.loads((await asyncio.to_thread(peer.get, 10, t["answer"])).payload))
            assert got[-1]["error"] is not None and got[-1]["error"]["type"] in ("bad_payload", "empty_question"), got[-1]
        peer.publish(t["ask"], json.dumps({"id": "last", "question": "still there?"}))
        last = json.loads((await asyncio.to_thread(peer.get, 10, t["answer"])).payload)
    assert last["id"] == "last"  # nothing extra arrived between the malformed ones' answers and this one
    assert len(got) == len(payloads) and stub_llm.requests == []


def _bad_rule_sets() -> list[bytes]:
    """Malformed rule sets of every kind the parser refuses."""
    rule = {"name": "door_open", "source": "door", "question": "Is the door open?"}
    return [
        b'[{"name": "a", "source": "door", "question": "q?", "check_every_s": ' + b"9" * 5000 + b"}]",
        b"[" * 5000,
        b"\xff\xfe[]",
        json.dumps([{**rule, "check_every_s": True}]).encode(),
        json.dumps([{**rule, "name": "Door Open"}]).encode(),
        json.dumps([rule, rule]).encode(),
        json.dumps({"rules": "all of them"}).encode(),
        json.dumps([{**rule, "on_after": 0, "cooldown_s": -1}]).encode(),
        b'[{"name": "a", "source": "door", "question": "\\ud800?"}, 1]',
    ]


@pytest.mark.mqtt
@pytest.mark.webrtc
@pytest.mark.timeout(90)
async def test_fuzz_malformed_rule_sets_each_get_one_counted_error(running_mosquitto, paho_peer, topic_prefix, stub_llm,
                                                                   caplog):
    from visual_agent.daemon import Daemon

    caplog.set_level(logging.WARNING)
    config = parse_config({
        "llm": {"provider": "openai", "base_url": stub_llm.base_url, "model_name": stub_llm.model},
        "webrtc": {"port": 0, "host_candidate_addresses": ["127.0.0.1"]},
        "mqtt": {"host": running_mosquitto.host, "port": running_mosquitto.port, "prefix": topic_prefix,
                 "reconnect_min_s": 0.1},
    }, environ={})
    good = json.dumps([{"name": "door_open", "source": "door", "question": "Is the door open?"}])
    peer = paho_peer("5")
    peer.subscribe(f"{topic_prefix}/rules/error")
    daemon = Daemon(config)
    await daemon.start()
    try:
        peer.publish(f"{topic_prefix}/rules/set", good, retain=True).wait_for_publish(5)  # arrives once subscribed
        await wait_until(lambda: [r.config.name for r in daemon.rules.rules()] == ["door_open"], 20, "the good set")
        bad = _bad_rule_sets()
        for payload in bad:  # one at a time: a second answer to one would arrive before the next one's
            peer.publish(f"{topic_prefix}/rules/set", payload).wait_for_publish(5)
            error = json.loads((await asyncio.to_thread(peer.get, 10, f"{topic_prefix}/rules/error")).payload)
            assert error["error"] and len(error["error"]) < 2000, error
        peer.publish(f"{topic_prefix}/rules/set", b"", retain=True).wait_for_publish(5)
        await wait_until(lambda: daemon.rules.rules() == [], 10, "the rules cleared")
        assert peer.messages.empty()  # nothing answered twice
        assert daemon.rules.stats()["rule_sets_refused"] == len(bad)
        assert [r.config.name for r in daemon.rules.rules()] == []
    finally:
        await daemon.close()
    tracebacks = [r.getMessage() for r in caplog.records if r.exc_info]
    assert tracebacks == [], tracebacks
