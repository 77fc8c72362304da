"""`Admission`: whether a request to the model may start now, by who asks.

Every caller names its asker: an MQTT client (its response topic, else `mqtt`), a page peer, `rules`,
`descriptions`, `memory`. The policy is one pool: at most `agent.max_in_flight` requests at once, whoever asks;
more get a `busy` error at once instead of a queue that grows. After `close()` every request gets `shutdown`.
The asker key is kept per slot (`by_asker`), so a policy with shares per asker can be put here without touching
the callers.
"""

from __future__ import annotations

import collections
from typing import Any

from .errors import ErrorType, QuestionError

__all__ = ["Admission", "Slot"]


class Slot:
    """One admitted request, held until `release()` (or the end of its `with` block); releasing twice is harmless."""

    def __init__(self, admission: Admission, asker: str) -> None:
        self._admission = admission
        self.asker = asker
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._admission._leave(self.asker)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Admission:
    """Counts the requests in flight, by asker; refuses past `max_in_flight` (`busy`) and after `close` (`shutdown`)."""

    def __init__(self, max_in_flight: int) -> None:
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.by_asker: collections.Counter[str] = collections.Counter()
        """Requests in flight per asker key."""
        self.closing = False

    def check(self, asker: str, question_id: Any = None) -> QuestionError | None:
        """None when `asker` may start a request now; else the error to answer with. Call `enter` before the next
        await, so that nothing else is admitted in between."""
        if self.closing:
            return QuestionError(ErrorType.SHUTDOWN, "the agent is shutting down", id=question_id)
        if self.in_flight >= self.max_in_flight:
            return QuestionError(ErrorType.BUSY, f"{self.in_flight} questions in flight (agent.max_in_flight); ask "
                                 "again shortly", id=question_id)
        return None

    def enter(self, asker: str) -> Slot:
        """Count a request of `asker` in flight until its slot is released."""
        self.in_flight += 1
        self.by_asker[asker] += 1
        return Slot(self, asker)

    def _leave(self, asker: str) -> None:
        self.in_flight -= 1
        self.by_asker[asker] -= 1
        if self.by_asker[asker] <= 0:
            del self.by_asker[asker]

    def close(self) -> None:
        """Admit nothing from now on."""
        self.closing = True
