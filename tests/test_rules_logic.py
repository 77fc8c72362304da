"""Rules without I/O: the rule-set checks (what an MQTT publisher may send), the hysteresis/cooldown state machine,
the defensive answer parser, the call budget and the look-back bounds."""

from __future__ import annotations

import json

import pytest

from visual_agent.config_loading import parse_config
from visual_agent.errors import ConfigError
from visual_agent.rules import (
    ANSWER_SCHEMA,
    MAX_RULES,
    MAX_RULES_PAYLOAD_BYTES,
    CallBudget,
    Lookback,
    OnOff,
    RuleSetError,
    RuleState,
    parse_answer,
    parse_rule_set,
    structured_options,
)
from visual_agent.rules.answer import ANSWER_REGEX
from visual_agent.rules.lookback import LOOKBACK_FPS, Thumbnail

RULE = {"name": "person_at_door", "source": "door", "question": "Is a person standing at the door?"}


def test_rules_config_section_is_validated_with_key_names():
    cfg = parse_config({"rules": [{**RULE, "check_every_s": 2, "on_after": 2, "off_after": 3, "cooldown_s": 30,
                                   "lookback_s": 3, "only_on_change": True}]})
    assert cfg.rules[0].name == "person_at_door" and cfg.rules[0].lookback_s == 3
    with pytest.raises(ConfigError, match=r"rules\.0\.name"):
        parse_config({"rules": [{**RULE, "name": "Person At Door"}]})
    with pytest.raises(ConfigError, match="unknown key 'rules.0.colour'"):
        parse_config({"rules": [{**RULE, "colour": "red"}]})
    with pytest.raises(ConfigError, match="used twice"):
        parse_config({"rules": [RULE, RULE]})
    with pytest.raises(ConfigError, match=r"check_every_s"):
        parse_config({"rules": [{**RULE, "check_every_s": 0.01}]})


@pytest.mark.parametrize("payload, message", [
    (b"{not json", "not a JSON list"),
    (b'"a string"', "expected a JSON list"),
    (json.dumps([{**RULE, "name": "x/y"}]).encode(), r"rule 0 \('x/y'\): name"),
    (json.dumps([{**RULE, "source": "door/#"}]).encode(), "source"),
    (json.dumps([{**RULE, "question": "q" * 501}]).encode(), "question"),
    (json.dumps([{**RULE, "lookback_s": 3600}]).encode(), "lookback_s"),
    (json.dumps([{**RULE, "on_after": 0}]).encode(), "on_after"),
    (json.dumps([RULE, RULE]).encode(), "used twice"),
    (json.dumps([{**RULE, "name": f"r{i}"} for i in range(MAX_RULES + 1)]).encode(), f"at most {MAX_RULES}"),
    (b"[" + b" " * MAX_RULES_PAYLOAD_BYTES + b"]", "bytes"),
    (b'[{"name": "a", "source": "door", "question": "q?", "check_every_s": ' + b"9" * 5000 + b"}]", "not a JSON list"),
    (b"[" * 5000 + b"]" * 5000, "not a JSON list"),
    (json.dumps([{**RULE, "check_every_s": True}]).encode(), "check_every_s: .*not a boolean"),
    (json.dumps([{**RULE, "on_after": True}]).encode(), "on_after: .*not a boolean"),
    (json.dumps([{**RULE, "cooldown_s": False}]).encode(), "cooldown_s: .*not a boolean"),
])
def test_rules_parse_rule_set_refuses_what_would_grow_state_or_cost(payload, message):
    with pytest.raises(RuleSetError, match=message):
        parse_rule_set(payload)


def test_rules_parse_rule_set_takes_a_list_and_an_empty_payload_clears():
    assert [r.name for r in parse_rule_set(json.dumps([RULE]))] == ["person_at_door"]
    assert parse_rule_set(b"") == [] and parse_rule_set(b"[]") == []


def feed(state: RuleState, answers, start=0.0, step=1.0):
    """Feed answers one a second; the transitions as (index, new state)."""
    out = []
    for i, answer in enumerate(answers):
        change = state.observe(answer, start + i * step)
        if change is not None:
            out.append((i, change.state.value))
    return out


def test_rules_state_hysteresis_turns_on_and_off_after_streaks():
    state = RuleState(on_after=2, off_after=3, cooldown_s=0)
    assert feed(state, [False, True, True, True, False, False, False]) == [(2, "on"), (6, "off")]


def test_rules_state_alternating_answers_never_flap():
    state = RuleState(on_after=2, off_after=2, cooldown_s=0)
    assert feed(state, [True, False] * 10) == []
    assert state.state is OnOff.OFF


def test_rules_state_unparsable_is_neither_yes_nor_no():
    state = RuleState(on_after=2, off_after=2, cooldown_s=0)
    assert feed(state, [True, None, True]) == [(2, "on")]  # None does not break the yes streak...
    state = RuleState(on_after=2, off_after=2, cooldown_s=0)
    assert feed(state, [True, None, None, None]) == []  # ...nor extend it


def test_rules_state_cooldown_delays_the_second_on():
    state = RuleState(on_after=1, off_after=1, cooldown_s=10)
    # on at 0, off at 1, yes again at 2..: the next on waits until 10 s after the first
    transitions = feed(state, [True, False] + [True] * 12)
    assert transitions == [(0, "on"), (1, "off"), (10, "on")]


def test_rules_state_settled_only_when_an_answer_agrees_with_the_state():
    state = RuleState(on_after=2, off_after=2, cooldown_s=0)
    assert not state.settled  # nothing asked yet
    state.observe(False, 0)
    assert state.settled
    state.observe(True, 1)
    assert not state.settled  # a yes streak runs: an unchanged picture must still be asked
    state.observe(True, 2)
    assert state.settled and state.state is OnOff.ON


@pytest.mark.parametrize("text, expected", [
    ('{"answer": true, "reason": "a person"}', (True, "a person")),
    ('{"answer": false, "reason": ""}', (False, "")),
    ('Sure! ```json\n{"answer": true, "reason": "x"}\n```', (True, "x")),
    ('{"answer": "yes", "reason": "x"}', (True, "x")),
    ('{"answer": "No", "reason": 5}', (False, "")),
    ('{"answer": "maybe", "reason": "x"}', (None, "x")),
    ('{"answer": true, "reas', (True, "")),  # cut off (max_tokens) after the verdict
    ('{"answer": tru', (None, '{"answer": tru')),
    ('{"reason": "x", "answer": true', (None, '{"reason": "x", "answer": true')),
    ("yes", (None, "yes")),
    ("", (None, "")),
    ("[true]", (None, "[true]")),
])
def test_rules_parse_answer_is_defensive(text, expected):
    assert parse_answer(text) == expected


def test_rules_structured_options_per_provider():
    from providers import OpenAICompatibleProvider, VLLMProvider

    vllm = VLLMProvider({"vllm_base_url": "http://127.0.0.1:9/v1", "model_name": "m"})
    openai = OpenAICompatibleProvider({"base_url": "http://127.0.0.1:9/v1", "api_key": "k", "model_name": "m"})
    assert structured_options(vllm) == {"structured_outputs": {"regex": ANSWER_REGEX}}
    assert structured_options(openai)["response_format"]["json_schema"]["schema"] == ANSWER_SCHEMA


def test_rules_call_budget_is_a_sliding_minute():
    budget = CallBudget(2)
    assert budget.take(0) and budget.take(1) and not budget.take(2)
    assert budget.used(30) == 2 and not budget.take(59.9)
    assert budget.take(60.0) and budget.used(60.0) == 2


def test_rules_lookback_keeps_its_seconds_at_a_bounded_rate():
    lookback = Lookback(2.0)
    t = 0.0
    while t < 10:
        if lookback.wants(t):
            lookback.add(Thumbnail(int(t * 30), None, t, b"x" * 100))
        t += 1 / 30
    assert len(lookback) <= 2 * LOOKBACK_FPS / 0.8 + 2
    assert all(t.received_at >= 8 - 1e-9 for t in lookback.before(10, 2))
    assert lookback.nbytes() == 100 * len(lookback)


def test_rules_parse_rule_set_error_does_not_echo_long_input():
    with pytest.raises(RuleSetError) as caught:
        parse_rule_set(json.dumps([{**RULE, "name": "n" * 5000}]))
    assert len(str(caught.value)) < 300
