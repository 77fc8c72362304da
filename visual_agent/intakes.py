"""`open_intakes`: the ways questions reach a core, composed around it on an `AsyncExitStack`.

The order is the shutdown order read backwards: leaving the stack first stops the descriptions, then drains the
core (it admits nothing more: what arrives meanwhile on MQTT or the page is answered `shutdown`, the questions in
flight get `agent.shutdown_grace_s`), then lets go of the page's channel, then stops taking MQTT messages and
answers those received but not taken. Adding an intake is one module (an async context manager taking the
`interfaces.AgentCore`) and one line here.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from .interfaces import AgentCore, FrameSource, MessageTransport, PageChannel
from .mqtt_intake import MqttQuestions, Senders
from .page_intake import PageQuestions
from .triggers import DescriptionTriggers

if TYPE_CHECKING:
    from .agent import VisualAgent
    from .config import AgentConfig

__all__ = ["Intakes", "open_intakes", "serve"]


class Intakes:
    """The intakes opened for one core (None where there is no transport or page)."""

    def __init__(self, mqtt: MqttQuestions | None, page: PageQuestions | None, triggers: DescriptionTriggers) -> None:
        self.mqtt = mqtt
        self.page = page
        self.triggers = triggers


async def open_intakes(stack: contextlib.AsyncExitStack, core: AgentCore, config: AgentConfig, *,
                       transport: MessageTransport | None = None, frames: FrameSource | None = None,
                       senders: Senders | None = None) -> Intakes:
    """Open MQTT questions (with a `transport`; `senders`: who published each, where the broker knows), page
    questions (with `frames` that carry the page) and the description triggers for `core`, each left when `stack`
    closes (see the module docstring for the order)."""
    mqtt = (await stack.enter_async_context(MqttQuestions(core, transport, frames, senders=senders))
            if transport is not None else None)
    page = None
    if isinstance(frames, PageChannel):
        page = await stack.enter_async_context(PageQuestions(core, frames, transport))
    stack.push_async_callback(core.drain)
    triggers = await stack.enter_async_context(DescriptionTriggers(core, frames, config))
    return Intakes(mqtt, page, triggers)


async def serve(stack: contextlib.AsyncExitStack, agent: VisualAgent, *, senders: Senders | None = None) -> Intakes:
    """Start `agent` and open its intakes on `stack`, over its own `messager` and `webrtc_driver`: what the daemon
    does, for an agent built by hand (`async with AsyncExitStack() as stack: await serve(stack, agent)`).
    `senders`: the embedded broker's `sender_of`, when the messager is its client."""
    await stack.enter_async_context(agent)
    return await open_intakes(stack, agent, agent.config, transport=agent.messager, frames=agent.driver,
                              senders=senders)
