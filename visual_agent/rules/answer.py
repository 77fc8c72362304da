"""The structured yes/no answer of a rule check: the JSON schema, how each provider is asked for it, and a
defensive parser.

Each check asks for `{"answer": true|false, "reason": "..."}` through the provider's own structured output:
- a vLLM server (`VLLMProvider`): `structured_outputs: {"json": schema}` in `extra_body` (what vLLM 0.32's chat
  completions read; the older `guided_json` is gone there);
- the in-process engine (`VLLMNativeProvider`): the same `structured_outputs`, as its `SamplingParams`;
- any other OpenAI-compatible endpoint: `response_format` `{"type": "json_schema", ...}`.
Models and servers still misbehave (a cut-off answer, prose around the JSON, "yes" as a string), so `parse_answer`
takes what is clearly yes or no and calls everything else unparsable (None): never a guess.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["ANSWER_SCHEMA", "RULE_SYSTEM_PROMPT", "parse_answer", "structured_options"]

REASON_MAX_CHARS = 200
"""Longest reason kept (and asked for)."""

ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "answer": {"type": "boolean"},
        "reason": {"type": "string", "maxLength": REASON_MAX_CHARS},
    },
    "required": ["answer", "reason"],
    "additionalProperties": False,
}
"""What a check asks the model for."""

RULE_SYSTEM_PROMPT = (
    "You watch a live camera and answer one yes/no question about the current frame. Reply only with JSON: "
    '{"answer": true or false, "reason": "a few words on what you see"}.'
)

_YES = {"yes", "true", "y", "1"}
_NO = {"no", "false", "n", "0"}
_OBJECT = re.compile(r"\{.*?\}", re.DOTALL)


def structured_options(llm: Any) -> dict[str, Any]:
    """The `achat` options that ask `llm` for an `ANSWER_SCHEMA` answer (see the module docstring)."""
    from providers import OpenAICompatibleProvider, VLLMProvider

    if isinstance(llm, VLLMProvider) or not isinstance(llm, OpenAICompatibleProvider):
        return {"structured_outputs": {"json": ANSWER_SCHEMA}}  # vLLM server, native engine
    return {"response_format": {"type": "json_schema",
                                "json_schema": {"name": "rule_answer", "schema": ANSWER_SCHEMA, "strict": True}}}


def parse_answer(text: str) -> tuple[bool | None, str]:
    """(True yes / False no / None unparsable, the reason); never raises."""
    text = (text or "").strip()
    data: Any = None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        for candidate in _OBJECT.findall(text):  # JSON inside prose or a code fence
            try:
                data = json.loads(candidate)
                break
            except (json.JSONDecodeError, ValueError):
                continue
    if not isinstance(data, dict):
        return None, _short(text)
    answer = data.get("answer")
    reason = data.get("reason")
    reason = _short(reason if isinstance(reason, str) else "")
    if isinstance(answer, bool):
        return answer, reason
    if isinstance(answer, str) and answer.strip().lower() in _YES | _NO:
        return answer.strip().lower() in _YES, reason
    return None, reason


def _short(text: str) -> str:
    return text[:REASON_MAX_CHARS]
