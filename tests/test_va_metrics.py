"""GET /metrics of a real `visual-agent run` after real traffic: mosquitto, an aiortc camera, a page question over the
data channel, and an LLM server (the stand-in where the model does not matter; the real vLLM server on the tiny
LLaVA for token counts, checked against vLLM's own counters). Every counter must move by exactly what was done.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest

from tests.fixtures.daemon import daemon_config, daemon_process, free_tcp_port, wait_frames, write_config
from tests.fixtures.mqtt import answers_by_id
from tests.fixtures.webrtc import CounterVideoTrack, publish
from tests.metrics_scrape import moved, parse, scrape, total, value
from tests.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.mqtt, pytest.mark.webrtc, pytest.mark.timeout(180)]


async def test_metrics_move_by_exactly_the_traffic(tmp_path, running_mosquitto, paho_peer, topic_prefix, stub_llm):
    page_port = free_tcp_port()
    llm = {"provider": "openai", "base_url": stub_llm.base_url, "model_name": stub_llm.model}
    config = write_config(tmp_path / "metrics.yaml", daemon_config(
        tmp_path, llm=llm, mosquitto=running_mosquitto, prefix=topic_prefix, page_port=page_port, max_in_flight=8))
    peer = paho_peer("5")
    peer.subscribe(f"{topic_prefix}/answer")
    async with daemon_process(config, page_port=page_port, log_path=tmp_path / "daemon.log") as daemon:
        url = daemon.page_url + "/metrics"
        # The page answers before the broker connection is up: wait for it, then take the baseline.
        await wait_until(lambda: value(scrape(url), "visual_agent_mqtt_connected") == 1, 30, "the daemon connected to mosquitto")
        before = await asyncio.to_thread(scrape, url)
        assert value(before, "visual_agent_peers") == 0 and value(before, "visual_agent_mqtt_connected") == 1
        assert value(before, "visual_agent_questions_total", via="mqtt") == 0
        async with publish(daemon.page_url, CounterVideoTrack(320, 240, 30), source="cam") as camera:
            await wait_frames(daemon.page_url, "cam")
            await camera.wait_open()
            ask = f"{topic_prefix}/ask"
            peer.publish(ask, json.dumps({"id": "m-ok-1", "question": "what is there?", "source": "cam"}))
            peer.publish(ask, json.dumps({"id": "m-ok-2", "question": "and now?", "frames": 2}))
            peer.publish(ask, json.dumps({"id": "m-stream", "question": "stream it", "stream": True}))
            peer.publish(ask, json.dumps({"id": "m-unknown", "question": "where?", "source": "nowhere"}))
            peer.publish(ask, b'{"id": "m-bad", "question": ')  # broken JSON: bad_payload
            camera.channel.send(json.dumps({"id": "m-page", "question": "from the page"}))
            got = await answers_by_id(peer, {"m-ok-1", "m-ok-2", "m-stream", "m-unknown", "m-page", "bad_payload"})
            after = await asyncio.to_thread(scrape, url)
            health = json.loads(await asyncio.to_thread(lambda: urllib.request.urlopen(daemon.page_url + "/healthz").read()))
    assert got["m-unknown"]["error"]["type"] == "unknown_source" and got["bad_payload"]["error"]["type"] == "bad_payload"
    assert all(got[i]["error"] is None for i in ("m-ok-1", "m-ok-2", "m-stream", "m-page"))

    def d(name: str, **labels) -> float:
        return moved(before, after, name, **labels)

    assert d("visual_agent_questions_total", via="mqtt") == 5
    assert d("visual_agent_questions_total", via="page") == 1
    assert d("visual_agent_questions_total", via="periodic") == 0 == d("visual_agent_questions_total", via="scene")
    assert d("visual_agent_answers_total", outcome="ok") == 4
    assert d("visual_agent_answers_total", outcome="unknown_source") == 1
    assert d("visual_agent_answers_total", outcome="bad_payload") == 1
    # stages: four questions reached the LLM (one streamed), five were answered by a task (refusals have no stages)
    for stage, n in (("wait_frame", 4), ("encode", 4), ("llm", 4), ("llm_first_token", 1), ("publish", 5)):
        assert d("visual_agent_stage_seconds_count", stage=stage) == n, stage
    assert d("visual_agent_answer_seconds_count") == 5
    assert d("visual_agent_answer_seconds_sum") > 0
    assert d("visual_agent_stage_seconds_sum", stage="llm") > 0
    # the stand-in reports usage 1 + 1 per request (four: m-ok-1, m-ok-2, m-page, and m-stream, asked with
    # stream_options)
    assert d("visual_agent_llm_tokens_total", kind="prompt") == 4 == d("visual_agent_llm_tokens_total", kind="completion")
    # live readings at scrape time
    assert value(after, "visual_agent_peers") == 1
    assert value(after, "visual_agent_mqtt_connected") == 1 and value(after, "visual_agent_mqtt_outbox") == 0
    received = value(after, "visual_agent_frames_received_total", source="cam")
    assert 5 <= received <= health["sources"]["cam"]["received"]
    assert value(after, "visual_agent_frames_dropped_total", source="cam") <= received
    assert 0 <= value(after, "visual_agent_frame_age_seconds", source="cam") < 1.0
    assert all(labels_of_source <= {"cam"} for labels_of_source in _sources(after))


def _sources(samples) -> list[set[str]]:
    return [{v for k, v in labels if k == "source"} for (name, labels) in samples if name.startswith("visual_agent_frame")]


@pytest.mark.vllm
async def test_metrics_token_counts_match_the_vllm_servers_own(tmp_path, running_mosquitto, paho_peer, topic_prefix,
                                                               vllm_server):
    page_port = free_tcp_port()
    llm = {"provider": "vllm", "base_url": vllm_server.base_url, "temperature": 0, "max_tokens": 8}
    config = write_config(tmp_path / "tokens.yaml", daemon_config(
        tmp_path, llm=llm, mosquitto=running_mosquitto, prefix=topic_prefix, page_port=page_port))
    vllm_metrics = vllm_server.base_url.removesuffix("/v1") + "/metrics"
    peer = paho_peer("5")
    peer.subscribe(f"{topic_prefix}/answer")
    async with daemon_process(config, page_port=page_port, log_path=tmp_path / "daemon.log") as daemon:
        async with publish(daemon.page_url, CounterVideoTrack(160, 120, 15), source="cam"):
            await wait_frames(daemon.page_url, "cam")
            ours_before = await asyncio.to_thread(scrape, daemon.page_url + "/metrics")
            theirs_before = parse(await asyncio.to_thread(lambda: urllib.request.urlopen(vllm_metrics).read().decode()))
            for i in range(2):
                peer.publish(f"{topic_prefix}/cam/ask", json.dumps({"id": f"t-{i}", "question": "what is this?"}))
            peer.publish(f"{topic_prefix}/cam/ask", json.dumps({"id": "t-s", "question": "and this?", "stream": True}))
            got = await answers_by_id(peer, {"t-0", "t-1", "t-s"}, timeout=60)
            ours = await asyncio.to_thread(scrape, daemon.page_url + "/metrics")
            theirs = parse(await asyncio.to_thread(lambda: urllib.request.urlopen(vllm_metrics).read().decode()))
    assert all(a["error"] is None and a["source"] == "cam" for a in got.values()), got
    prompt = total(theirs, "vllm:prompt_tokens_total") - total(theirs_before, "vllm:prompt_tokens_total")
    generated = total(theirs, "vllm:generation_tokens_total") - total(theirs_before, "vllm:generation_tokens_total")
    assert prompt > 0 and generated > 0
    assert moved(ours_before, ours, "visual_agent_llm_tokens_total", kind="prompt") == prompt
    assert moved(ours_before, ours, "visual_agent_llm_tokens_total", kind="completion") == generated


async def test_metrics_behind_the_token_when_one_is_set(tmp_path, stub_llm):
    import urllib.error

    token = "metrics-test-token-0123456789"
    page_port = free_tcp_port()
    config = write_config(tmp_path / "token.yaml", {
        "llm": {"provider": "openai", "base_url": stub_llm.base_url, "model_name": stub_llm.model},
        "webrtc": {"port": page_port, "host_candidate_addresses": ["127.0.0.1"]}, "mqtt": {"enabled": False}})
    env = {"VISUAL_AGENT__WEBRTC__AUTH_TOKEN": token}
    async with daemon_process(config, page_port=page_port, log_path=tmp_path / "d.log", env=env) as daemon:
        url = daemon.page_url + "/metrics"
        with pytest.raises(urllib.error.HTTPError) as refused:
            await asyncio.to_thread(scrape, url)
        samples = await asyncio.to_thread(scrape, url, {"Authorization": f"Bearer {token}"})
    assert refused.value.code == 401
    assert value(samples, "visual_agent_mqtt_connected") == 0 and value(samples, "visual_agent_peers") == 0
