"""Home Assistant MQTT discovery: a sensor per source holding its last answer or description, and an event entity
per source whose events are its descriptions.

For each source that answers, a retained discovery config goes to
``<discovery_prefix>/sensor/<node_id>/<source>/config``; the sensor reads ``<prefix>/<source>/state`` (retained:
the last answer or description, the answer JSON) and shows its text (cut to Home Assistant's 255-character state
limit; the whole answer is in the sensor's attributes). A second config, under
``<discovery_prefix>/event/<node_id>/<source>_descriptions/config``, announces an `event` entity (Home Assistant's
MQTT event platform) reading ``<prefix>/<source>/description/ha``: each periodic, scene-change or memory description
is published there as ``{"event_type": "periodic"|"scene"|"memory"|"description", "text", ...}`` (not retained: an
event happens once), so Home Assistant's logbook and automations see every one. Availability follows
``<prefix>/status`` (online/offline). Discovery is sent again after each reconnect, as Home Assistant expects after
a broker restart.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from .interfaces import AgentEvent, EventKind
from .messages import Answer
from .topics import Topics, ha_object_id

if TYPE_CHECKING:
    from .config import HomeAssistantConfig
    from .mqtt import MqttMessager

__all__ = ["DESCRIPTION_EVENT_TYPES", "HomeAssistantDiscovery", "ha_device", "state_topic"]

logger = logging.getLogger(__name__)

_HA_STATE_MAX = 250
# Home Assistant's Jinja (braces literal, not Python formatting): the answer's text, else its error, cut to fit.
_HA_VALUE_TEMPLATE = (
    "{{ (value_json.text or (value_json.error.message if value_json.error else ''))[:" + str(_HA_STATE_MAX) + "] }}"
)


DESCRIPTION_EVENT_TYPES = ("periodic", "scene", "memory", "description")
"""The `event_type`s of a source's description events: what asked for the description (`description`: anything else)."""


def ha_device(node_id: str, prefix: str, version: str) -> dict[str, Any]:
    """The `device` block every entity of this daemon carries, so Home Assistant groups them under one device."""
    return {"identifiers": [node_id], "name": f"Visual agent ({prefix})", "manufacturer": "visual-agent",
            "sw_version": version}


def state_topic(prefix: str, source: str) -> str:
    """Where the sensor of `source` reads its state."""
    return Topics(prefix).state(source)


class HomeAssistantDiscovery:
    """Publishes discovery configs and sensor states through a messager."""

    def __init__(self, messager: MqttMessager, prefix: str, config: HomeAssistantConfig, *, version: str = "0.1.0") -> None:
        self.messager = messager
        self.prefix = prefix
        self.config = config
        self.topics = Topics(prefix)
        self.node_id = ha_object_id(config.node_id or prefix)
        self.version = version
        self._announced: set[str] = set()
        messager.on_connected.append(self._reannounce)

    def discovery_topic(self, source: str) -> str:
        return self.topics.ha_discovery(self.config.discovery_prefix, self.node_id, source)

    def discovery_payload(self, source: str) -> dict[str, Any]:
        return {
            "name": f"{source} view",
            "unique_id": f"{self.node_id}_{ha_object_id(source)}_view",
            "state_topic": self.topics.state(source),
            "value_template": _HA_VALUE_TEMPLATE,
            "json_attributes_topic": self.topics.state(source),
            "availability_topic": self.topics.status,
            "payload_available": "online",
            "payload_not_available": "offline",
            "icon": "mdi:cctv",
            "device": ha_device(self.node_id, self.prefix, self.version),
        }

    def events_discovery_topic(self, source: str) -> str:
        return self.topics.ha_component(self.config.discovery_prefix, "event", self.node_id, f"{source}_descriptions")

    def events_discovery_payload(self, source: str) -> dict[str, Any]:
        """The `event` entity of `source`'s descriptions (Home Assistant's MQTT event platform)."""
        return {
            "name": f"{source} descriptions",
            "unique_id": f"{self.node_id}_{ha_object_id(source)}_descriptions",
            "state_topic": self.topics.description_ha_event(source),
            "event_types": list(DESCRIPTION_EVENT_TYPES),
            "availability_topic": self.topics.status,
            "payload_available": "online",
            "payload_not_available": "offline",
            "icon": "mdi:text-box-search-outline",
            "device": ha_device(self.node_id, self.prefix, self.version),
        }

    async def announce(self, source: str) -> None:
        """Publish the discovery configs of `source`'s sensor and description events (retained)."""
        await self.messager.publish(self.discovery_topic(source), json.dumps(self.discovery_payload(source)), retain=True)
        await self.messager.publish(self.events_discovery_topic(source), json.dumps(self.events_discovery_payload(source)),
                                    retain=True)
        self._announced.add(source)

    async def publish_description(self, answer: Answer, via: str) -> None:
        """A successful description as an event of its source's event entity (`via`: what asked for it)."""
        if not answer.source or answer.error is not None:
            return
        if answer.source not in self._announced:
            await self.announce(answer.source)
        event = {"event_type": via if via in DESCRIPTION_EVENT_TYPES else "description", "text": answer.text,
                 "source": answer.source, "id": answer.id, "question": answer.question, "model": answer.model}
        await self.messager.publish(self.topics.description_ha_event(answer.source), json.dumps(event, ensure_ascii=False))

    async def _reannounce(self) -> None:
        for source in sorted(self._announced):
            await self.announce(source)

    async def observe(self, event: AgentEvent) -> None:
        """An `EventObserver`: each successful answer or description becomes its source's state; a description is
        also an event of the source's event entity."""
        if event.kind in (EventKind.ANSWER, EventKind.DESCRIPTION) and event.answer is not None:
            await self.on_answer(event.answer)
        if event.kind is EventKind.DESCRIPTION and event.answer is not None:
            await self.publish_description(event.answer, event.via.value)

    async def on_answer(self, answer: Answer) -> None:
        """Make sure the source's sensor exists, then publish the answer as its state (retained); an error answer
        or one without a source changes nothing."""
        if not answer.source or answer.error is not None:
            return
        if answer.source not in self._announced:
            await self.announce(answer.source)
        await self.messager.publish(self.topics.state(answer.source), answer.payload(), retain=True)
