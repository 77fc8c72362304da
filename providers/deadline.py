"""The time by which the caller needs an answer, so a provider's retries never sleep past it.

The agent sets it around each question (`agent.question_timeout_s`); a provider reads `time_left()` before
waiting to retry (a 429's `Retry-After`, a backoff) and, when the wait would not fit, fails at once with the error
it has instead of sleeping into the caller's timeout. A context variable, so concurrent questions each see theirs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar

__all__ = ["answer_by", "time_left"]

_deadline: ContextVar[float | None] = ContextVar("providers_answer_deadline", default=None)


@contextlib.contextmanager
def answer_by(deadline: float | None) -> Iterator[None]:
    """Within the block, answers are needed by `deadline` (`time.monotonic()` seconds; None: no deadline)."""
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


def time_left() -> float | None:
    """Seconds until the current deadline (may be negative), or None when there is none."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()
