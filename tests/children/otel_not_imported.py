"""`import visual_agent` and a default daemon (metrics on, no OTLP endpoint) started and closed: prints "clean" when
opentelemetry was never imported."""

from __future__ import annotations

import asyncio
import sys

import visual_agent  # noqa: F401  (what is imported by it is the point)
from visual_agent.config_loading import parse_config
from visual_agent.daemon import Daemon


async def main() -> None:
    config = parse_config({"llm": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model_name": "m"},
                           "webrtc": {"port": 0}, "mqtt": {"enabled": False}})
    daemon = Daemon(config)
    await daemon.start()
    try:
        assert daemon.metrics is not None and daemon.tracing is None and daemon.driver is not None
        exposition = daemon.driver.metrics_exposition
        assert exposition is not None
        body, _ = exposition()
        assert b"visual_agent_questions_total" in body
    finally:
        await daemon.close()


if __name__ == "__main__":
    assert not [m for m in sys.modules if m.startswith("opentelemetry")], "imported by import visual_agent"
    asyncio.run(main())
    leaked = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
    assert not leaked, leaked
    print("clean")
