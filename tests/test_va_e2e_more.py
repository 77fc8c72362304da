"""More end-to-end proof with real parts: headless Chromium asking through the page's data channel; the native vLLM
engine with CLIP embeddings from `ClipEncoder.from_llava` on a live aiortc stream; `visual-agent run` with the packaged
default config (embedded amqtt broker) and `visual-agent ask` against it.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.fixtures.daemon import daemon_process, free_tcp_port, run_cli
from tests.fixtures.webrtc import CounterVideoTrack, publish
from tests.waiting import wait_until
from visual_agent.agent import VisualAgent
from visual_agent.config_loading import parse_config
from visual_agent.daemon import Daemon, build_frame_encoding
from visual_agent.messages import Question

pytestmark = [pytest.mark.e2e, pytest.mark.vllm, pytest.mark.timeout(240)]


@pytest.mark.browser
@pytest.mark.mqtt
async def test_e2e_chromium_page_asks_over_data_channel_and_shows_answer(vllm_server, running_mosquitto, paho_peer, topic_prefix,
                                                                          chromium, artifacts_dir):
    config = parse_config({
        "llm": {"provider": "vllm", "base_url": vllm_server.base_url, "temperature": 0, "max_tokens": 12},
        "webrtc": {"host": "127.0.0.1", "port": 0, "host_candidate_addresses": ["127.0.0.1"]},
        "mqtt": {"host": running_mosquitto.host, "port": running_mosquitto.port, "prefix": topic_prefix},
    }, environ={})
    peer = paho_peer("5")
    peer.subscribe(f"{topic_prefix}/answer")
    daemon = Daemon(config)
    await daemon.start()
    context = await chromium.new_context(viewport={"width": 1100, "height": 800})
    page = await context.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    try:
        await page.goto(f"{daemon.driver.url}/?source=chrome&res=640x480&fps=30&autostart=1")
        await page.wait_for_function("window.agentPage.dc && window.agentPage.dc.readyState === 'open'", timeout=20000)
        await wait_until(lambda: "chrome" in daemon.driver.source_names(), 20,
                         what=lambda: f"a track from the page (console: {console})")
        await daemon.driver.get_buffer("chrome").wait_for_frame(20)
        await page.fill("#question", "What do you see?")
        await page.click("#ask-button")
        await page.wait_for_selector(".answer.done, .answer.failed", timeout=60000)
        shown = await page.evaluate("Object.values(window.agentPage.answers).map(a => ({q: a.question, text: a.text, done: a.done}))")
        failed = await page.query_selector(".answer.failed")
        shot = artifacts_dir / "visual_agent_page_answer.png"
        await page.screenshot(path=str(shot))
        mqtt_copy = json.loads((await asyncio.to_thread(peer.get, 10)).payload)
    finally:
        await context.close()
        await daemon.close()
    assert failed is None, f"the page shows a failed answer: {shown}"
    assert len(shown) == 1 and shown[0]["q"] == "What do you see?" and shown[0]["done"]
    assert mqtt_copy["question"] == "What do you see?" and mqtt_copy["error"] is None and mqtt_copy["source"] == "chrome"
    assert shown[0]["text"] == mqtt_copy["text"]  # what the page shows is the answer the agent made
    assert shot.stat().st_size > 10_000


@pytest.mark.webrtc
async def test_e2e_native_vllm_with_clip_embeddings_on_live_stream(native_provider, tiny_llava_path, webrtc_server):
    config = parse_config({"llm": {"provider": "vllm_native", "model_name": str(tiny_llava_path), "enable_mm_embeds": True},
                           "encoder": {"embeddings": "auto"}}, environ={})
    encoding = await build_frame_encoding(config, native_provider)
    embed = encoding.embedding_function
    assert embed is not None, "auto mode must pick CLIP embeddings for a provider that takes them"
    calls = []

    async def counting_embed(frames):
        out = await embed(frames)
        calls.append(tuple(out.shape))
        return out

    agent = VisualAgent(llm=native_provider, webrtc_driver=webrtc_server, embedding_function=counting_embed, provider_name="vllm_native")
    try:
        async with publish(webrtc_server.url, CounterVideoTrack(320, 240, 30, moving=True), source="live"):
            await wait_until(lambda: "live" in webrtc_server.source_names(), 15, what="the live source")
            buffer = webrtc_server.get_buffer("live")
            await wait_until(lambda: len(buffer.window(agent.config.window_s, 2)) >= 2, 15,
                             what="two frames in the window, so the question can take two")
            answer = await agent.ask(Question(question="What is moving?", source="live", frames=2, conversation="c"))
            streamed = []

            async def on_partial(seq, delta):
                streamed.append((seq, delta))

            follow = await agent.ask(Question(question="And now?", source="live", conversation="c"), on_partial=on_partial)
    finally:
        await agent.close()
        await encoding.aclose()
    assert answer.error is None, answer.error
    assert answer.source == "live" and len(answer.frames) == 2 and answer.provider == "vllm_native"
    assert calls[0][0] == 2 and calls[0][1:] == (16, 64)  # (frames, image tokens, LM hidden) of the tiny LLaVA
    assert follow.error is None and "".join(d for _, d in streamed) == follow.text
    assert agent.history("live", "c")[0][0] == "What is moving?"


@pytest.mark.webrtc
async def test_e2e_native_agent_defaults_to_clip_embeddings(native_provider, webrtc_server):
    """No embedding_function given and a provider that takes embeddings: the CLIP encoder of its LLaVA serves."""
    agent = VisualAgent(llm=native_provider, webrtc_driver=webrtc_server, provider_name="vllm_native")
    assert agent.encoding.jpeg_encoder is None and agent.embedding_function is not None
    try:
        async with publish(webrtc_server.url, CounterVideoTrack(160, 120, 15), source="auto"):
            await wait_until(lambda: "auto" in webrtc_server.source_names(), 15, what="the auto source")
            await webrtc_server.get_buffer("auto").wait_for_frame(15)
            answer = await agent.ask(Question(question="What is it?", source="auto"))
    finally:
        await agent.close()
    assert answer.error is None, answer.error
    assert agent.encoding.embedder is not None and agent.encoding.embedder.lm_hidden_size == 64


@pytest.mark.webrtc
async def test_e2e_embedded_broker_with_packaged_default_and_ask(tmp_path, vllm_server):
    """`visual-agent run` with no config file (the packaged default.yaml: embedded broker), then `visual-agent ask`.

    Only the LLM address and the two ports are overridden through the environment, as a user would.
    """
    page_port, mqtt_port = free_tcp_port(), free_tcp_port()
    env = {
        "VISUAL_AGENT__LLM__BASE_URL": vllm_server.base_url,
        "VISUAL_AGENT__LLM__MAX_TOKENS": "12",
        "VISUAL_AGENT__WEBRTC__PORT": str(page_port),
        "VISUAL_AGENT__WEBRTC__HOST_CANDIDATE_ADDRESSES": "[127.0.0.1]",
        "VISUAL_AGENT__MQTT__EMBEDDED_PORT": str(mqtt_port),
    }
    async with daemon_process(None, page_port=page_port, log_path=tmp_path / "daemon.log", env=env, cwd=tmp_path) as daemon:
        async with publish(daemon.page_url, CounterVideoTrack(320, 240, 30)):
            await asyncio.sleep(1.0)
            rc, out, err = await run_cli("ask", "What do you see?", "--json", "--timeout", "60", env=env)
            rc_stream, out_stream, err_stream = await run_cli("ask", "Any colours?", "--stream", "--timeout", "60", env=env)
        assert await daemon.terminate() == 0, daemon.log()
        log = daemon.log()
    assert rc == 0, f"{err}\n{log}"
    answer = json.loads(out)
    assert answer["error"] is None and answer["model"] == vllm_server.model and answer["frames"]
    assert rc_stream == 0, err_stream
    assert "embedded MQTT broker" in log and f"127.0.0.1:{mqtt_port}" in log


@pytest.mark.webrtc
async def test_e2e_native_qwen2vl_daemon_encoding_answers_from_embeddings(qwen2vl_native_provider, tiny_qwen2vl_path, webrtc_server):
    """The daemon's encoding on a Qwen2-VL folder picks `Qwen2VLEncoder` (loaded at start) and the agent answers
    two frames of a live stream through it: the dict form with `image_grid_thw` reaches the engine."""
    from encoders import Qwen2VLEncoder

    config = parse_config({"llm": {"provider": "vllm_native", "model_name": str(tiny_qwen2vl_path), "enable_mm_embeds": True},
                           "encoder": {"embeddings": "clip"}}, environ={})
    encoding = await build_frame_encoding(config, qwen2vl_native_provider)
    assert isinstance(encoding.embedder, Qwen2VLEncoder), encoding.embedder  # loaded at start, not at the question
    agent = VisualAgent(llm=qwen2vl_native_provider, webrtc_driver=webrtc_server, encoding=encoding, provider_name="vllm_native")
    try:
        async with publish(webrtc_server.url, CounterVideoTrack(200, 120, 30, moving=True), source="qwen"):
            await wait_until(lambda: "qwen" in webrtc_server.source_names(), 15, what="the qwen source")
            buffer = webrtc_server.get_buffer("qwen")
            await wait_until(lambda: len(buffer.window(agent.config.window_s, 2)) >= 2, 15,
                             what="two frames in the window, so the question can take two")
            answer = await agent.ask(Question(question="What is moving?", source="qwen", frames=2))
            streamed = []

            async def on_partial(seq, delta):
                streamed.append(delta)

            follow = await agent.ask(Question(question="And now?", source="qwen"), on_partial=on_partial)
            stats = encoding.cache_stats()
    finally:
        await agent.close()
    assert answer.error is None, answer.error
    assert answer.text and len(answer.frames) == 2 and answer.model == str(tiny_qwen2vl_path)
    assert follow.error is None and "".join(streamed) == follow.text
    assert stats is not None and stats.misses >= 1  # the frames went through our encoder, not as JPEG
    assert agent.encoding.jpeg_encoder is None

