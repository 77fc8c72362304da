"""The console's rule editing (`/api/rules...`) and each rule's newest evidence (`EvidenceStore`).

One source of truth: the page edits the same rule set as `<prefix>/rules/set`. A change is checked with the same
parser (`rules.parse_rule_set`, so the page shows the same error messages), applied to the engine at once, and, when
MQTT is on, published retained on `<prefix>/rules/set`, where it survives a restart and every other client sees it
(the daemon then takes its own set again, which changes nothing). Without MQTT the page's set lives until the daemon
stops. Rules from the config file are shown but not edited here: the file is theirs.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import web

from ..http_body import BodyError, read_body
from ..interfaces import AgentEvent, EventKind
from ..rules import RuleSetError, parse_rule_set
from ..rules.config import MAX_RULES_PAYLOAD_BYTES
from ..topics import Topics

if TYPE_CHECKING:
    from ..host import DaemonHost

__all__ = ["EVIDENCE_MAX_SIDE", "EvidenceStore", "RulesApi"]

EVIDENCE_MAX_SIDE = 640
"""Longest side of a rule's evidence picture, as the rule engine publishes it."""


class EvidenceStore:
    """The newest `on` evidence JPEG and look-back strip of each rule (bounded by the rule count: a removed rule's
    evidence goes at the next event)."""

    def __init__(self, daemon: DaemonHost) -> None:
        self.daemon = daemon
        self._by_rule: dict[str, tuple[float, bytes, bytes | None]] = {}

    async def observe(self, event: AgentEvent) -> None:
        """The agent's event observer: a rule that turned on leaves its frame (as JPEG, made in a worker thread)
        and the look-back strip."""
        change = event.rule
        if event.kind is not EventKind.RULE or change is None or change.state != "on":
            return
        jpeg = await asyncio.to_thread(_evidence_jpeg, change.evidence.frame)
        self._by_rule[change.rule] = (event.at, jpeg, change.lookback_jpeg)
        engine = self.daemon.rules
        if engine is not None:  # a removed rule's evidence goes
            names = {r.config.name for r in engine.rules()}
            for name in [n for n in self._by_rule if n not in names]:
                del self._by_rule[name]

    def urls(self, rule: str) -> dict[str, Any]:
        """What the page needs to show a rule's evidence: its URLs (None before the first `on`) and when."""
        kept = self._by_rule.get(rule)
        if kept is None:
            return {"evidence": None, "lookback": None, "evidence_at": None}
        at, _, sheet = kept
        base = f"api/rules/{quote(rule, safe='')}"
        stamp = int(at * 1000)  # a new `on` is a new URL: the page's cache never shows an older one
        return {"evidence": f"{base}/evidence.jpg?at={stamp}",
                "lookback": f"{base}/lookback.jpg?at={stamp}" if sheet is not None else None,
                "evidence_at": round(at, 3)}

    def jpeg(self, rule: str, which: str) -> bytes | None:
        kept = self._by_rule.get(rule)
        if kept is None:
            return None
        return kept[1] if which == "evidence" else kept[2]


class RulesApi:
    """`GET /api/rules`, `PUT /api/rules/{name}`, `DELETE /api/rules/{name}` and the evidence images."""

    def __init__(self, daemon: DaemonHost, evidence: EvidenceStore) -> None:
        self.daemon = daemon
        self.evidence = evidence
        self._lock = asyncio.Lock()  # edits are read-modify-write of the whole set: one at a time

    def routes(self) -> list[tuple[str, str, Any]]:
        return [
            ("GET", "/api/rules", self.list_rules),
            ("PUT", "/api/rules/{name}", self.put),
            ("DELETE", "/api/rules/{name}", self.delete),
            ("GET", "/api/rules/{name}/evidence.jpg", self.image),
            ("GET", "/api/rules/{name}/lookback.jpg", self.image),
        ]

    def _editable(self) -> list[dict[str, Any]]:
        engine = self.daemon.rules
        return [r.config.model_dump() for r in engine.rules() if r.origin == "mqtt"] if engine is not None else []

    async def list_rules(self, request: web.Request) -> web.StreamResponse:
        engine = self.daemon.rules
        fixed = [r.config.model_dump() for r in engine.rules() if r.origin != "mqtt"] if engine is not None else []
        return web.json_response({"rules": self._editable(), "config_rules": fixed,
                                  "source_of_truth": "mqtt" if self.daemon.messager is not None else "memory"})

    async def put(self, request: web.Request) -> web.StreamResponse:
        """Create or replace one rule; the body is the rule's JSON (its `name` may be left out)."""
        name = request.match_info["name"]
        try:
            body = await read_body(request, max_bytes=MAX_RULES_PAYLOAD_BYTES,
                                   timeout_s=self.daemon.config.webrtc.body_timeout_s)
        except BodyError as exc:
            return _error(exc.status, f"the rule's {exc}" if exc.status == 413 else str(exc))
        try:
            rule = json.loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            return _error(400, f"not a JSON rule: {exc}")
        if not isinstance(rule, dict):
            return _error(400, f"expected a JSON object (one rule), got {type(rule).__name__}")
        rule.setdefault("name", name)
        if rule["name"] != name:
            return _error(400, f"the rule's name {str(rule['name'])[:64]!r} differs from the URL's {name[:64]!r}")
        async with self._lock:
            rules = [r for r in self._editable() if r["name"] != name] + [rule]
            return await self._apply(rules)

    async def delete(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        async with self._lock:
            rules = self._editable()
            if not any(r["name"] == name for r in rules):
                engine = self.daemon.rules
                if engine is not None and any(r.config.name == name for r in engine.rules()):
                    return _error(409, f"rule {name!r} comes from the config file; remove it there")
                return _error(404, f"no rule {name[:64]!r}")
            return await self._apply([r for r in rules if r["name"] != name])

    async def _apply(self, rules: list[dict[str, Any]]) -> web.StreamResponse:
        engine = self.daemon.rules
        if engine is None:
            return _error(503, "the rule engine is not running yet; try again in a moment")
        payload = json.dumps(rules)
        try:  # the same parser and engine checks as <prefix>/rules/set, so the same messages
            parsed = parse_rule_set(payload, max_rules=engine.max_rules)
            await engine.set_rules(parsed, origin="mqtt")
        except RuleSetError as exc:
            return _error(400, str(exc))
        messager = self.daemon.messager
        if messager is not None:  # the retained set is the source of truth: it survives a restart
            await messager.publish(Topics(self.daemon.config.mqtt.prefix).rules_set, payload, retain=True)
        return web.json_response({"rules": [r.model_dump() for r in parsed]})

    async def image(self, request: web.Request) -> web.StreamResponse:
        which = "evidence" if request.path.endswith("/evidence.jpg") else "lookback"
        jpeg = self.evidence.jpeg(request.match_info["name"], which)
        if jpeg is None:
            return _error(404, f"no {which} yet: it is kept when the rule turns on")
        return web.Response(body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


def _evidence_jpeg(frame: Any) -> bytes:
    from encoders import JpegEncoder

    jpeg: bytes = JpegEncoder(max_side=EVIDENCE_MAX_SIDE, quality=85).encode(frame)
    return jpeg


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
