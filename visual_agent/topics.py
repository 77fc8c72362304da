"""`Topics`: every MQTT topic the daemon uses, built in one place from the prefix (and Home Assistant's settings).

The agent, the Home Assistant discovery and `visual-agent ask` all read their topics here, so a topic is
renamed or added once (docs/VISUAL_AGENT_GUIDE.md, "MQTT contract", lists them; docs/ARCHITECTURE.md says where to add one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Topics", "ha_object_id", "valid_reply_topic"]

_WILDCARDS = "+#\0"


def ha_object_id(name: str) -> str:
    """`name` with what Home Assistant refuses in an object or node id replaced by `_`."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def valid_reply_topic(topic: str | None) -> str | None:
    """`topic` when an answer may be published there (a topic name, no wildcards), else None."""
    if not topic or any(c in topic for c in _WILDCARDS):
        return None
    return topic


@dataclass(frozen=True)
class Topics:
    """The topics under one prefix (`mqtt.prefix`)."""

    prefix: str

    @property
    def ask(self) -> str:
        """Questions in."""
        return f"{self.prefix}/ask"

    @property
    def answer(self) -> str:
        """Answers out (and the page's answers, copied for MQTT listeners)."""
        return f"{self.prefix}/answer"

    @property
    def partial(self) -> str:
        """Streamed pieces of answers."""
        return f"{self.prefix}/answer/partial"

    @property
    def status(self) -> str:
        """Retained online/offline (the last will)."""
        return f"{self.prefix}/status"

    def ask_subscription(self, shared_group: str | None = None) -> str:
        """What the agent subscribes to: `ask`, or its MQTT 5 shared subscription when daemons split questions."""
        return f"$share/{shared_group}/{self.ask}" if shared_group else self.ask

    def source_ask(self, source: str) -> str:
        """Questions about one source: taken by the daemon holding it (several daemons share one broker)."""
        return f"{self.prefix}/{source}/ask"

    def source_ask_subscription(self, source: str, shared_group: str | None = None) -> str:
        """What a daemon holding `source` subscribes to: `source_ask`, shared among replicas with a group."""
        topic = self.source_ask(source)
        return f"$share/{shared_group}/{topic}" if shared_group else topic

    def source_of_ask(self, topic: str) -> str | None:
        """The source of a `<prefix>/<source>/ask` topic, or None for any other topic (`<prefix>/ask` included)."""
        head, tail = f"{self.prefix}/", "/ask"
        if not (topic.startswith(head) and topic.endswith(tail)):
            return None
        source = topic[len(head):-len(tail)]
        return source if source and "/" not in source and not any(c in source for c in _WILDCARDS) else None

    def reply(self, client_id: str) -> str:
        """The response topic of an MQTT 5 asker (`visual-agent ask`)."""
        return f"{self.prefix}/reply/{client_id}"

    def description(self, source: str) -> str:
        """Periodic and scene-change descriptions of `source`."""
        return f"{self.prefix}/{source}/description"

    def state(self, source: str) -> str:
        """Retained last answer of `source` (the Home Assistant sensor's state)."""
        return f"{self.prefix}/{source}/state"

    def description_ha_event(self, source: str) -> str:
        """Each description of `source` in Home Assistant's event shape (`{"event_type", ...}`: its event entity)."""
        return f"{self.description(source)}/ha"

    def ha_discovery(self, discovery_prefix: str, node_id: str, source: str) -> str:
        """Home Assistant's discovery config topic of the sensor of `source`."""
        return f"{discovery_prefix}/sensor/{node_id}/{ha_object_id(source)}/config"

    @property
    def rules_set(self) -> str:
        """Retained JSON list of standing questions (rules) in."""
        return f"{self.prefix}/rules/set"

    @property
    def rules_error(self) -> str:
        """Why a rule set on `rules_set` was refused."""
        return f"{self.prefix}/rules/error"

    def rule(self, source: str, name: str) -> str:
        """Retained state JSON of rule `name` on `source`."""
        return f"{self.prefix}/{source}/rules/{name}"

    def rule_event(self, source: str, name: str) -> str:
        """A rule's state changes."""
        return f"{self.rule(source, name)}/event"

    def rule_ha_event(self, source: str, name: str) -> str:
        """A rule's state changes in Home Assistant's event shape (`{"event_type": "on"|"off", ...}`)."""
        return f"{self.rule_event(source, name)}/ha"

    def rule_evidence(self, source: str, name: str) -> str:
        """Retained JPEG of the frame that last turned the rule on."""
        return f"{self.rule(source, name)}/evidence"

    def rule_lookback(self, source: str, name: str) -> str:
        """Retained JPEG strip of the source's look-back thumbnails before the rule last turned on."""
        return f"{self.rule(source, name)}/evidence/lookback"

    @property
    def events_query(self) -> str:
        """Event-store queries in (the filters of `GET /events`, MQTT request/response)."""
        return f"{self.prefix}/events/query"

    @property
    def events_result(self) -> str:
        """Answers to event queries that named no response topic (MQTT 3.1.1), or a forbidden one."""
        return f"{self.prefix}/events/result"

    def ha_component(self, discovery_prefix: str, component: str, node_id: str, object_id: str) -> str:
        """Home Assistant's discovery config topic of one entity (`binary_sensor`, `image`, ...)."""
        return f"{discovery_prefix}/{component}/{node_id}/{ha_object_id(object_id)}/config"

    def as_dict(self) -> dict[str, str]:
        """The fixed topics by name (`ask`, `answer`, `partial`, `status`)."""
        return {"ask": self.ask, "answer": self.answer, "partial": self.partial, "status": self.status}

