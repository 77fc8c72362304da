"""End to end with real parts: a `visual-agent run` subprocess, mosquitto, the real vLLM OpenAI server on the tiny
LLaVA, an aiortc client streaming a generated video, `visual-agent ask` and paho clients over MQTT 5 and 3.1.1.

The tiny LLaVA has random weights: answers are asserted by shape (id, model, frames, partials adding up to the
text), never by wording.
"""

from __future__ import annotations

import asyncio
import functools
import json

import pytest

from tests.fixtures.daemon import daemon_config, daemon_process, free_tcp_port, run_cli, wait_frames, write_config
from tests.fixtures.webrtc import CounterVideoTrack, publish
from tests.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.vllm, pytest.mark.mqtt, pytest.mark.webrtc, pytest.mark.timeout(240)]


async def test_e2e_daemon_vllm_server_mqtt5_and_311_ask_cli_stream_and_sigterm(tmp_path, vllm_server, running_mosquitto, paho_peer, topic_prefix):
    page_port = free_tcp_port()
    llm = {"provider": "vllm", "base_url": vllm_server.base_url, "temperature": 0, "max_tokens": 12}
    config = write_config(tmp_path / "e2e.yaml", daemon_config(tmp_path, llm=llm, mosquitto=running_mosquitto,
                                                               prefix=topic_prefix, page_port=page_port))
    status = paho_peer("5")
    status.subscribe(f"{topic_prefix}/status")
    v5 = paho_peer("5")
    v5.subscribe(f"{topic_prefix}/answer/#")
    v5.subscribe(f"{topic_prefix}/reply/v5")
    v311 = paho_peer("3.1.1")
    v311.subscribe(f"{topic_prefix}/answer")
    async with daemon_process(config, page_port=page_port, log_path=tmp_path / "daemon.log") as daemon:
        assert (await asyncio.to_thread(status.get, 10)).payload == b"online"
        async with publish(daemon.page_url, CounterVideoTrack(320, 240, 30, moving=True), source="cam"):
            await wait_frames(daemon.page_url, "cam")
            # the CLI, streamed
            rc, out, err = await run_cli("ask", "What do you see?", "--config", str(config), "--stream", "--timeout", "60")
            assert rc == 0, f"ask failed: {err}\n{daemon.log()}"
            assert out.endswith("\n")
            # paho MQTT 5: response topic and correlation data honoured, partials before the final answer
            v5.publish(f"{topic_prefix}/ask", json.dumps({"id": "e2e-5", "question": "Describe the picture.", "stream": True, "frames": 2}),
                       response_topic=f"{topic_prefix}/reply/v5", correlation_data=b"\x00\x01corr")
            seen = await asyncio.to_thread(v5.until, f"{topic_prefix}/reply/v5", 60)
            reply = seen[-1]
            streamed = [json.loads(m.payload) for m in seen if m.topic == f"{topic_prefix}/answer/partial"]
            # paho MQTT 3.1.1: plain-text question, answer on <prefix>/answer
            v311.publish(f"{topic_prefix}/ask", "Is there a moving square?")
            answer_311 = json.loads((await asyncio.to_thread(v311.get, 60, f"{topic_prefix}/answer")).payload)
        code = await daemon.terminate()
        log = daemon.log()
    final = json.loads(reply.payload)
    assert reply.properties.CorrelationData == b"\x00\x01corr"
    assert final["id"] == "e2e-5" and final["error"] is None, final
    assert final["model"] == vllm_server.model and final["provider"] == "vllm" and final["source"] == "cam"
    assert len(final["frames"]) == 2 and final["frames"][-1]["age_s"] < 0.5
    partials = [p for p in streamed if p["id"] == "e2e-5"]
    assert partials and [p["seq"] for p in partials] == list(range(1, len(partials) + 1))
    assert "".join(p["delta"] for p in partials) == final["text"]
    assert answer_311["error"] is None and answer_311["question"] == "Is there a moving square?"
    assert code == 0, log
    assert (await asyncio.to_thread(status.get, 10)).payload == b"offline"
    for line in ("page: http://127.0.0.1:", "LLM: vllm", "MQTT: 127.0.0.1:", "answered in"):
        assert line in log, f"{line!r} not in the daemon's log:\n{log}"


async def test_e2e_daemon_serves_page_when_llm_is_down_and_check_says_so(tmp_path, running_mosquitto, paho_peer, topic_prefix):
    page_port = free_tcp_port()
    dead_port = free_tcp_port()
    llm = {"provider": "vllm", "base_url": f"http://127.0.0.1:{dead_port}/v1", "max_retries": 0, "timeout": 2}
    config = write_config(tmp_path / "down.yaml", daemon_config(tmp_path, llm=llm, mosquitto=running_mosquitto,
                                                                prefix=topic_prefix, page_port=page_port))
    peer = paho_peer("5")
    peer.subscribe(f"{topic_prefix}/answer")
    async with daemon_process(config, page_port=page_port, log_path=tmp_path / "daemon.log") as daemon:
        import urllib.request

        page = await asyncio.to_thread(lambda: urllib.request.urlopen(daemon.page_url + "/", timeout=5).read())
        assert b"<html" in page.lower()
        async with publish(daemon.page_url, CounterVideoTrack(160, 120, 15), source="cam"):
            await wait_frames(daemon.page_url, "cam")
            peer.publish(f"{topic_prefix}/ask", json.dumps({"id": "down-1", "question": "anyone there?"}))
            answer = json.loads((await asyncio.to_thread(peer.get, 30)).payload)
        rc, out, err = await run_cli("check", "--config", str(config), "--timeout", "3")
        health = json.loads(await asyncio.to_thread(lambda: urllib.request.urlopen(daemon.page_url + "/healthz", timeout=5).read()))
        assert await daemon.terminate() == 0, daemon.log()
    assert health["llm"]["state"] == "unreachable" and health["broker"]["state"] == "connected"
    assert health["agent"]["counters"]["errors.llm_unreachable"] == 1
    assert answer["id"] == "down-1" and answer["error"]["type"] == "llm_unreachable"
    assert rc == 1 and "llm     FAIL" in out and "mqtt    OK" in out and "config  OK" in out, out + err


async def _outboxed(page_url: str) -> bool:
    """Whether `/healthz` counts an MQTT message kept to send once the broker is back."""
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(page_url + "/healthz") as r:
        return (await r.json()).get("broker", {}).get("outbox", 0) >= 1


async def test_e2e_broker_restart_loses_no_question(tmp_path, running_mosquitto, paho_peer, topic_prefix, stub_llm):
    """The broker restarts while a question is being answered and while another is asked: both get answers.

    The LLM here is the stand-in server (slowed to 1.5 s so the answer is made while the broker is down).
    """
    page_port = free_tcp_port()
    stub_llm.delay_s = 1.5
    llm = {"provider": "openai", "base_url": stub_llm.base_url, "model_name": stub_llm.model}
    config = write_config(tmp_path / "restart.yaml", daemon_config(tmp_path, llm=llm, mosquitto=running_mosquitto,
                                                                   prefix=topic_prefix, page_port=page_port))
    asker = paho_peer("5", persistent=True)
    asker.subscribe(f"{topic_prefix}/answer")
    async with daemon_process(config, page_port=page_port, log_path=tmp_path / "daemon.log") as daemon:
        async with publish(daemon.page_url, CounterVideoTrack(160, 120, 15), source="cam"):
            await wait_frames(daemon.page_url, "cam")
            asker.publish(f"{topic_prefix}/ask", json.dumps({"id": "before", "question": "first?"})).wait_for_publish(5)
            await wait_until(lambda: stub_llm.requests, 10, what="the daemon waiting on the LLM")
            await asyncio.to_thread(running_mosquitto.stop)
            asker.publish(f"{topic_prefix}/ask", json.dumps({"id": "during", "question": "second?"}))  # queued by paho
            await wait_until(functools.partial(_outboxed, daemon.page_url), 30, interval=0.1,
                             what="the first answer made while the broker is down, kept in the outbox")
            await asyncio.to_thread(running_mosquitto.start)
            got = {json.loads((await asyncio.to_thread(asker.get, 30)).payload)["id"] for _ in range(2)}
        assert await daemon.terminate() == 0, daemon.log()
        log = daemon.log()
    assert got == {"before", "during"}, log
    assert "kept while offline" in log
