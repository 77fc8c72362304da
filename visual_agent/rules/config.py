"""`RuleConfig`: one standing question (a yes/no rule that watches a source), and the checks on a whole rule set.

Rules come from the config's `rules:` list and from a retained JSON list on `<prefix>/rules/set`. A rule set from
MQTT is input from anyone who may publish there, so everything that costs memory or model calls is bounded here
(and a boolean is not a number: `check_every_s: true` is refused, not read as 1.0):
at most `MAX_RULES` rules, a payload of at most `MAX_RULES_PAYLOAD_BYTES`, a question of at most
`MAX_QUESTION_CHARS`, no check more often than `MIN_CHECK_EVERY_S`, a look-back of at most `MAX_LOOKBACK_S`. The
model calls per source and minute are bounded again by `agent.rule_calls_per_minute` (see `budget.py`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from pydantic import ConfigDict, Field, ValidationError, field_validator

from ..strict_numbers import NumbersNotBooleans

__all__ = [
    "DEFAULT_RULE_CALLS_PER_MINUTE",
    "MAX_LOOKBACK_S",
    "MAX_QUESTION_CHARS",
    "MAX_RULES",
    "MAX_RULES_PAYLOAD_BYTES",
    "MIN_CHECK_EVERY_S",
    "RuleConfig",
    "RuleSetError",
    "check_rule_set",
    "parse_rule_set",
]

DEFAULT_RULE_CALLS_PER_MINUTE = 60
"""Model calls the rules of one source may make per minute (`agent.rule_calls_per_minute`)."""
MAX_RULES = 32
"""Most rules one daemon watches (config and MQTT together)."""
MAX_RULES_PAYLOAD_BYTES = 32 * 1024
"""Largest `<prefix>/rules/set` payload."""
MAX_QUESTION_CHARS = 500
"""Longest rule question."""
MIN_CHECK_EVERY_S = 0.5
"""No rule checks more often than this."""
MAX_LOOKBACK_S = 30.0
"""Longest look-back a rule may ask its source to keep."""
MAX_STREAK = 100
"""Largest `on_after` / `off_after`."""
MAX_COOLDOWN_S = 7 * 24 * 3600.0
"""Longest cooldown (a week)."""

_NAME = re.compile(r"[a-z0-9_]{1,64}")
_SOURCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""webrtc's source names (`webrtc.config.validate_source_name`), and a safe MQTT topic level."""


class RuleSetError(ValueError):
    """A rule set that cannot be taken (the message says which rule and key, and what to change)."""


class RuleConfig(NumbersNotBooleans):
    """One standing question about one source."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    name: str
    """Unique id, `[a-z0-9_]+` (at most 64): part of the MQTT topics and Home Assistant's entity ids."""
    source: str
    """The source it watches (a configured source, or a page/WHIP publisher's name)."""
    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    """A yes/no question about the picture."""
    check_every_s: float = Field(2.0, ge=MIN_CHECK_EVERY_S, le=3600.0)
    """Ask the model at most this often."""
    only_on_change: bool = True
    """Skip the model while the picture has not changed since the last check (the `agent.scene_change` measure)."""
    on_after: int = Field(2, ge=1, le=MAX_STREAK)
    """Consecutive yes answers that turn the rule on."""
    off_after: int = Field(3, ge=1, le=MAX_STREAK)
    """Consecutive no answers that turn it off."""
    cooldown_s: float = Field(30.0, ge=0, le=MAX_COOLDOWN_S)
    """At least this long between two `on` events."""
    lookback_s: float = Field(3.0, ge=0, le=MAX_LOOKBACK_S)
    """The event's evidence includes the source's thumbnails of this long before the change."""

    @field_validator("name")
    @classmethod
    def _name_ok(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("must be 1-64 characters of a-z, 0-9 and _")
        return value

    @field_validator("source")
    @classmethod
    def _source_ok(cls, value: str) -> str:
        if not _SOURCE.fullmatch(value):
            raise ValueError("must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit "
                             "(a source name; it becomes an MQTT topic level)")
        return value


def check_rule_set(rules: Sequence[RuleConfig], *, max_rules: int = MAX_RULES) -> list[RuleConfig]:
    """`rules` when their names are unique and they are at most `max_rules`; else RuleSetError."""
    if len(rules) > max_rules:
        raise RuleSetError(f"{len(rules)} rules; at most {max_rules} are watched")
    seen: set[str] = set()
    for rule in rules:
        if rule.name in seen:
            raise RuleSetError(f"rule name {rule.name!r} is used twice; names must be unique")
        seen.add(rule.name)
    return list(rules)


def parse_rule_set(payload: bytes | str, *, max_rules: int = MAX_RULES,
                   max_bytes: int = MAX_RULES_PAYLOAD_BYTES) -> list[RuleConfig]:
    """A `<prefix>/rules/set` payload (a JSON list of rules; an empty payload or `[]` clears them) as rules.

    Raises RuleSetError naming the rule and key at fault; nothing of a refused set is applied.
    """
    raw = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
    if len(raw) > max_bytes:
        raise RuleSetError(f"the rule set is {len(raw)} bytes; at most {max_bytes} are taken")
    if not raw.strip():
        return []
    try:
        data: Any = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, a number of 4300+ digits, nesting too deep
        raise RuleSetError(f"not a JSON list of rules: {str(exc)[:200]}") from None
    if isinstance(data, dict) and isinstance(data.get("rules"), list):
        data = data["rules"]
    if not isinstance(data, list):
        raise RuleSetError(f"expected a JSON list of rules, got {type(data).__name__}")
    if len(data) > max_rules:
        raise RuleSetError(f"{len(data)} rules; at most {max_rules} are watched")
    rules = []
    for i, item in enumerate(data):
        try:
            rules.append(RuleConfig.model_validate(item))
        except ValidationError as exc:
            name = item.get("name") if isinstance(item, dict) else None
            shown = f" ({name[:64]!r})" if isinstance(name, str) else ""  # the error never echoes much of the input
            raise RuleSetError(f"rule {i}{shown}: {describe_errors(exc)}") from None
    return check_rule_set(rules, max_rules=max_rules)


def describe_errors(exc: ValidationError) -> str:
    """A pydantic error as `key: what is wrong` lines, without echoing long input."""
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(rule)"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append("unknown key " + repr(key) if err["type"] == "extra_forbidden" else f"{key}: {msg}")
    return "; ".join(parts)
