"""Conversation histories: whose earlier turns the model sees with a new question (`agent.history`).

A history belongs to a key: (source, conversation id) in `conversation` mode, (source, None) in `source` mode;
questions without a key (no conversation id in `conversation` mode, or `off`) get none. The store is bounded:
at most `max_conversations` keys (the least recently used is forgotten) of `max_turns` turns each, and a key
silent for `ttl_s` is forgotten, so neither many askers nor long sessions grow it.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

from .config import HistoryMode

__all__ = ["ConversationKey", "ConversationStore", "Turn"]

Turn = tuple[str, str]
"""(question, answer)."""
ConversationKey = tuple[str, "str | None"]
"""(source, conversation id); the id is None for the shared history of a source (`agent.history: source`)."""


class ConversationStore:
    """Turns per conversation, bounded in number, length and age."""

    def __init__(self, *, mode: HistoryMode | str = HistoryMode.CONVERSATION, max_turns: int, max_conversations: int,
                 ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.mode = HistoryMode(mode)
        self.max_turns = max_turns
        self.max_conversations = max_conversations
        self.ttl_s = ttl_s
        self._clock = clock
        self._turns: collections.OrderedDict[ConversationKey, tuple[float, collections.deque[Turn]]] = (
            collections.OrderedDict())
        """key -> (last used, turns); least recently used first."""

    def __len__(self) -> int:
        self._expire()
        return len(self._turns)

    def __repr__(self) -> str:
        return f"ConversationStore(mode={self.mode.value}, conversations={len(self._turns)})"

    def key(self, source: str, conversation: str | None) -> ConversationKey | None:
        """The history a question on `source` with this conversation id belongs to; None: it gets none."""
        if self.max_turns <= 0 or self.mode is HistoryMode.OFF:
            return None
        if self.mode is HistoryMode.SOURCE:
            return (source, None)
        return None if conversation is None else (source, conversation)

    def turns(self, key: ConversationKey | None) -> list[Turn]:
        """The turns kept under `key`, oldest first (a read counts as use: it keeps the conversation alive)."""
        self._expire()
        if key is None or key not in self._turns:
            return []
        _, turns = self._turns[key]
        self._turns[key] = (self._clock(), turns)
        self._turns.move_to_end(key)
        return list(turns)

    def remember(self, key: ConversationKey | None, question: str, answer: str) -> None:
        """Add a turn under `key` (nothing for None)."""
        if key is None:
            return
        self._expire()
        entry = self._turns.get(key)
        turns = entry[1] if entry is not None else collections.deque(maxlen=self.max_turns)
        turns.append((question, answer))
        self._turns[key] = (self._clock(), turns)
        self._turns.move_to_end(key)
        while len(self._turns) > self.max_conversations:
            self._turns.popitem(last=False)

    def forget(self, key: ConversationKey | None) -> None:
        """Drop `key`'s turns (a page's tab closed without its own conversation id)."""
        if key is not None:
            self._turns.pop(key, None)

    def _expire(self) -> None:
        deadline = self._clock() - self.ttl_s
        while self._turns:
            key, (used, _) = next(iter(self._turns.items()))
            if used > deadline:
                return
            del self._turns[key]
