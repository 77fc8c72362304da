"""The structured yes/no answer of a rule check: the JSON schema, how each provider is asked for it, and a
defensive parser.

Each check asks for `{"answer": true|false, "reason": "..."}` through the provider's own structured output:
- a vLLM server (`VLLMProvider`): `structured_outputs` in `extra_body` (what vLLM 0.32's chat completions read; the
  older `guided_json` is gone there), as `ANSWER_REGEX`, the schema's JSON spelled without free whitespace: with
  `{"json": schema}` vLLM 0.32's grammar lets a weak model pad with whitespace until `max_tokens` (measured with
  the tiny LLaVA at temperature 0; `disable_any_whitespace` did not stop it), and the regex also bounds the length;
- the in-process engine (`VLLMNativeProvider`): the same `structured_outputs`, as its `SamplingParams`;
- any other OpenAI-compatible endpoint: `response_format` `{"type": "json_schema", ...}`.
Models and servers still misbehave (a cut-off answer, prose around the JSON, "yes" as a string), so `parse_answer`
takes what is clearly yes or no and calls everything else unparsable (None): never a guess.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["ANSWER_REGEX", "ANSWER_SCHEMA", "RULE_SYSTEM_PROMPT", "parse_answer", "structured_options"]

REASON_MAX_CHARS = 120
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

ANSWER_REGEX = r'\{"answer": ?(true|false), ?"reason": ?"[^"\\\x00-\x1f]{0,' + str(REASON_MAX_CHARS) + r'}"\}'
"""`ANSWER_SCHEMA`'s JSON as vLLM's structured-output regex (no free whitespace, bounded length)."""

RULE_SYSTEM_PROMPT = (
    "You watch a live camera and answer one yes/no question about the current frame. Reply only with JSON: "
    '{"answer": true or false, "reason": "a few words on what you see"}.'
)

_YES = {"yes", "true", "y", "1"}
_NO = {"no", "false", "n", "0"}
_OBJECT = re.compile(r"\{.*?\}", re.DOTALL)
_CUT_OFF = re.compile(r'\s*\{\s*"answer"\s*:\s*(true|false)\b')
"""An answer cut off after its verdict (max_tokens): the verdict is still clear."""


def structured_options(llm: Any) -> dict[str, Any]:
    """The `achat` options that ask `llm` for an `ANSWER_SCHEMA` answer (see the module docstring)."""
    from providers import OpenAICompatibleProvider, VLLMProvider

    if isinstance(llm, VLLMProvider) or not isinstance(llm, OpenAICompatibleProvider):
        return {"structured_outputs": {"regex": ANSWER_REGEX}}  # vLLM server, native engine
    return {"response_format": {"type": "json_schema",
                                "json_schema": {"name": "rule_answer", "schema": ANSWER_SCHEMA, "strict": True}}}


def parse_answer(text: str) -> tuple[bool | None, str]:
    """(True yes / False no / None unparsable, the reason); never raises."""
    text = (text or "").strip()
    data: Any = None
    try:
        data = json.loads(text, strict=False)  # strict=False: a control character in the reason is no reason to fail
    except (json.JSONDecodeError, ValueError):
        for candidate in _OBJECT.findall(text):  # JSON inside prose or a code fence
            try:
                data = json.loads(candidate, strict=False)
                break
            except (json.JSONDecodeError, ValueError):
                continue
    if data is None and (cut := _CUT_OFF.match(text)):
        return cut.group(1) == "true", ""
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
