"""For the MCP tests: a daemon with the MCP endpoint on (a looping file source, real mosquitto, the STAND-IN model of
tests/fixtures/llm_stub.py) and a session of the SDK's own streamable HTTP client against it."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tests.rules_scene import BRIGHT, write_scene_clip
from tests.waiting import wait_until
from visual_agent.config_loading import parse_config
from visual_agent.daemon import Daemon

__all__ = ["TOKEN", "mcp_daemon", "mcp_session", "payload_of"]

TOKEN = "mcp-test-token-7f3a"


@contextlib.asynccontextmanager
async def mcp_daemon(tmp_path: Path, mosquitto: Any, stub: Any, prefix: str, **sections: Any) -> AsyncIterator[Daemon]:
    """A started `Daemon` with `mcp.enabled`, the page token `TOKEN` and a source `cam` whose first frame is in."""
    clip = write_scene_clip(tmp_path / "scene.mp4", [(2.0, BRIGHT)])
    config = parse_config({
        "llm": {"provider": "vllm", "base_url": stub.base_url, "model_name": stub.model},
        "webrtc": {"host": "127.0.0.1", "port": 0, "auth_token": TOKEN, "host_candidate_addresses": ["127.0.0.1"]},
        "sources": [{"name": "cam", "kind": "file", "url": str(clip), "loop": True}],
        "mqtt": {"host": mosquitto.host, "port": mosquitto.port, "prefix": prefix},
        "mcp": {"enabled": True},
        "storage": {"path": str(tmp_path / "state")},
        **sections,
    }, environ={})
    daemon = Daemon(config)
    await daemon.start()
    try:
        assert daemon.driver is not None
        buffer = daemon.driver.get_buffer("cam")
        await wait_until(lambda: buffer.latest() is not None, 20, "the file source's first frame")
        yield daemon
    finally:
        await daemon.close()


def endpoint(daemon: Daemon) -> str:
    assert daemon.driver is not None
    return f"{daemon.driver.url}{daemon.config.mcp.path}"


@contextlib.asynccontextmanager
async def mcp_session(daemon: Daemon, token: str | None = TOKEN) -> AsyncIterator[Any]:
    """An initialized `mcp.ClientSession` over the SDK's streamable HTTP client, sending `token` as the bearer."""
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
        async with streamable_http_client(endpoint(daemon), http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield session


def payload_of(result: Any) -> Any:
    """The JSON a tool returned (its first text content)."""
    return json.loads(result.content[0].text)
