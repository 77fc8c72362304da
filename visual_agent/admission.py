"""`Admission`: whether a request to the model may start now, by who asks, and a fair turn for those that wait.

Every caller names its asker: an MQTT client (its response topic, else `mqtt`), a page peer, `rules`,
`descriptions`, `memory`. At most `agent.max_in_flight` requests run at once. When all slots are taken, a
request may wait for one, within bounds an outsider cannot raise: at most `agent.max_queued_per_asker` waiting per
asker, `agent.max_queued` waiting in all, each for at most `agent.queue_wait_s` (and never past its own deadline);
beyond those it gets `busy` at once. A freed slot goes to the waiting asker with the fewest requests in flight,
the longest-waiting first among equals, so one asker that floods holds its share and gets `busy` for the rest
while another asker's questions are answered. After `close()` every request, waiting ones included, gets
`shutdown`.

Only askers with a request in flight or waiting are tracked, so the state is bounded by `max_in_flight +
max_queued` whatever the number of askers (fresh MQTT response topics included).
"""

from __future__ import annotations

import asyncio
import collections
import enum
import itertools
import time
from typing import Any

from .errors import ErrorType, QuestionError

__all__ = ["Admission", "Slot"]


class _State(enum.Enum):
    WAITING = "waiting"
    HELD = "held"
    REFUSED = "refused"
    """Never held: refused at `enter`, or failed while waiting (`shutdown`); `wait` raises `Slot.error`."""
    DONE = "done"
    """Released, or gave up waiting."""


class Slot:
    """One request's place: held at once, or waiting for its turn (`await wait()`), until `release()` (or the end of
    its `with` block); releasing twice, or a slot never held, is harmless."""

    def __init__(self, admission: Admission, asker: str, question_id: Any = None) -> None:
        self._admission = admission
        self.asker = asker
        self.question_id = question_id
        self.state = _State.DONE
        self.error: QuestionError | None = None
        self.seq = 0
        """Arrival order among waiters (the longest-waiting asker goes first among equals)."""
        self.waiting_since = 0.0
        self._woken: asyncio.Future[None] | None = None

    @property
    def held(self) -> bool:
        return self.state is _State.HELD

    async def wait(self, deadline: float | None = None) -> None:
        """Return once the slot is held; raise `QuestionError` `busy` when no slot came within `agent.queue_wait_s`
        (or by `deadline`, monotonic, when that is sooner) and `shutdown` when the admission closed meanwhile."""
        if self.state is _State.WAITING:
            assert self._woken is not None
            limit = self.waiting_since + self._admission.queue_wait_s
            if deadline is not None:
                limit = min(limit, deadline)
            try:
                async with asyncio.timeout_at(limit):
                    await self._woken
            except TimeoutError:
                if self.state not in (_State.HELD, _State.REFUSED):  # a slot handed over as the timer fired is kept
                    self._admission._give_up(self)
                    raise self._admission.busy(self.question_id, waited_s=time.monotonic() - self.waiting_since) from None
            except asyncio.CancelledError:
                self.release()
                raise
        if self.state is _State.REFUSED:
            assert self.error is not None
            raise self.error
        if self.state is not _State.HELD:
            raise QuestionError(ErrorType.INTERNAL, "waited on a slot that was released", id=self.question_id)

    def release(self) -> None:
        if self.state is _State.HELD:
            self.state = _State.DONE
            self._admission._leave(self.asker)
        elif self.state is _State.WAITING:
            self._admission._give_up(self)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Admission:
    """Counts the requests in flight and waiting, by asker; see the module docstring for the policy."""

    def __init__(self, max_in_flight: int, *, max_queued_per_asker: int = 0, max_queued: int = 0,
                 queue_wait_s: float = 0.0) -> None:
        """With the defaults nothing waits: past `max_in_flight` a request gets `busy` at once."""
        self.max_in_flight = max_in_flight
        self.max_queued_per_asker = max_queued_per_asker
        self.max_queued = max_queued
        self.queue_wait_s = queue_wait_s
        self.in_flight = 0
        self.by_asker: collections.Counter[str] = collections.Counter()
        """Requests in flight per asker key (only askers with one in flight)."""
        self.waiting = 0
        self._queues: dict[str, collections.deque[Slot]] = {}
        """Waiting requests per asker key, oldest first (only askers with one waiting)."""
        self._arrivals = itertools.count()
        self.closing = False

    @property
    def askers_tracked(self) -> int:
        """Askers with a request in flight or waiting: at most `max_in_flight + max_queued`."""
        return len(self.by_asker.keys() | self._queues.keys())

    def check(self, asker: str, question_id: Any = None) -> QuestionError | None:
        """None when `asker` may start a request now or wait for a slot; else the error to answer with. Call `enter`
        before the next await, so that nothing else is admitted in between."""
        if self.closing:
            return QuestionError(ErrorType.SHUTDOWN, "the agent is shutting down", id=question_id)
        if self.in_flight < self.max_in_flight:
            return None
        if self.queue_wait_s <= 0 or self.max_queued_per_asker <= 0 or self.max_queued <= 0:
            return QuestionError(ErrorType.BUSY, f"{self.in_flight} questions in flight (agent.max_in_flight); ask "
                                 "again shortly", id=question_id)
        mine = len(self._queues.get(asker, ()))
        if mine >= self.max_queued_per_asker:
            return QuestionError(ErrorType.BUSY, f"{self.in_flight} questions in flight (agent.max_in_flight) and "
                                 f"{mine} of this asker's waiting (agent.max_queued_per_asker); ask again shortly",
                                 id=question_id)
        if self.waiting >= self.max_queued:
            return QuestionError(ErrorType.BUSY, f"{self.in_flight} questions in flight (agent.max_in_flight) and "
                                 f"{self.waiting} waiting (agent.max_queued); ask again shortly", id=question_id)
        return None

    def enter(self, asker: str, question_id: Any = None) -> Slot:
        """A slot for a request of `asker`: held now when one is free, else waiting its turn (`await slot.wait()`),
        else refused (`wait` raises what `check` would have said). Waiting needs a running event loop."""
        slot = Slot(self, asker, question_id)
        refused = self.check(asker, question_id)
        if refused is not None:
            slot.state, slot.error = _State.REFUSED, refused
        elif self.in_flight < self.max_in_flight:
            self._hold(slot)
        else:
            slot.state = _State.WAITING
            slot.seq = next(self._arrivals)
            slot.waiting_since = time.monotonic()
            slot._woken = asyncio.get_running_loop().create_future()
            self._queues.setdefault(asker, collections.deque()).append(slot)
            self.waiting += 1
        return slot

    def busy(self, question_id: Any = None, *, waited_s: float) -> QuestionError:
        """The answer to a request whose turn did not come in time."""
        return QuestionError(ErrorType.BUSY, f"no free slot after waiting {waited_s:.1f} s (agent.queue_wait_s = "
                             f"{self.queue_wait_s:g} s; {self.in_flight} in flight, {self.waiting} waiting); ask again "
                             "shortly", id=question_id)

    def close(self) -> None:
        """Admit nothing from now on; every waiting request gets `shutdown`."""
        self.closing = True
        for queue in self._queues.values():
            for slot in queue:
                slot.state = _State.REFUSED
                slot.error = QuestionError(ErrorType.SHUTDOWN, "the agent is shutting down", id=slot.question_id)
                self._wake(slot)
        self._queues.clear()
        self.waiting = 0

    def _hold(self, slot: Slot) -> None:
        slot.state = _State.HELD
        self.in_flight += 1
        self.by_asker[slot.asker] += 1

    def _leave(self, asker: str) -> None:
        self.in_flight -= 1
        self.by_asker[asker] -= 1
        if self.by_asker[asker] <= 0:
            del self.by_asker[asker]
        self._hand_on()

    def _hand_on(self) -> None:
        """Give free slots to waiters: the asker with the fewest in flight first, then the one waiting longest."""
        while self._queues and self.in_flight < self.max_in_flight and not self.closing:
            asker = min(self._queues, key=lambda a: (self.by_asker.get(a, 0), self._queues[a][0].seq))
            slot = self._pop(asker)
            if slot._woken is not None and slot._woken.done():  # its waiter was cancelled and is cleaning up
                slot.state = _State.DONE
                continue
            self._hold(slot)
            self._wake(slot)

    def _give_up(self, slot: Slot) -> None:
        """Take a waiting slot out of its asker's queue."""
        queue = self._queues.get(slot.asker)
        if queue is not None and slot in queue:
            queue.remove(slot)
            self.waiting -= 1
            if not queue:
                del self._queues[slot.asker]
        slot.state = _State.DONE

    def _pop(self, asker: str) -> Slot:
        queue = self._queues[asker]
        slot = queue.popleft()
        self.waiting -= 1
        if not queue:
            del self._queues[asker]
        return slot

    @staticmethod
    def _wake(slot: Slot) -> None:
        if slot._woken is not None and not slot._woken.done():
            slot._woken.set_result(None)
