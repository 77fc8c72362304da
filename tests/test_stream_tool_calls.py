"""Tool calls while streaming: `astream` yields text deltas (`str`) and, only when tools were passed, one
`ToolCallsEvent` with the complete calls at the end. Against a real vLLM server started with a tool parser, and the
in-process engine.

The random tiny LLaVA cannot choose to call a tool, so a regex (structured output) makes it write one in the
`pythonic` format; the server's / engine's parser turns it into a call, streamed in pieces and assembled here.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from providers import OpenAICompatibleProvider, ToolCall, ToolCallsEvent
from providers.streaming import ToolCallAssembler
from tests.fixtures.vllm import TOOL_ARGS

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
FORCE_CALL = {"structured_outputs": {"regex": r"\[get_weather\(city='(Paris|Rome)'\)\]"}}
QUESTION = [{"role": "user", "content": "weather?"}]


async def _collect(stream) -> tuple[list[str], list[ToolCallsEvent]]:
    texts, events = [], []
    async for item in stream:
        (texts if isinstance(item, str) else events).append(item)
    return texts, events


def test_tool_call_assembler_joins_pieces_by_index():
    assembler = ToolCallAssembler()
    assembler.add([{"index": 0, "id": "a", "function": {"name": "f", "arguments": '{"x"'}}])
    assembler.add([{"index": 1, "id": "b", "function": {"name": "g", "arguments": ""}}])
    assembler.add([{"index": 0, "function": {"arguments": ": 1}"}}, {"index": 1, "function": {"arguments": "{}"}}])
    assert assembler.calls() == (ToolCall("a", "f", '{"x": 1}'), ToolCall("b", "g", "{}"))
    assert ToolCallAssembler().calls() == ()


def _server_llm(server) -> OpenAICompatibleProvider:
    """The HTTP provider on `server`, greedy (open it with `async with`)."""
    return OpenAICompatibleProvider(
        {"base_url": server.base_url, "api_key": "none", "model_name": server.model, "temperature": 0}
    )


@pytest.fixture
def tool_server(vllm_server):
    """A real vLLM OpenAI server on the tiny LLaVA with auto tool choice and the pythonic parser: the session's
    `vllm_server`, started with them (`TOOL_ARGS`) so that this module no longer starts a server of its own."""
    assert all(arg in vllm_server.process.args for arg in TOOL_ARGS), vllm_server.process.args
    return vllm_server


@pytest.mark.vllm
@pytest.mark.timeout(300)
async def test_openai_compatible_astream_yields_assembled_tool_calls_from_vllm_server(tool_server):
    async with _server_llm(tool_server) as llm:
        texts, events = await _collect(llm.astream(QUESTION, tools=TOOLS, max_tokens=40, extra_body=FORCE_CALL))
        answer = await llm.achat(QUESTION, tools=TOOLS, max_tokens=40, extra_body=FORCE_CALL)
    assert len(events) == 1 and isinstance(events[0], ToolCallsEvent)
    calls = events[0].tool_calls
    assert [c.name for c in calls] == ["get_weather"] and calls[0].args["city"] in ("Paris", "Rome")
    assert [(c.name, c.args) for c in calls] == [(c.name, c.args) for c in answer.tool_calls]
    assert "get_weather" not in "".join(texts)  # the call's syntax is not streamed as text


@pytest.mark.vllm
@pytest.mark.timeout(300)
async def test_openai_compatible_astream_without_tools_yields_only_text(tool_server):
    async with _server_llm(tool_server) as llm:
        # The same forced call text, but no tools passed: it is only text, and nothing but str comes out.
        items = [item async for item in llm.astream(QUESTION, max_tokens=40, extra_body=FORCE_CALL)]
    assert items and all(isinstance(item, str) for item in items)
    assert "".join(items).startswith("[get_weather(")


@pytest.mark.vllm
@pytest.mark.timeout(180)
async def test_vllm_native_astream_yields_same_tool_calls_as_achat(native_provider):
    texts, events = await _collect(native_provider.astream(QUESTION, tools=TOOLS, max_tokens=40, **FORCE_CALL))
    answer = await native_provider.achat(QUESTION, tools=TOOLS, max_tokens=40, **FORCE_CALL)
    assert len(events) == 1
    assert list(events[0].tool_calls) == [
        ToolCall(id=events[0].tool_calls[0].id, name=c.name, arguments=c.arguments) for c in answer.tool_calls
    ]
    assert events[0].tool_calls[0].name == "get_weather"
    assert "".join(texts) == answer.text == ""


@pytest.mark.vllm
@pytest.mark.timeout(180)
async def test_vllm_native_astream_without_tools_yields_only_text(native_provider):
    items = [item async for item in native_provider.astream(QUESTION, max_tokens=40, **FORCE_CALL)]
    assert items and all(isinstance(item, str) for item in items)
    assert "".join(items).startswith("[get_weather(")


# --- the agent: tool calls land in the answer the same way streamed or not; partials carry text only -------------


def _camera():
    """A frame source whose one source "desk" holds a noisy picture."""
    import av
    import numpy as np

    from tests.fixtures.frames import Buffers

    picture = np.random.default_rng(3).integers(0, 256, size=(96, 128, 3), dtype=np.uint8)
    return Buffers("desk", max_frames=4).holding("desk", av.VideoFrame.from_ndarray(picture, format="rgb24"))


async def _ask_both_ways(agent):
    """The same question answered without and with streaming, through `take` (what MQTT and the page use), then
    the agent closed; returns the two answers' payloads and the streamed partial payloads."""
    from visual_agent.messages import Question
    from visual_agent.telemetry import Via

    answers, partials = [], []

    class Collect:
        def __init__(self):
            self.done = asyncio.Event()

        async def partial(self, payload):
            partials.append(json.loads(payload))

        async def answer(self, answer):
            answers.append(json.loads(answer.payload()))
            self.done.set()

    try:
        for stream in (False, True):
            reply = Collect()
            assert agent.take(Question(question="weather?", source="desk", stream=stream), reply, via=Via.MQTT,
                              asker="test") is None
            await reply.done.wait()
    finally:
        await agent.close()
    return answers, partials


def _assert_same_tool_calls(answers, partials):
    plain, streamed = answers
    assert plain["error"] is None and streamed["error"] is None, (plain, streamed)
    for answer in (plain, streamed):
        assert [c["name"] for c in answer["tool_calls"]] == ["get_weather"], answer
        assert json.loads(answer["tool_calls"][0]["arguments"])["city"] in ("Paris", "Rome")
    assert [(c["name"], c["arguments"]) for c in plain["tool_calls"]] == [(c["name"], c["arguments"]) for c in streamed["tool_calls"]]
    assert all(isinstance(p["delta"], str) for p in partials)  # the event never became a partial
    assert "".join(p["delta"] for p in partials) == streamed["text"]
    assert "get_weather" not in streamed["text"]


@pytest.mark.vllm
@pytest.mark.timeout(300)
async def test_agent_tool_calls_same_streamed_or_not_from_vllm_server(tool_server):
    from visual_agent import VisualAgent

    async with _server_llm(tool_server) as llm:
        agent = VisualAgent(llm=llm, webrtc_driver=_camera(), provider_name="openai",
                            llm_options={"tools": TOOLS, "max_tokens": 40, "extra_body": FORCE_CALL})
        answers, partials = await _ask_both_ways(agent)
    _assert_same_tool_calls(answers, partials)


@pytest.mark.vllm
@pytest.mark.timeout(300)
async def test_agent_tool_calls_same_streamed_or_not_from_native_engine_with_embeddings(native_provider):
    from visual_agent import VisualAgent

    agent = VisualAgent(llm=native_provider, webrtc_driver=_camera(), provider_name="vllm_native",
                        llm_options={"tools": TOOLS, "max_tokens": 40, **FORCE_CALL})
    assert agent.encoding.uses_embeddings
    answers, partials = await _ask_both_ways(agent)
    _assert_same_tool_calls(answers, partials)


@pytest.mark.vllm
@pytest.mark.timeout(300)
async def test_agent_without_tools_answers_have_no_tool_calls_key(tool_server):
    from visual_agent import VisualAgent

    async with _server_llm(tool_server) as llm:
        agent = VisualAgent(llm=llm, webrtc_driver=_camera(), provider_name="openai", llm_options={"max_tokens": 8})
        answers, partials = await _ask_both_ways(agent)
    assert all(a["error"] is None and "tool_calls" not in a for a in answers), answers
    assert "".join(p["delta"] for p in partials) == answers[1]["text"]


async def test_stream_usage_asked_of_a_server_that_refuses_stream_options(stub_llm):
    """An older OpenAI-compatible server answers 400 to `stream_options`: the answer still streams (asked again
    without them, no UsageEvent), and the provider does not ask that server again."""
    stub_llm.refuse_stream_options = True
    llm = OpenAICompatibleProvider(base_url=stub_llm.base_url, model_name=stub_llm.model)
    messages = [{"role": "user", "content": "hello"}]
    try:
        first = [d async for d in llm.astream(messages, stream_options={"include_usage": True})]
        second = [d async for d in llm.astream(messages, stream_options={"include_usage": True})]
    finally:
        await llm.aclose()
    assert "".join(first) == stub_llm.reply == "".join(second)
    assert all(isinstance(d, str) for d in first + second)
    assert ["stream_options" in r for r in stub_llm.requests] == [True, False, False]


async def test_stream_usage_comes_last_after_the_tool_calls(stub_llm):
    """Both events asked for: text, then the ToolCallsEvent (none here: the stand-in calls no tool), then usage."""
    from providers import Usage, UsageEvent

    llm = OpenAICompatibleProvider(base_url=stub_llm.base_url, model_name=stub_llm.model)
    try:
        items = [d async for d in llm.astream([{"role": "user", "content": "hello"}],
                                              stream_options={"include_usage": True})]
    finally:
        await llm.aclose()
    assert items[-1] == UsageEvent(Usage(1, 1)) and "".join(items[:-1]) == stub_llm.reply
