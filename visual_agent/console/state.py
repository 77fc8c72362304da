"""The console's state at a glance (`GET /api/state`): the daemon, the LLM, the broker, the event store, the token, every source
with its publisher, and every rule with its live state, in one small JSON document the page polls about once a
second.

It is read from the same objects as `/healthz` (the daemon's `health()`), trimmed to what the page shows, so the
two never disagree; nothing here does I/O or blocks.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from ..host import DaemonHost

__all__ = ["console_state", "source_states"]


def console_state(daemon: DaemonHost, *, evidence: Any = None, llm_watch: Any = None) -> dict[str, Any]:
    """The document of `GET /api/state`; `evidence` (an `EvidenceStore`) adds each rule's evidence URLs, `llm_watch`
    (an `LlmWatch`) the newest probe of the LLM."""
    driver = daemon.driver
    health = driver.health(detail=True) if driver is not None else {"status": "starting"}
    return {
        "at": round(time.time(), 3),
        "daemon": {"status": health.get("status"), "uptime_s": health.get("uptime_s"), "version": _version()},
        "token": {"required": bool(driver is not None and driver.config.auth_token)},
        "llm": _llm(daemon, llm_watch.latest if llm_watch is not None else None),
        "broker": _broker(daemon),
        "storage": _storage(daemon),
        "sources": source_states(health),
        "rules": _rules(daemon, evidence),
    }


def source_states(health: dict[str, Any]) -> list[dict[str, Any]]:
    """Each source of `/healthz` with what its tile shows: rate, newest-frame age, size, and its publisher."""
    publishers = {p["source"]: p for p in health.get("peers", [])}
    out = []
    for name, s in health.get("sources", {}).items():
        peer = publishers.get(name)
        if peer is not None:
            publisher = {"kind": peer["kind"], "state": peer["state"], "peer_id": peer["id"], "age_s": peer["age_s"]}
        elif s.get("kind") == "peer":
            publisher = {"kind": "peer", "state": "gone"}
        else:
            publisher = {"kind": s.get("kind"), "state": "running" if s.get("running") else "stopped",
                         "error": s.get("error")}
        out.append({
            "name": name, "state": s.get("state"), "fps": s.get("fps"), "newest_age_s": s.get("newest_age_s"),
            "width": s.get("width"), "height": s.get("height"), "received": s.get("received"),
            "last_error": s.get("last_error"), "publisher": publisher,
            "snapshot": f"sources/{quote(name, safe='')}.jpg",
        })
    return out


def _llm(daemon: DaemonHost, probe: dict[str, Any] | None) -> dict[str, Any]:
    state = dict(daemon.llm_state)
    if probe is not None and daemon.llm_state.get("state") != "unknown":  # the newest probe wins over the start's
        state = {**state, **probe} if probe["state"] == "unreachable" else {**state, "state": "ok", "detail": None}
    agent = daemon.agent.describe_state() if daemon.agent is not None else {}
    return {
        "provider": daemon.config.provider_name(),
        "state": state.get("state", "unknown"),
        "reachable": {"ok": True, "unreachable": False}.get(state.get("state", "unknown")),
        "model": getattr(daemon.llm, "model", None) or getattr(daemon.config.llm.config, "model_name", None),
        "models": state.get("models"),
        "detail": state.get("detail"),
        "last_error": agent.get("last_error"),
        "in_flight": agent.get("in_flight"),
    }


def _broker(daemon: DaemonHost) -> dict[str, Any]:
    messager = daemon.messager
    if messager is None:
        return {"state": "disabled"}
    d = messager.describe()
    return {"state": d["state"], "broker": d["broker"], "embedded": daemon.broker is not None,
            "outbox": d["outbox"], "outbox_max": d["outbox_max"], "last_error": d["last_error"]}


def _storage(daemon: DaemonHost) -> dict[str, Any]:
    """The event store's state (the timeline's source): ok, failing, unavailable or disabled, and its size."""
    h = daemon.memory.health()
    return {"state": h.get("state"), "used_mb": h.get("used_mb"), "error": h.get("error") or h.get("last_error")}


def _rules(daemon: DaemonHost, evidence: Any) -> dict[str, Any]:
    engine = daemon.rules
    if engine is None:
        return {"items": [], "editable": False, "source_of_truth": None}
    configs = {r.config.name: r.config for r in engine.rules()}
    items = []
    for source in sorted({c.source for c in configs.values()}):
        for payload in engine.states(source):
            payload["editable"] = payload.get("origin") == "mqtt"
            payload["config"] = configs[payload["rule"]].model_dump()
            if evidence is not None:
                payload.update(evidence.urls(payload["rule"]))
            items.append(payload)
    return {"items": items, "editable": True,
            "source_of_truth": "mqtt" if daemon.messager is not None else "memory"}


def _version() -> str | None:
    try:
        from importlib.metadata import version

        return version("visual-agent")
    except Exception:
        return None
