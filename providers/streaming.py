"""Helpers for what `astream` yields besides text: tool calls assembled from their streamed pieces, and whether a
call asked for the items below (the item types, `ToolCallsEvent` and `UsageEvent`, live in `base.py` beside
`ToolCall` and `Usage`).

`astream` stays an async iterator of text deltas (`str`), so `"".join(...)` consumers keep working. Other items
follow the last text delta only when the call asked for them, in this order:

- with `tools` (and `tool_choice` not "none"): a `ToolCallsEvent` with every call complete (OpenAI streams a call's
  name and JSON arguments in pieces; they are put together here);
- with OpenAI's own `stream_options={"include_usage": True}`: a `UsageEvent`, when the backend reported usage.

Consumers that ask for either tell them apart from text with `isinstance(item, str)`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .base import ToolCall

__all__ = ["ToolCallAssembler", "tools_requested", "usage_requested"]


def usage_requested(opts: Mapping[str, Any]) -> bool:
    """Whether a call's options ask for the streamed answer's usage (the only case in which `astream` yields a
    UsageEvent)."""
    options = opts.get("stream_options")
    return isinstance(options, Mapping) and bool(options.get("include_usage"))


def tools_requested(opts: Mapping[str, Any]) -> bool:
    """Whether a call's options ask for tool calling (the only case in which `astream` may yield a ToolCallsEvent)."""
    return bool(opts.get("tools")) and opts.get("tool_choice") != "none"


@dataclass
class _Pending:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class ToolCallAssembler:
    """Puts OpenAI-style tool-call deltas (`index`, `id`, `function.name`, `function.arguments` pieces) together."""

    def __init__(self) -> None:
        self._calls: dict[int, _Pending] = {}

    def add(self, deltas: Iterable[Any]) -> None:
        """One chunk's `delta.tool_calls` (objects or dicts, as the openai package or a server gives them)."""
        for delta in deltas:
            index = _get(delta, "index")
            pending = self._calls.setdefault(index if index is not None else len(self._calls), _Pending())
            pending.id = _get(delta, "id") or pending.id
            function = _get(delta, "function")
            if function is None:
                continue
            name = _get(function, "name")
            if name and not pending.name:  # the name comes whole, once (some servers repeat it)
                pending.name = name
            arguments = _get(function, "arguments")
            if arguments:
                pending.arguments.append(arguments)

    def calls(self) -> tuple[ToolCall, ...]:
        """The complete calls in index order (ids made up where the server sent none)."""
        return tuple(
            ToolCall(id=p.id or f"call_{i}", name=p.name, arguments="".join(p.arguments))
            for i, p in sorted(self._calls.items())
            if p.name
        )


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)
