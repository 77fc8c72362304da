"""`EmbeddedBroker`: an amqtt broker in this process on 127.0.0.1, for configs that name no broker.

amqtt speaks MQTT 3.1.1 only; the messager retries with 3.1.1 when a broker refuses 5, and sets TCP_NODELAY
on its socket (a QoS-1 round trip to amqtt takes ~44 ms without it). The broker runs on the daemon's event loop.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from typing import Any

from .errors import EmbeddedBrokerError

__all__ = ["EmbeddedBroker"]

logger = logging.getLogger(__name__)

DEFAULT_BIND_HOST = "127.0.0.1"


class EmbeddedBroker:
    """Start with `await start()` (or `async with`); `port` is the bound port; `close()` is idempotent."""

    def __init__(self, port: int = 1883, *, host: str = DEFAULT_BIND_HOST) -> None:
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self._broker: Any = None
        self._closed = False

    def __repr__(self) -> str:
        return f"EmbeddedBroker({self.host}:{self.port or self.requested_port}, running={self._broker is not None})"

    async def start(self) -> EmbeddedBroker:
        try:
            from amqtt.broker import Broker
        except ImportError as exc:  # pragma: no cover - amqtt is a core dependency
            raise EmbeddedBrokerError("amqtt is not installed; install it or configure mqtt.host") from exc
        port = self.requested_port or _free_port(self.host)
        # amqtt logs every connection at INFO; keep the daemon's log readable.
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{port}", "max_connections": 256}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        broker = Broker(config)
        try:
            await broker.start()
        except Exception as exc:
            raise EmbeddedBrokerError(
                f"cannot start the embedded MQTT broker on {self.host}:{port}: {exc} "
                "(is another broker on that port? set mqtt.embedded_port, or mqtt.host to use it)"
            ) from exc
        self._broker = broker
        self.port = port
        logger.info("embedded MQTT broker (amqtt, MQTT 3.1.1) on %s:%d", self.host, port)
        return self

    async def __aenter__(self) -> EmbeddedBroker:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        broker, self._broker = self._broker, None
        if broker is not None:
            with contextlib.suppress(Exception):
                await broker.shutdown()


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
