"""OpenTelemetry traces: one per question, its stages as child spans, read with the SDK's in-memory exporter; and
OpenTelemetry stays unimported unless `telemetry.otlp_endpoint` is set.

Real mosquitto and the stand-in LLM server (the model does not matter here); frames come from a plain `FrameBuffer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from providers import create_provider
from tests.children import run_child
from tests.fixtures.frames import Buffers, solid
from visual_agent.agent import VisualAgent
from visual_agent.config import AgentConfig, MqttConfig
from visual_agent.intakes import serve
from visual_agent.mqtt import MqttMessager
from visual_agent.telemetry import Telemetry

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(60)]


async def test_tracing_one_trace_per_question_with_stage_spans(running_mosquitto, paho_peer, topic_prefix, stub_llm):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from visual_agent.tracing import ROOT_SPAN, QuestionTracing

    exporter = InMemorySpanExporter()
    tracing = QuestionTracing(exporter)
    driver = Buffers("cam")
    driver.get_buffer("cam").put(solid(100))
    peer = paho_peer("5")
    peer.subscribe(f"{topic_prefix}/answer")
    llm = create_provider({"provider": "openai", "base_url": stub_llm.base_url, "model_name": "stub-model"})
    messager = MqttMessager(MqttConfig(host=running_mosquitto.host, port=running_mosquitto.port))
    await messager.start()
    agent = VisualAgent(llm=llm, messager=messager, webrtc_driver=driver, config=AgentConfig(), prefix=topic_prefix,
                        provider_name="openai", telemetry=Telemetry(tracing))
    stack = contextlib.AsyncExitStack()
    await serve(stack, agent)
    try:
        peer.publish(f"{topic_prefix}/ask", json.dumps({"id": "tr-1", "question": "what?"}))
        peer.publish(f"{topic_prefix}/ask", json.dumps({"id": "tr-2", "question": "streamed?", "stream": True}))
        peer.publish(f"{topic_prefix}/ask", json.dumps({"id": "tr-3", "question": "there?", "source": "elsewhere"}))
        got = {}
        while len(got) < 3:
            answer = json.loads((await asyncio.to_thread(peer.get, 10, f"{topic_prefix}/answer")).payload)
            got[answer["id"]] = answer
    finally:
        await agent.drain(0.5)
        await stack.aclose()
        await messager.close()
        await llm.aclose()
        tracing.shutdown()
    spans = exporter.get_finished_spans()
    roots = {s.attributes["visual_agent.question.id"]: s for s in spans if s.name == ROOT_SPAN}
    assert set(roots) == {"tr-1", "tr-2", "tr-3"}
    assert len({s.context.trace_id for s in roots.values()}) == 3  # one trace per question
    children = {qid: {s.name: s for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id}
                for qid, root in roots.items()}
    assert set(children["tr-1"]) == {"wait_frame", "encode", "llm", "publish"}
    assert set(children["tr-2"]) == {"wait_frame", "encode", "llm_first_token", "llm", "publish"}
    assert set(children["tr-3"]) == {"publish"}  # unknown source: no frames, no LLM
    for qid, root in roots.items():
        assert root.attributes["visual_agent.via"] == "mqtt"
        for child in children[qid].values():
            assert child.context.trace_id == root.context.trace_id
            assert root.start_time <= child.start_time <= child.end_time <= root.end_time, (qid, child.name)
    ok = roots["tr-1"]
    assert ok.attributes["visual_agent.source"] == "cam" and ok.attributes["visual_agent.model"] == "stub-model"
    assert ok.attributes["visual_agent.outcome"] == "ok" and ok.status.is_ok
    llm_span = children["tr-1"]["llm"]
    assert llm_span.attributes["gen_ai.usage.input_tokens"] == 1  # what the stand-in reports
    assert children["tr-2"]["llm_first_token"].end_time <= children["tr-2"]["llm"].end_time
    failed = roots["tr-3"]
    assert failed.attributes["visual_agent.outcome"] == "unknown_source" and not failed.status.is_ok
    assert got["tr-3"]["error"]["type"] == "unknown_source"


def test_tracing_opentelemetry_not_imported_by_default(tmp_path):
    """`import visual_agent` and a default daemon (metrics on, no OTLP endpoint) leave opentelemetry unimported."""
    done = run_child("otel_not_imported", timeout=60)
    assert done.returncode == 0 and done.stdout.strip().endswith("clean"), done.stdout + done.stderr


async def test_tracing_daemon_sends_otlp_to_the_configured_endpoint(stub_llm):
    """With `telemetry.otlp_endpoint`, a description's trace reaches a real OTLP/HTTP receiver (a local server
    decoding the protobuf body) by the time the daemon has closed."""
    from aiohttp import web
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from visual_agent.config_loading import parse_config
    from visual_agent.daemon import Daemon
    from visual_agent.telemetry import Via
    from webrtc import FrameBuffer

    received: list[ExportTraceServiceRequest] = []

    async def traces(request: web.Request) -> web.Response:
        body = ExportTraceServiceRequest()
        body.ParseFromString(await request.read())
        received.append(body)
        return web.Response(status=200, body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    endpoint = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/traces"
    config = parse_config({"llm": {"provider": "openai", "base_url": stub_llm.base_url, "model_name": "stub-model"},
                           "webrtc": {"port": 0}, "mqtt": {"enabled": False},
                           "telemetry": {"otlp_endpoint": endpoint, "service_name": "va-test"}})
    daemon = Daemon(config)
    try:
        await daemon.start()
        buffer = daemon.driver.buffers["cam"] = FrameBuffer("cam")
        buffer.put(solid(50))
        answer = await daemon.agent.describe("cam", "describe", Via.PERIODIC)
        assert answer is not None and answer.error is None
    finally:
        await daemon.close()  # flushes the batch
        await runner.cleanup()
    spans = [(span.name, {a.key: a.value.string_value for a in span.attributes})
             for body in received for rs in body.resource_spans for ss in rs.scope_spans for span in ss.spans]
    services = {a.value.string_value for body in received for rs in body.resource_spans for a in rs.resource.attributes
                if a.key == "service.name"}
    assert services == {"va-test"}
    names = sorted(name for name, _ in spans)
    assert names == sorted(["visual_agent.question", "wait_frame", "encode", "llm", "publish"]), names
    root = next(attrs for name, attrs in spans if name == "visual_agent.question")
    assert root["visual_agent.via"] == "periodic" and root["visual_agent.source"] == "cam"
