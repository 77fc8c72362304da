"""`RuleEngine`: watches each source that has rules, asks each rule's yes/no question when it is due, and publishes
state, events and evidence.

One task per watched source (`rules-watch:<source>`): it waits for a new frame, and when a rule is due
(`check_every_s`) takes that one frame for every due rule, so they share one encoding (`FrameEncoding` encodes a
frame once for all questions on it). Per due rule:
1. `only_on_change`: when the picture's grey thumbnail is within `agent.scene_change.threshold` of the frame of the
   rule's last model check and the rule is settled (its last answer agrees with its state), the model is skipped
   (`skipped_unchanged`; the state is still published every `state_refresh_s`, for its counters and the page);
2. the source's `CallBudget` (`agent.rule_calls_per_minute`): when spent, the check waits for its next turn
   (`budget_degraded`; the state JSON says `degraded: true`);
3. the model is asked for a structured answer (`answer.py`) through the agent's `complete`, like any question:
   admitted as asker `rules` (refused `busy` when the agent has `agent.max_in_flight` requests in flight: the
   check waits its next turn, counted in `busy`), by the agent's deadline, fitted to the context, counted in the
   metrics and traces as `via="rule"`; an unparsable answer counts as neither (`unparsable`);
4. `RuleState` applies hysteresis and cooldown; a change publishes an event, and an `on` the evidence JPEG and the
   look-back strip (from the agent's `LookbackStore`, which keeps each source's longest rule `lookback_s`); the
   change goes to the agent's event observers too (`interfaces.RuleChange`).
Checks of one source run together and the next round waits for them, so one source never has more than one round
of model calls in flight. Rules come from the config and from `<prefix>/rules/set` (see `control.py`); the
MQTT set replaces the earlier MQTT set, config rules stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ErrorType, QuestionError
from ..interfaces import AgentEvent, EventKind, RuleChange
from ..model_call import ModelRequest
from ..sampling import TakenFrame, thumbnail, thumbnail_distance
from ..tasks import cancel_and_wait
from ..telemetry import Via
from ..topics import Topics
from .answer import RULE_SYSTEM_PROMPT, parse_answer, structured_options
from .budget import CallBudget
from .config import DEFAULT_RULE_CALLS_PER_MINUTE, MAX_RULES, RuleConfig, RuleSetError, check_rule_set
from .follow import NewFrames
from .lookback import Thumbnail, contact_sheet
from .state import OnOff, RuleState, Transition

if TYPE_CHECKING:
    from ..agent import VisualAgent
    from .homeassistant import RuleDiscovery

__all__ = ["DEFAULT_RULE_CALLS_PER_MINUTE", "STATE_REFRESH_S", "RuleEngine", "RuleRuntime"]

logger = logging.getLogger(__name__)

_FRAME_WAIT_S = 1.0
_NO_SOURCE_RETRY_S = 1.0
_EVIDENCE_MAX_SIDE = 640
STATE_REFRESH_S = 10.0
"""A rule whose checks are skipped publishes its state (counters, the page's list) at least this often."""
_CHECK_MAX_TOKENS = 192
"""Room for the JSON with a reason of `REASON_MAX_CHARS` (a weak model spends a token per character)."""


@dataclass
class RuleRuntime:
    """One rule while it is watched: its config, its state machine, its counters and last answer."""

    config: RuleConfig
    origin: str
    """`config` or `mqtt`."""
    state: RuleState
    since_wall: float = field(default_factory=time.time)
    checks: int = 0
    skipped_unchanged: int = 0
    unparsable: int = 0
    errors: int = 0
    busy: int = 0
    """Checks skipped because the agent had `agent.max_in_flight` requests in flight."""
    budget_degraded: int = 0
    degraded: bool = False
    last_check_at: float = float("-inf")
    reference: np.ndarray | None = None
    """Grey thumbnail of the frame of the last model check (the change gate compares with it)."""
    answer: bool | None = None
    reason: str = ""
    since_reason: str = ""
    """The reason of the check that turned the rule to its state: a rule held `on` by its hysteresis while the newest
    check says no shows why it is on, with the newest answer beside it."""
    error: str | None = None
    frames: list[dict[str, Any]] = field(default_factory=list)
    model: str | None = None
    last_model_s: float | None = None
    published_at: float = float("-inf")

    def payload(self, budget: CallBudget | None, now: float) -> dict[str, Any]:
        """The retained state JSON."""
        cfg = self.config
        return {
            "rule": cfg.name, "source": cfg.source, "question": cfg.question,
            "state": self.state.state.value, "since": round(self.since_wall, 3),
            "answer": self.answer, "reason": self.reason, "since_reason": self.since_reason, "error": self.error,
            "frames": self.frames, "model": self.model,
            "checks": self.checks, "skipped_unchanged": self.skipped_unchanged, "unparsable": self.unparsable,
            "errors": self.errors, "busy": self.busy, "budget_degraded": self.budget_degraded, "degraded": self.degraded,
            "calls_per_minute": budget.calls_per_minute if budget else None,
            "calls_last_minute": budget.used(now) if budget else 0,
            "origin": self.origin,
        }


class RuleEngine:
    """The rules of one agent; `await start()`, `await set_rules(...)`, `await close()` (safe twice)."""

    def __init__(
        self,
        agent: VisualAgent,
        rules: list[RuleConfig] | None = None,
        *,
        calls_per_minute: int = DEFAULT_RULE_CALLS_PER_MINUTE,
        change_threshold: float | None = None,
        discovery: RuleDiscovery | None = None,
        max_rules: int = MAX_RULES,
        state_refresh_s: float = STATE_REFRESH_S,
    ) -> None:
        self.agent = agent
        self.publisher = agent.messager
        self.topics = Topics(agent.prefix)
        self.calls_per_minute = calls_per_minute
        self.change_threshold = agent.config.scene_change.threshold if change_threshold is None else change_threshold
        self.discovery = discovery
        self.max_rules = max_rules
        self.state_refresh_s = state_refresh_s
        self.counters: dict[str, int] = {"checks": 0, "skipped_unchanged": 0, "unparsable": 0, "budget_degraded": 0,
                                         "errors": 0, "busy": 0, "events": 0, "rule_sets": 0, "rule_sets_refused": 0}
        self.on_state: list[Any] = []
        """Called with (source, state JSON) after each publish (the page's live list uses it)."""
        self._rules: dict[str, RuleRuntime] = {}
        self._budgets: dict[str, CallBudget] = {}
        self.lookbacks = agent.lookbacks
        """The agent's per-source look-back store: the rules say how long each of their sources keeps."""
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._initial = check_rule_set(list(rules or []), max_rules=max_rules)
        self._lock = asyncio.Lock()
        self._started = False
        self._closed = False

    # --- rule sets ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Watch the config's rules and publish their state."""
        self._started = True
        await self._apply(self._initial, origin="config")

    async def set_rules(self, rules: list[RuleConfig], *, origin: str = "mqtt") -> None:
        """Replace the rules of `origin` (the MQTT set replaces the earlier MQTT set; config rules stay).

        RuleSetError when the whole set would exceed the limit or reuse a name of the other origin; nothing is applied then.
        """
        await self._apply(rules, origin=origin)

    async def _apply(self, rules: list[RuleConfig], *, origin: str) -> None:
        async with self._lock:
            others = [r.config for r in self._rules.values() if r.origin != origin]
            clash = {r.name for r in rules} & {r.name for r in others}
            if clash:
                raise RuleSetError(f"rule name(s) {sorted(clash)} are already used by {'config' if origin == 'mqtt' else 'mqtt'} rules")
            check_rule_set(others + list(rules), max_rules=self.max_rules)
            wanted = {r.name: r for r in rules}
            for name, runtime in list(self._rules.items()):
                if runtime.origin == origin and (name not in wanted or wanted[name] != runtime.config):
                    await self._remove(runtime)
            now = time.monotonic()
            for rule in rules:
                if rule.name in self._rules:
                    continue  # unchanged: keeps its state
                runtime = RuleRuntime(rule, origin, RuleState(rule.on_after, rule.off_after, rule.cooldown_s, since=now))
                self._rules[rule.name] = runtime
                if self.discovery is not None:
                    await self.discovery.announce(rule)
                await self._publish_state(runtime)
            self._rewatch()
            logger.info("rules: %d watched (%s)", len(self._rules), ", ".join(sorted(self._rules)) or "none")

    async def _remove(self, runtime: RuleRuntime) -> None:
        """Forget a rule and clear its retained topics (the broker keeps nothing of removed rules)."""
        del self._rules[runtime.config.name]
        cfg = self.topics
        if self.publisher is not None:
            for topic in (cfg.rule(runtime.config.source, runtime.config.name),
                          cfg.rule_evidence(runtime.config.source, runtime.config.name),
                          cfg.rule_lookback(runtime.config.source, runtime.config.name)):
                await self.publisher.publish(topic, b"", retain=True)
        if self.discovery is not None:
            await self.discovery.remove(runtime.config)

    def _rewatch(self) -> None:
        """One watcher per source with rules; sources without rules lose their watcher, budget and look-back
        (unless `agent.lookback_s` keeps one for questions)."""
        if not self._started or self._closed:
            return
        sources = {r.config.source for r in self._rules.values()}
        for source in list(self._watchers):
            if source not in sources:
                self._watchers.pop(source).cancel()
                self._budgets.pop(source, None)
        self.lookbacks.need("rules", {source: max(r.config.lookback_s for r in self.rules(source)) for source in sources})
        for source in sources:
            self._budgets.setdefault(source, CallBudget(self.calls_per_minute))
            task = self._watchers.get(source)
            if task is None or task.done():
                self._watchers[source] = asyncio.get_running_loop().create_task(self._watch(source),
                                                                                name=f"rules-watch:{source}")

    def rules(self, source: str | None = None) -> list[RuleRuntime]:
        """The watched rules (of `source`)."""
        return [r for r in self._rules.values() if source is None or r.config.source == source]

    # --- watching -------------------------------------------------------------------------------------

    async def _watch(self, source: str) -> None:
        frames = NewFrames(lambda: self.agent.driver, source, wait_s=_FRAME_WAIT_S, missing_retry_s=_NO_SOURCE_RETRY_S)
        while True:
            entry = await frames.next()
            if entry is None:
                continue
            now = time.monotonic()
            rules = sorted(self.rules(source), key=lambda r: r.last_check_at)
            due = [r for r in rules if now - r.last_check_at >= r.config.check_every_s]
            if due:
                try:
                    await self._round(source, entry, due, now)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("rules: a check round on %s failed", source)
            next_due = min((r.last_check_at + r.config.check_every_s for r in self.rules(source)), default=now + 1)
            pause = next_due - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)

    async def _round(self, source: str, entry: Any, due: list[RuleRuntime], now: float) -> None:
        frame = entry.frame
        grey = await asyncio.to_thread(thumbnail, frame)
        taken = TakenFrame(frame, entry.pts, max(0.0, now - entry.received_at), entry.seq)
        budget = self._budgets.setdefault(source, CallBudget(self.calls_per_minute))
        checks = []
        for rule in due:
            rule.last_check_at = now
            if (rule.config.only_on_change and rule.reference is not None and rule.state.settled
                    and thumbnail_distance(rule.reference, grey) < self.change_threshold):
                rule.skipped_unchanged += 1
                self.counters["skipped_unchanged"] += 1
                if now - rule.published_at >= self.state_refresh_s:
                    await self._publish_state(rule)
                continue
            if not budget.take(now):
                rule.budget_degraded += 1
                self.counters["budget_degraded"] += 1
                if not rule.degraded:
                    rule.degraded = True
                    logger.warning("rules: %s on %s waits: the source's budget of %d model calls a minute is spent "
                                   "(agent.rule_calls_per_minute)", rule.config.name, source, budget.calls_per_minute)
                    await self._publish_state(rule)
                continue
            rule.degraded = False
            checks.append(self._check(rule, source, taken, entry, grey))
        if checks:
            await asyncio.gather(*checks)

    async def _check(self, rule: RuleRuntime, source: str, taken: TakenFrame, entry: Any, grey: np.ndarray) -> None:
        agent = self.agent
        answer: bool | None = None
        request = ModelRequest(prompt=rule.config.question, via=Via.RULE, asker="rules", source=source, frames=[taken],
                               system_prompt=RULE_SYSTEM_PROMPT,
                               options={"max_tokens": _CHECK_MAX_TOKENS, **structured_options(agent.llm)})
        try:
            response = await agent.complete(request)  # admission, deadline, context budget, telemetry
        except QuestionError as exc:
            rule.error = exc.message
            if exc.type is ErrorType.BUSY:  # the agent is answering enough already: this check waits its next turn
                rule.busy += 1
                self.counters["busy"] += 1
                logger.info("rules: %s on %s: skipped, the agent is busy", rule.config.name, source)
                return
            rule.errors += 1
            self.counters["errors"] += 1
            logger.warning("rules: %s on %s: check failed: %s", rule.config.name, source, rule.error)
        else:
            rule.last_model_s = response.model_s
            answer, rule.reason = parse_answer(response.text)
            rule.model = response.model or agent.llm.model
            rule.error = None
            if answer is None:
                rule.unparsable += 1
                self.counters["unparsable"] += 1
                rule.error = "unparsable answer"
                logger.info("rules: %s on %s: unparsable answer %r", rule.config.name, source, response.text[:120])
        rule.checks += 1
        self.counters["checks"] += 1
        if answer is not None:
            rule.answer = answer
            rule.reference = grey  # the change gate compares with the last frame that got an answer
        rule.frames = [{"pts": taken.pts, "age_s": round(taken.age_s, 3)}]
        change = rule.state.observe(answer, time.monotonic())
        if change is not None:
            rule.since_wall = time.time()
            rule.since_reason = rule.reason
        await self._publish_state(rule)
        if change is not None:
            await self._publish_event(rule, change, entry, taken)

    # --- publishing -----------------------------------------------------------------------------------

    async def _publish_state(self, rule: RuleRuntime) -> None:
        now = rule.published_at = time.monotonic()
        payload = rule.payload(self._budgets.get(rule.config.source), now)
        if self.publisher is not None:
            await self.publisher.publish(self.topics.rule(rule.config.source, rule.config.name),
                                         json.dumps(payload), retain=True)
        for hook in list(self.on_state):
            with contextlib.suppress(Exception):
                result = hook(rule.config.source, payload)
                if asyncio.iscoroutine(result):
                    await result

    async def _publish_event(self, rule: RuleRuntime, change: Transition, entry: Any, taken: TakenFrame) -> None:
        """The event JSON; on `on` the evidence JPEG and the look-back strip (retained); then the agent's observers."""
        self.counters["events"] += 1
        cfg = rule.config
        logger.info("rules: %s on %s turned %s (%s)", cfg.name, cfg.source, change.state.value, rule.reason)
        lookback = self.lookbacks.get(cfg.source)
        before = lookback.before(entry.received_at, cfg.lookback_s) if lookback is not None else []
        event = {
            "rule": cfg.name, "source": cfg.source, "state": change.state.value, "previous": change.previous.value,
            "since": round(rule.since_wall, 3), "answer": rule.answer, "reason": rule.reason, "frames": rule.frames,
            "model": rule.model, "checks": rule.checks, "model_s": None if rule.last_model_s is None else round(rule.last_model_s, 4),
            "lookback": [{"pts": t.pts, "age_s": round(max(0.0, time.monotonic() - t.received_at), 3)} for t in before],
        }
        sheet = None
        if change.state is OnOff.ON and self.publisher is not None:
            evidence, sheet = await asyncio.to_thread(_evidence, entry.frame, before)
            await self.publisher.publish(self.topics.rule_evidence(cfg.source, cfg.name), evidence, retain=True)
            if sheet is not None:
                await self.publisher.publish(self.topics.rule_lookback(cfg.source, cfg.name), sheet, retain=True)
        elif change.state is OnOff.ON and before:
            sheet = await asyncio.to_thread(contact_sheet, before)
        if self.publisher is not None:
            await self.publisher.publish(self.topics.rule_event(cfg.source, cfg.name), json.dumps(event))
        await self.agent.notify(AgentEvent(
            EventKind.RULE, Via.RULE, cfg.source, frames=(taken,),
            rule=RuleChange(rule=cfg.name, question=cfg.question, state=change.state.value,
                            previous=change.previous.value, answer=rule.answer, reason=rule.reason, evidence=taken,
                            lookback_jpeg=sheet)))

    # --- state for /healthz, metrics and the page -----------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Plain counters (checks, skipped_unchanged, unparsable, budget_degraded, errors, events, rule sets)."""
        return {**self.counters, "rules": len(self._rules)}

    def describe(self) -> dict[str, Any]:
        """/healthz: counters, and per source its rules' states, the budget and the look-back held."""
        now = time.monotonic()
        sources: dict[str, Any] = {}
        for source in sorted({r.config.source for r in self._rules.values()}):
            budget = self._budgets.get(source)
            lookback = self.lookbacks.get(source)
            sources[source] = {
                "rules": {r.config.name: r.state.state.value for r in self.rules(source)},
                "calls_last_minute": budget.used(now) if budget else 0,
                "degraded": any(r.degraded for r in self.rules(source)),
                "lookback_thumbnails": len(lookback) if lookback else 0,
                "lookback_bytes": lookback.nbytes() if lookback else 0,
            }
        return {"counters": self.stats(), "sources": sources}

    def states(self, source: str) -> list[dict[str, Any]]:
        """The state JSON of each rule of `source` (the page lists them)."""
        now = time.monotonic()
        return [r.payload(self._budgets.get(source), now) for r in self.rules(source)]

    async def close(self) -> None:
        """Stop watching. Safe twice."""
        if self._closed:
            return
        self._closed = True
        self.lookbacks.need("rules", {})
        tasks = list(self._watchers.values())
        self._watchers.clear()
        await cancel_and_wait(*tasks)


def _evidence(frame: Any, before: list[Thumbnail]) -> tuple[bytes, bytes | None]:
    """The evidence JPEG of the frame that turned a rule on, and the look-back strip (worker thread)."""
    from encoders import JpegEncoder

    return JpegEncoder(max_side=_EVIDENCE_MAX_SIDE, quality=85).encode(frame), contact_sheet(before)
