"""Home Assistant discovery for rules: a `binary_sensor` per rule (on/off from its retained state JSON, the JSON
as attributes), an `image` entity showing its evidence JPEG, and an `event` entity (Home Assistant's MQTT event
platform, `event_types` on/off) whose events are the rule's state changes, published on
`<prefix>/<source>/rules/<name>/event/ha` as `{"event_type": "on"|"off", "rule", "reason", ...}` (not retained: an
event happens once), so Home Assistant's logbook shows each change with its reason. A removed rule's configs are
cleared (an empty retained payload), so Home Assistant drops its entities and the broker keeps no stale retained
topics. Discovery is sent again after each reconnect, as Home Assistant expects after a broker restart.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from ..homeassistant import ha_device
from ..interfaces import AgentEvent, EventKind
from ..topics import Topics, ha_object_id
from .config import RuleConfig

if TYPE_CHECKING:
    from ..config import HomeAssistantConfig

__all__ = ["RuleDiscovery"]

logger = logging.getLogger(__name__)


class RuleDiscovery:
    """Publishes and clears the discovery configs of rules through a messager (`publish`, `on_connected`)."""

    def __init__(self, messager: Any, prefix: str, config: HomeAssistantConfig, *, version: str = "0.1.0") -> None:
        self.messager = messager
        self.prefix = prefix
        self.config = config
        self.topics = Topics(prefix)
        self.node_id = ha_object_id(config.node_id or prefix)
        self.version = version
        self._announced: dict[str, RuleConfig] = {}
        hooks = getattr(messager, "on_connected", None)
        if isinstance(hooks, list):
            hooks.append(self._reannounce)

    def object_id(self, rule: RuleConfig) -> str:
        return ha_object_id(f"{rule.source}_{rule.name}")

    def sensor_topic(self, rule: RuleConfig) -> str:
        return self.topics.ha_component(self.config.discovery_prefix, "binary_sensor", self.node_id, self.object_id(rule))

    def image_topic(self, rule: RuleConfig) -> str:
        return self.topics.ha_component(self.config.discovery_prefix, "image", self.node_id,
                                        self.object_id(rule) + "_evidence")

    def event_topic(self, rule: RuleConfig) -> str:
        return self.topics.ha_component(self.config.discovery_prefix, "event", self.node_id,
                                        self.object_id(rule) + "_event")

    def sensor_payload(self, rule: RuleConfig) -> dict[str, Any]:
        state = self.topics.rule(rule.source, rule.name)
        return {
            "name": f"{rule.source} {rule.name}",
            "unique_id": f"{self.node_id}_{self.object_id(rule)}_rule",
            "state_topic": state,
            "value_template": "{{ value_json.state }}",
            "payload_on": "on",
            "payload_off": "off",
            "json_attributes_topic": state,
            "availability_topic": self.topics.status,
            "payload_available": "online",
            "payload_not_available": "offline",
            "icon": "mdi:eye-check",
            "device": ha_device(self.node_id, self.prefix, self.version),
        }

    def image_payload(self, rule: RuleConfig) -> dict[str, Any]:
        return {
            "name": f"{rule.source} {rule.name} evidence",
            "unique_id": f"{self.node_id}_{self.object_id(rule)}_evidence",
            "image_topic": self.topics.rule_evidence(rule.source, rule.name),
            "content_type": "image/jpeg",
            "availability_topic": self.topics.status,
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": ha_device(self.node_id, self.prefix, self.version),
        }

    def event_payload(self, rule: RuleConfig) -> dict[str, Any]:
        return {
            "name": f"{rule.source} {rule.name} changes",
            "unique_id": f"{self.node_id}_{self.object_id(rule)}_event",
            "state_topic": self.topics.rule_ha_event(rule.source, rule.name),
            "event_types": ["on", "off"],
            "availability_topic": self.topics.status,
            "payload_available": "online",
            "payload_not_available": "offline",
            "icon": "mdi:eye-refresh-outline",
            "device": ha_device(self.node_id, self.prefix, self.version),
        }

    async def announce(self, rule: RuleConfig) -> None:
        """Publish the rule's three discovery configs (retained)."""
        await self.messager.publish(self.sensor_topic(rule), json.dumps(self.sensor_payload(rule)), retain=True)
        await self.messager.publish(self.image_topic(rule), json.dumps(self.image_payload(rule)), retain=True)
        await self.messager.publish(self.event_topic(rule), json.dumps(self.event_payload(rule)), retain=True)
        self._announced[rule.name] = rule

    async def remove(self, rule: RuleConfig) -> None:
        """Clear the rule's discovery configs (Home Assistant removes the entities)."""
        for topic in (self.sensor_topic(rule), self.image_topic(rule), self.event_topic(rule)):
            await self.messager.publish(topic, b"", retain=True)
        self._announced.pop(rule.name, None)

    async def observe(self, event: AgentEvent) -> None:
        """An `EventObserver`: each rule change becomes an event of the rule's event entity."""
        change = event.rule
        if event.kind is EventKind.RULE and change is not None and event.source is not None:
            await self.publish_change(event.source, change.rule, change.state, change.previous, answer=change.answer,
                                      reason=change.reason)

    async def publish_change(self, source: str, name: str, state: str, previous: str, *, answer: bool | None,
                             reason: str) -> None:
        """A rule's state change as an event of its event entity (only for a rule announced here)."""
        rule = self._announced.get(name)
        if rule is None or rule.source != source:
            return
        event = {"event_type": state, "rule": name, "source": source, "question": rule.question, "previous": previous,
                 "answer": answer, "reason": reason}
        await self.messager.publish(self.topics.rule_ha_event(source, name), json.dumps(event, ensure_ascii=False))

    async def _reannounce(self) -> None:
        for rule in list(self._announced.values()):
            await self.announce(rule)
