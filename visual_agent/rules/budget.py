"""`CallBudget`: at most N model calls per source in any 60 seconds; over it, checks wait (slower checking).

A sliding window of call times, bounded by the budget itself. A check that finds the budget spent is postponed
to its next turn (counted as `budget_degraded`, and the rule's state says `degraded: true`) rather than dropped
silently; rules on the source are served oldest-check first, so none starves.
"""

from __future__ import annotations

import collections

__all__ = ["CallBudget", "WINDOW_S"]

WINDOW_S = 60.0


class CallBudget:
    """Model calls allowed per `WINDOW_S` on one source."""

    def __init__(self, calls_per_minute: int) -> None:
        self.calls_per_minute = calls_per_minute
        self._calls: collections.deque[float] = collections.deque(maxlen=max(1, calls_per_minute))

    def used(self, now: float) -> int:
        """Calls in the last minute."""
        while self._calls and now - self._calls[0] >= WINDOW_S:
            self._calls.popleft()
        return len(self._calls)

    def take(self, now: float) -> bool:
        """Spend one call now if the budget allows; False (nothing spent) when it is used up."""
        if self.used(now) >= self.calls_per_minute:
            return False
        self._calls.append(now)
        return True
