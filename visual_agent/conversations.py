"""Conversation histories: whose earlier turns the model sees with a new question (`agent.history`).

A history belongs to a key: (source, conversation id, asker) in `conversation` mode, (source, None, None) in
`source` mode; questions without a key (no conversation id in `conversation` mode, or `off`) get none. The asker is
who sent the question as its intake knows it (`VisualAgent.take`'s asker, or the owner it names: an MQTT client's
response topic, `client:<id>` on the embedded broker, the page, ...): a conversation id sent by another asker is
another conversation, so nobody joins (or poisons) someone else's history by its id.

The store is bounded: at most `max_conversations` keys of `max_turns` turns each, and a key silent for `ttl_s` is
forgotten, so neither many askers nor long sessions grow it. When it is full, an asker holding more than its fair
share (`max_conversations` / askers) gives up its own least recently used conversation; a smaller one takes room
from the largest asker (with more askers than room, the least recently used conversation goes). One asker opening
fresh conversations therefore evicts only its own.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

from .config import HistoryMode

__all__ = ["ConversationKey", "ConversationStore", "Turn"]

Turn = tuple[str, str]
"""(question, answer)."""
ConversationKey = tuple[str, "str | None", "str | None"]
"""(source, conversation id, asker); id and asker are None for the shared history of a source (`agent.history: source`)."""


class ConversationStore:
    """Turns per conversation, bounded in number (fairly among askers), length and age."""

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
        self._per_asker: collections.Counter[str | None] = collections.Counter()

    def __len__(self) -> int:
        self._expire()
        return len(self._turns)

    def __repr__(self) -> str:
        return f"ConversationStore(mode={self.mode.value}, conversations={len(self._turns)}, askers={len(self._per_asker)})"

    def key(self, source: str, conversation: str | None, asker: str | None = None) -> ConversationKey | None:
        """The history a question on `source` with this conversation id from `asker` belongs to; None: it gets none."""
        if self.max_turns <= 0 or self.mode is HistoryMode.OFF:
            return None
        if self.mode is HistoryMode.SOURCE:
            return (source, None, None)
        return None if conversation is None else (source, conversation, asker)

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
        if entry is None:
            turns: collections.deque[Turn] = collections.deque(maxlen=self.max_turns)
            self._per_asker[key[2]] += 1
        else:
            turns = entry[1]
        turns.append((question, answer))
        self._turns[key] = (self._clock(), turns)
        self._turns.move_to_end(key)
        while len(self._turns) > self.max_conversations:
            giver = self._who_gives_up(key[2])
            # with as many askers as room, each holds one: then the least recently used conversation goes
            self._drop(self._oldest_of(giver) if self._per_asker[giver] > 1 else next(iter(self._turns)))

    def forget(self, key: ConversationKey | None) -> None:
        """Drop `key`'s turns (a page's tab closed without its own conversation id)."""
        if key is not None and key in self._turns:
            self._drop(key)

    def _who_gives_up(self, asker: str | None) -> str | None:
        """`asker` when it holds more than its fair share, else the asker holding the most."""
        if self._per_asker[asker] > self.max_conversations // len(self._per_asker):
            return asker
        return max(self._per_asker, key=lambda a: self._per_asker[a])

    def _oldest_of(self, asker: str | None) -> ConversationKey:
        return next(k for k in self._turns if k[2] == asker)

    def _drop(self, key: ConversationKey) -> None:
        del self._turns[key]
        self._per_asker[key[2]] -= 1
        if self._per_asker[key[2]] <= 0:
            del self._per_asker[key[2]]

    def _expire(self) -> None:
        deadline = self._clock() - self.ttl_s
        while self._turns:
            key, (used, _) = next(iter(self._turns.items()))
            if used > deadline:
                return
            self._drop(key)
