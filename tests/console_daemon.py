"""For the console tests: a real `Daemon` in this process with a looping file source whose scene goes dark, bright,
dark (tests/rules_scene.py), real mosquitto, and the STAND-IN model judging brightness; plus a small HTTP client
that carries the page's token."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from tests.rules_scene import BRIGHT, DARK, BrightnessJudge, write_scene_clip
from visual_agent.config_loading import parse_config
from visual_agent.daemon import Daemon

__all__ = ["QUESTION_REPLY", "TOKEN", "console_daemon", "get_json"]

TOKEN = "console-test-token-0123456789abcdef"
QUESTION_REPLY = "I see a numbered test picture."
"""What the stand-in answers to a question (rule checks get the brightness judge's JSON)."""


@contextlib.asynccontextmanager
async def console_daemon(tmp_path: Path, stub_llm: Any, *, mosquitto: Any = None, prefix: str = "va",
                         config_rules: list[dict[str, Any]] | None = None,
                         extra: dict[str, Any] | None = None, loop: bool = True) -> AsyncIterator[Daemon]:
    """A started daemon (token `TOKEN`) with source `door` (a 4-second dark/bright/dark clip, looping unless
    `loop=False`)."""
    clip = write_scene_clip(tmp_path / "door.mp4", [(1.0, DARK), (2.0, BRIGHT), (1.0, DARK)], width=320, height=240)
    judge = BrightnessJudge()
    stub_llm.reply_fn = lambda body: judge(body) if "structured_outputs" in body else QUESTION_REPLY
    mqtt = ({"host": mosquitto.host, "port": mosquitto.port, "prefix": prefix} if mosquitto is not None
            else {"enabled": False})
    config = parse_config({
        "llm": {"provider": "vllm", "base_url": stub_llm.base_url, "model_name": stub_llm.model},
        "webrtc": {"host": "127.0.0.1", "port": 0, "host_candidate_addresses": ["127.0.0.1"], "auth_token": TOKEN},
        "sources": [{"name": "door", "kind": "file", "url": str(clip), "loop": loop}],
        "mqtt": mqtt,
        "rules": config_rules or [],
        "storage": {"path": str(tmp_path / "events")},  # this test's events only: the timeline shows nothing older
        **(extra or {}),
    }, environ={})
    daemon = Daemon(config)
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.close()


async def get_json(session: aiohttp.ClientSession, url: str, *, token: str | None = TOKEN,
                   method: str = "GET", body: Any = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.request(method, url, headers=headers, json=body) as r:
        text = await r.text()
        try:
            return r.status, json.loads(text)
        except ValueError:  # the guard's refusals are plain text
            return r.status, text


def page_errors(page: Any, *, ignore_failed_loads: bool = False) -> list[str]:
    """The page's uncaught exceptions and console errors, collected as they come (the list fills while the test runs).
    `ignore_failed_loads`: leave out the browser's own "Failed to load resource" lines, which every 400/404 the
    page provokes on purpose would add."""
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    def on_console(message: Any) -> None:
        if message.type != "error":
            return
        if ignore_failed_loads and message.text.startswith("Failed to load resource"):
            return
        errors.append(message.text)

    page.on("console", on_console)
    return errors
