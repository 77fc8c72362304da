"""`RuleState`: one rule's on/off state with hysteresis and cooldown, fed one answer at a time (no I/O, no clock).

- `on_after` consecutive yes answers turn it on, `off_after` consecutive no answers turn it off;
- an unparsable or failed answer (None) is neither: it neither extends nor breaks a streak (counted apart);
- an `on` within `cooldown_s` of the last `on` waits: the rule stays off until the cooldown has passed and the yes
  streak still holds, so a flickering scene gives at most one `on` per cooldown;
- `settled` says whether the last answer agrees with the state, so the change gate may skip the model only when a
  repeated answer could change nothing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["OnOff", "RuleState", "Transition"]


class OnOff(str, enum.Enum):
    ON = "on"
    OFF = "off"


@dataclass(frozen=True, slots=True)
class Transition:
    """A state change: from `previous` to `state` at `at` (the time given to `observe`)."""

    previous: OnOff
    state: OnOff
    at: float


class RuleState:
    """Hysteresis and cooldown of one rule; times are whatever clock the caller uses (monotonic seconds)."""

    def __init__(self, on_after: int, off_after: int, cooldown_s: float, *, since: float = 0.0) -> None:
        self.on_after = on_after
        self.off_after = off_after
        self.cooldown_s = cooldown_s
        self.state = OnOff.OFF
        self.since = since
        self.yes_streak = 0
        self.no_streak = 0
        self.last_answer: bool | None = None
        self.last_on: float | None = None
        self.cooling_down = False
        """True while a yes streak long enough to turn on waits for the cooldown."""

    def observe(self, answer: bool | None, now: float) -> Transition | None:
        """Take one answer (True yes, False no, None neither); the transition it causes, if any."""
        if answer is None:
            return None
        self.last_answer = answer
        if answer:
            self.yes_streak += 1
            self.no_streak = 0
        else:
            self.no_streak += 1
            self.yes_streak = 0
        self.cooling_down = False
        if self.state is OnOff.OFF and self.yes_streak >= self.on_after:
            if self.last_on is not None and now - self.last_on < self.cooldown_s:
                self.cooling_down = True
                return None
            self.last_on = now
            return self._go(OnOff.ON, now)
        if self.state is OnOff.ON and self.no_streak >= self.off_after:
            return self._go(OnOff.OFF, now)
        return None

    def _go(self, state: OnOff, now: float) -> Transition:
        change = Transition(self.state, state, now)
        self.state, self.since = state, now
        return change

    @property
    def settled(self) -> bool:
        """The last answer agrees with the state and no cooldown waits: asking again on an unchanged picture
        could not change anything."""
        if self.cooling_down or self.last_answer is None:
            return False
        return self.last_answer == (self.state is OnOff.ON)
