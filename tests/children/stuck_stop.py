"""`run_daemon` on a real Daemon (no MQTT, page on a free port, its store in argv[1]) whose close hangs, as a stuck close or a thread nobody
joins would: prints "ready" once started; after SIGTERM the stop watchdog must write every stack and exit 1."""

from __future__ import annotations

import asyncio
import sys
import time

from visual_agent import daemon as daemon_module
from visual_agent.config_loading import parse_config
from visual_agent.daemon import Daemon, run_daemon


class StuckDaemon(Daemon):
    async def start(self) -> None:
        await super().start()
        print("ready", flush=True)

    async def close(self) -> None:
        time.sleep(120)  # blocks the loop itself: only a thread outside it can still act


if __name__ == "__main__":
    config = parse_config({"llm": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model_name": "m"},
                           "webrtc": {"port": 0}, "mqtt": {"enabled": False}, "agent": {"shutdown_grace_s": 0},
                           "storage": {"path": sys.argv[1]}})
    daemon_module.Daemon = StuckDaemon  # type: ignore[misc]
    daemon_module.STOP_WATCHDOG_S = 1.0
    raise SystemExit(asyncio.run(run_daemon(config)))
