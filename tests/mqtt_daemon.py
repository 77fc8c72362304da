"""`visual-agent run` against a broker, for the MQTT delivery tests: its config, a looping clip source, and readers of
what it publishes (answers by id, its status) from a paho peer."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from tests.fixtures.daemon import write_config
from tests.fixtures.mqtt import PahoPeer

__all__ = ["answers_on", "kept_session_asker", "looping_clip", "mqtt_daemon_config", "wait_status"]


def mqtt_daemon_config(tmp_path, broker, prefix: str, page_port: int, llm_url: str, *, agent: dict | None = None,
                       sources: list | None = None, **mqtt: Any):
    """A config file for `visual-agent run` on `broker` under `prefix`, asking the OpenAI-compatible `llm_url`."""
    data: dict[str, Any] = {
        "llm": {"provider": "openai", "base_url": llm_url, "model_name": "stub-model", "max_retries": 0, "timeout": 60},
        "webrtc": {"port": page_port},
        "agent": {"frame_wait_s": 10, "question_timeout_s": 60, **(agent or {})},
        "mqtt": {"host": broker.host, "port": broker.port, "prefix": prefix, "reconnect_min_s": 0.1,
                 "reconnect_max_s": 0.5, **mqtt},
    }
    if sources:
        data["sources"] = sources
    return write_config(tmp_path / f"daemon-{uuid.uuid4().hex[:6]}.yaml", data)


def looping_clip(tmp_path) -> list[dict]:
    """`sources`: a one-second clip played in a loop as "cam"."""
    from tests.clips import write_video

    clip = write_video(tmp_path / "clip.mp4", 1.0)
    return [{"name": "cam", "url": str(clip), "loop": True}]


def answers_on(peer: PahoPeer, topic: str, ids: set, timeout: float = 30.0) -> list[dict]:
    """Every answer on `topic` until each of `ids` arrived (duplicates kept, so a test can count them)."""
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    while not ids <= {a["id"] for a in got}:
        got.append(json.loads(peer.get(max(0.01, deadline - time.monotonic()), topic).payload))
    return got


async def wait_status(peer: PahoPeer, want: bytes, timeout: float = 20.0) -> None:
    """Until `peer` receives `want` on a `/status` topic (it subscribed to it)."""
    deadline = time.monotonic() + timeout
    while True:
        msg = await asyncio.to_thread(peer.get, max(0.01, deadline - time.monotonic()))
        if msg.topic.endswith("/status") and msg.payload == want:
            return


def kept_session_asker(broker, topic_prefix: str) -> PahoPeer:
    """A peer whose session the broker keeps (its QoS-1 questions and subscriptions outlive a restart), listening to
    the daemon's answers and status; the caller closes it."""
    asker = PahoPeer(broker.host, broker.port, persistent=True)
    try:
        asker.subscribe(f"{topic_prefix}/answer")
        asker.subscribe(f"{topic_prefix}/status")
    except BaseException:
        asker.close()
        raise
    return asker
