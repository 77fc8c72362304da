"""What the agent needs from its collaborators, as `typing.Protocol`s: any object with these members serves.

- `FrameSource` (the driver: `webrtc.WebRTCServer`, or a test's dict of `FrameBuffer`s): source names and their
  buffers. `PageChannel` is what a source that also carries the page's data channel adds (questions typed on
  the page, answers sent back to that peer); the agent takes page questions only from a source that has it.
- `MessageTransport` (`MqttMessager`): subscribe, a stream of received messages, publish, and the two hooks the
  agent uses so that no question is lost (`on_inbox_full`, `take_pending`).

`webrtc` and the MQTT client are not imported here: the protocols are structural, so the arrows stay one way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "DataMessageHandler",
    "FrameSource",
    "FrameStore",
    "IncomingQuestion",
    "MessageTransport",
    "PageChannel",
]

DataMessageHandler = Callable[[str, str, str], Awaitable[None]]
"""``async (source, peer_id, text)``: a text message from the page's data channel."""


class FrameStore(Protocol):
    """One source's frames (`webrtc.FrameBuffer`): bounded, newest wins."""

    def latest(self) -> Any:
        """The newest frame entry (`.frame`, `.seq`, `.pts`, `.received_at`), or None before the first."""
        ...

    def window(self, seconds: float, k: int) -> list[Any]:
        """Up to `k` entries spread over the last `seconds`, oldest first."""
        ...

    async def wait_for_frame(self, timeout: float | None = None) -> Any:
        """The newest entry once there is one; TimeoutError after `timeout`."""
        ...


class FrameSource(Protocol):
    """Where frames come from: named sources, each with a `FrameStore`."""

    def source_names(self) -> list[str]:
        """The sources that exist now (configured ones and connected peers)."""
        ...

    def get_buffer(self, name: str) -> Any:
        """The `FrameStore` of `name`; KeyError when there is no such source (any more)."""
        ...


@runtime_checkable
class PageChannel(Protocol):
    """A frame source that also carries the page's data channel (`webrtc.WebRTCServer` does)."""

    on_data_message: DataMessageHandler | None
    """Set by the agent to take the page's questions; None: nobody listens."""

    async def send_data(self, peer_id: str, text: str) -> None:
        """Send text to one peer's data channel; raises when the peer has left."""
        ...


class IncomingQuestion(Protocol):
    """One received MQTT message (`visual_agent.mqtt.IncomingMessage`)."""

    topic: str
    payload: bytes
    retain: bool
    received_at: float
    response_topic: str | None
    correlation_data: bytes | None


class MessageTransport(Protocol):
    """The message bus the agent listens and answers on (`MqttMessager`)."""

    on_inbox_full: Callable[[Any], None] | None
    """Called with each received message dropped because the inbox was full (the agent answers it `busy`)."""

    @property
    def shared_group(self) -> str | None:
        """The shared-subscription group the agent subscribes in (several daemons split questions); None: none."""
        ...

    async def subscribe(self, topic: str) -> None:
        """Receive messages on `topic` (kept across reconnects)."""
        ...

    async def unsubscribe(self, topic: str) -> None:
        """Stop receiving `topic` (a source that went)."""
        ...

    def messages(self) -> AsyncIterator[Any]:
        """Received messages (`IncomingQuestion`), oldest first, until the transport closes."""
        ...

    def take_pending(self) -> list[Any]:
        """Received messages nobody has taken yet, removed from the queue (on shutdown, to answer them)."""
        ...

    async def publish(self, topic: str, payload: bytes | str, *, retain: bool = False,
                      correlation_data: bytes | None = None) -> None:
        """Publish (or keep it until the connection is back)."""
        ...
