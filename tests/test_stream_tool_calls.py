"""Tool calls while streaming: `astream` yields text deltas (`str`) and, only when tools were passed, one
`ToolCallsEvent` with the complete calls at the end. Against a real vLLM server started with a tool parser, and the
in-process engine.

The random tiny LLaVA cannot choose to call a tool, so a regex (structured output) makes it write one in the
`pythonic` format; the server's / engine's parser turns it into a call, streamed in pieces and assembled here.
"""

from __future__ import annotations

import pytest

from providers import OpenAICompatibleProvider, ToolCall, ToolCallsEvent
from providers.streaming import ToolCallAssembler
from tests.fixtures.vllm import ServerStartError, start_vllm_server, stop_vllm_server

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


@pytest.fixture(scope="module")
def tool_server(tiny_llava_path, tmp_path_factory):
    """A real vLLM OpenAI server on the tiny LLaVA with auto tool choice and the pythonic parser."""
    pytest.importorskip("vllm")
    log_path = tmp_path_factory.mktemp("vllm-tools") / "server.log"
    try:
        server = start_vllm_server(
            tiny_llava_path, log_path, extra_args=("--enable-auto-tool-choice", "--tool-call-parser", "pythonic")
        )
    except ServerStartError as exc:
        pytest.fail(str(exc))
    try:
        yield server
    finally:
        stop_vllm_server(server.process)


@pytest.mark.vllm
@pytest.mark.timeout(300)
async def test_openai_compatible_astream_yields_assembled_tool_calls_from_vllm_server(tool_server):
    async with OpenAICompatibleProvider(
        {"base_url": tool_server.base_url, "api_key": "none", "model_name": tool_server.model, "temperature": 0}
    ) as llm:
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
    async with OpenAICompatibleProvider(
        {"base_url": tool_server.base_url, "api_key": "none", "model_name": tool_server.model, "temperature": 0}
    ) as llm:
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
