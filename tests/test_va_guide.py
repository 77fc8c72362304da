"""docs/VISUAL_AGENT_GUIDE.md's runnable examples, executed as written against a running `visual-agent run`
(mosquitto, the real vLLM server on the tiny LLaVA, an aiortc stream). Python blocks run as their own process; shell
blocks run in bash with `set -e`. The environment is what a reader would set: VISUAL_AGENT__* overrides pointing the
packaged default at the broker and the LLM, and MQTT_HOST/MQTT_PORT for the paho examples.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from tests.fixtures.daemon import daemon_process, free_tcp_port, write_config
from tests.fixtures.vllm import vllm_env
from tests.fixtures.webrtc import CounterVideoTrack, publish

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "VISUAL_AGENT_GUIDE.md"
BLOCK = re.compile(r"<!-- (runnable|runnable-shell) -->\s*\n```(python|sh)\n(.*?)```", re.DOTALL)

pytestmark = [pytest.mark.e2e, pytest.mark.vllm, pytest.mark.mqtt, pytest.mark.webrtc, pytest.mark.timeout(300)]


def blocks() -> list[tuple[str, str]]:
    return [(lang, code) for _, lang, code in BLOCK.findall(GUIDE.read_text())]


def test_guide_has_runnable_examples_for_each_contract():
    found = blocks()
    langs = [lang for lang, _ in found]
    assert langs.count("python") >= 4 and langs.count("sh") >= 1
    text = "\n".join(code for _, code in found)
    for needle in ("ResponseTopic", "MQTTv311", "visual-agent ask", "VisualAgent(", "load_config("):
        assert needle in text


async def test_guide_examples_run_against_a_live_daemon(tmp_path, vllm_server, running_mosquitto):
    page_port = free_tcp_port()
    config = write_config(tmp_path / "guide.yaml", {
        "llm": {"provider": "vllm", "base_url": vllm_server.base_url, "max_tokens": 12},
        "webrtc": {"host": "127.0.0.1", "port": page_port, "host_candidate_addresses": ["127.0.0.1"]},
        "mqtt": {"host": running_mosquitto.host, "port": running_mosquitto.port},
    })
    env = {
        **vllm_env(),
        "PYTHONPATH": str(ROOT),
        "PATH": f"{Path(sys.executable).parent}:{__import__('os').environ.get('PATH', '')}",
        "MQTT_HOST": running_mosquitto.host,
        "MQTT_PORT": str(running_mosquitto.port),
        "VISUAL_AGENT__MQTT__HOST": running_mosquitto.host,
        "VISUAL_AGENT__MQTT__PORT": str(running_mosquitto.port),
        "VISUAL_AGENT__LLM__BASE_URL": vllm_server.base_url,
        "VISUAL_AGENT__LLM__MAX_TOKENS": "12",
    }
    results = []
    async with daemon_process(config, page_port=page_port, log_path=tmp_path / "daemon.log") as daemon:
        async with publish(daemon.page_url, CounterVideoTrack(320, 240, 30, moving=True), source="cam"):
            await asyncio.sleep(1.0)
            for lang, code in blocks():
                args = [sys.executable, "-c", code] if lang == "python" else ["bash", "-euo", "pipefail", "-c", code]
                proc = await asyncio.create_subprocess_exec(*args, cwd=str(tmp_path), env=env,
                                                            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                out, err = await asyncio.wait_for(proc.communicate(), 120)
                results.append((lang, code, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")))
        log = daemon.log()
    for lang, code, rc, out, err in results:
        assert rc == 0, f"guide example failed ({lang}, exit {rc}):\n{code}\n--- stdout\n{out}\n--- stderr\n{err}\n--- daemon\n{log[-3000:]}"
