"""`SubscriptionCheck`: at start, does the broker deliver to the daemon what it subscribes to?

mosquitto 2 grants a SUBSCRIBE its ACL forbids (SUBACK success) and then drops every message on it silently: with a
wrong ACL the daemon says `online` and never sees a question or a rule set. So once connected, the daemon checks:
a client with its own credentials (client id `<client_id>-check`) subscribes to each kind of topic the daemon reads
and publishes a probe there; a probe that does not come back within `timeout_s` is a refused subscription, logged
as an error and shown in /healthz (`subscriptions`).

- `<prefix>/+/ask`: a probe on `<prefix>/<random>/ask`, a source topic no daemon subscribes, so no daemon takes it
  for a question.
- `<prefix>/rules/set`: never published (it would replace the rules); a retained rule set, when there is one, must
  arrive, else it is reported unchecked.
- `<prefix>/ask` is reported unchecked: every daemon on the broker would take a probe there for a question.

The embedded broker needs no check: its rights are the daemon's own (`broker_acl`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from typing import TYPE_CHECKING, Any

from .topics import Topics

if TYPE_CHECKING:
    from .mqtt import MqttMessager

__all__ = ["SubscriptionCheck"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0


class SubscriptionCheck:
    """`start()` runs the check in the background; `describe()` says where it stands; `close()` is idempotent."""

    def __init__(self, messager: MqttMessager, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.messager = messager
        """The daemon's own client: its settings, credentials and broker address are the check's."""
        self.timeout_s = timeout_s
        self.state = "pending"
        """pending, ok, refused (a probe did not come back), or error (the check could not run)."""
        self.refused: list[str] = []
        self.unchecked: list[str] = []
        self.detail: str | None = None
        self._task: asyncio.Task[None] | None = None

    def describe(self) -> dict[str, Any]:
        """For /healthz."""
        return {"state": self.state, "refused": self.refused, "unchecked": self.unchecked,
                **({"detail": self.detail} if self.detail else {})}

    def start(self) -> SubscriptionCheck:
        self._task = asyncio.get_running_loop().create_task(self._run_logged(), name="mqtt-subscription-check")
        return self

    async def wait(self) -> dict[str, Any]:
        if self._task is not None:
            await asyncio.shield(self._task)
        return self.describe()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()  # once: its `finally` closes the check's own client, which must not be cut short
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run_logged(self) -> None:
        try:
            await self.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.state, self.detail = "error", f"{type(exc).__name__}: {exc}"
            logger.warning("MQTT subscription check could not run: %s", self.detail)
            return
        if self.refused:
            logger.error("MQTT: the broker granted the daemon's subscription to %s but delivers nothing there (its ACL "
                         "refuses the daemon's user): questions or rule sets there are lost. Fix the broker's ACL "
                         "(docs/SECURITY.md)", ", ".join(self.refused))
        else:
            logger.info("MQTT: the broker delivers the daemon's subscriptions (checked: %s)",
                        "all" if not self.unchecked else f"all but {', '.join(self.unchecked)}")

    async def run(self) -> None:
        """Probe each kind of topic the daemon reads; sets `state`, `refused`, `unchecked`."""
        from .mqtt import MqttMessager

        daemon = self.messager
        topics, nonce = Topics(daemon.config.prefix), secrets.token_hex(6)
        check_id = f"{daemon.client_id}-check"
        nowhere = f"subscription-check-{nonce}"
        probes = {topics.source_ask(nowhere): json.dumps({"subscription_check": nonce}).encode()}
        self.unchecked.append(f"{topics.ask} (a probe there would be a question to every daemon)")
        client = MqttMessager(daemon.config, host=daemon.host, port=daemon.port, client_id=check_id,
                              persistent_session=False, name="mqtt-check",
                              subscriptions=[*probes, topics.rules_set])
        try:
            await client.start(timeout=self.timeout_s)
            for topic, payload in probes.items():
                await client.publish(topic, payload, wait=True)
            back: set[str] = set()
            rules_read = False
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.timeout_s
            while (set(probes) - back or not rules_read) and loop.time() < deadline:
                try:
                    msg = await client.next_message(deadline - loop.time())
                except TimeoutError:
                    break
                if msg.topic in probes and msg.payload == probes[msg.topic]:
                    back.add(msg.topic)
                elif msg.topic == topics.rules_set and msg.retain:
                    rules_read = True
        finally:
            await client.close(publish_offline=False)
        self.refused = sorted(_subscription_of(t, topics, nowhere) for t in set(probes) - back)
        if not rules_read:
            self.unchecked.append(f"{topics.rules_set} (no retained rule set to read)")
        self.state = "refused" if self.refused else "ok"


def _subscription_of(topic: str, topics: Topics, nowhere: str) -> str:
    """The subscription a probe stands for (`<prefix>/+/ask` for the random source's topic)."""
    return f"{topics.prefix}/+/ask" if topic == topics.source_ask(nowhere) else topic
