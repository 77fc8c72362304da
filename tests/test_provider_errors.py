"""Error paths of the HTTP providers against real local HTTP servers (aiohttp on 127.0.0.1), one per failure."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from aiohttp import web

from providers import (
    AuthenticationError,
    BadRequestError,
    ModelNotFoundError,
    OpenAICompatibleProvider,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitedError,
    ServerError,
    VLLMProvider,
    create_provider,
)
from tests.ports import free_tcp_port

SECRET = "sk-test-7f3a9c1e5b2d4f6a8c0e"
SLOW_S = 3.0


def _completion(text: str = "hello there", model: str = "stand-in", tool_calls=None) -> dict:
    message = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if tool_calls else "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


class Upstream:
    """A small OpenAI-shaped HTTP server whose behaviour is picked by the first path segment."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.bodies: dict[str, list[dict]] = {}
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        scenario = request.match_info["scenario"]
        self.hits[scenario] = self.hits.get(scenario, 0) + 1
        if request.can_read_body:
            self.bodies.setdefault(scenario, []).append(await request.json())
        kind = scenario.split("-")[0]
        if kind == "nomodels":
            return web.json_response({"object": "list", "data": []})
        if kind == "ok":
            return web.json_response(_completion())
        if kind == "auth":
            # Like real services, echo the key back in the error: the provider must scrub it.
            key = request.headers.get("Authorization", "").removeprefix("Bearer ")
            return web.json_response({"error": {"message": f"Incorrect API key provided: {key}"}}, status=401)
        if kind == "ratelimitonce" and self.hits[scenario] == 1:
            return web.json_response({"error": {"message": "slow down"}}, status=429, headers={"Retry-After": "1"})
        if kind == "ratelimitonce":
            return web.json_response(_completion())
        if kind == "ratelimit":
            return web.json_response({"error": {"message": "slow down"}}, status=429, headers={"Retry-After": "1"})
        if kind == "boom":
            return web.json_response({"error": {"message": "internal failure"}}, status=500)
        if kind == "badmodel":
            return web.json_response({"error": {"message": "model nope does not exist"}}, status=404)
        if kind == "slow":
            await asyncio.sleep(SLOW_S)
            return web.json_response(_completion())
        if kind == "tools":
            call = {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})},
            }
            return web.json_response(_completion(text="", tool_calls=[call]))
        return web.json_response({"error": {"message": f"no scenario {scenario}"}}, status=400)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{scenario}/v1/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    def url(self, scenario: str) -> str:
        return f"http://127.0.0.1:{self.port}/{scenario}/v1"


@pytest.fixture(scope="module")
async def upstream():
    server = Upstream()
    await server.start()
    yield server
    await server.runner.cleanup()


def _provider(base_url: str, **config) -> OpenAICompatibleProvider:
    return OpenAICompatibleProvider(
        {"base_url": base_url, "api_key": SECRET, "model_name": "stand-in", "max_retries": 0, "timeout": 5, **config}
    )


def _assert_no_secret(exc: BaseException, caplog) -> None:
    for text in (str(exc), repr(exc), caplog.text, *(str(a) for a in exc.args)):
        assert SECRET not in text


HELLO = [{"role": "user", "content": "hi"}]


@pytest.mark.timeout(20)
async def test_openai_compatible_answers_from_local_server(upstream):
    async with _provider(upstream.url("ok-basic")) as llm:
        response = await llm.achat(HELLO, temperature=0.1)
    assert str(response) == response.text == "hello there"
    assert response.usage.total_tokens == 7 and response.model == "stand-in" and response.latency_s > 0
    sent = upstream.bodies["ok-basic"][0]
    assert sent["temperature"] == 0.1 and sent["messages"] == HELLO and sent["model"] == "stand-in"


@pytest.mark.timeout(20)
async def test_openai_compatible_unreachable_port_is_connection_error(caplog):
    caplog.set_level(logging.DEBUG)
    url = f"http://127.0.0.1:{free_tcp_port()}/v1"
    async with _provider(url, timeout=3) as llm:
        with pytest.raises(ProviderConnectionError) as info:  # refused at once: a connection error, not a timeout
            await llm.achat(HELLO)
    assert info.value.endpoint == url and info.value.status is None
    _assert_no_secret(info.value, caplog)


@pytest.mark.timeout(20)
async def test_openai_compatible_401_is_authentication_error_without_key(upstream, caplog):
    caplog.set_level(logging.DEBUG)
    async with _provider(upstream.url("auth")) as llm:
        with pytest.raises(AuthenticationError) as info:
            await llm.achat(HELLO)
        assert SECRET not in repr(llm) and SECRET not in repr(llm.config)
    assert info.value.status == 401 and info.value.endpoint == upstream.url("auth")
    assert "Incorrect API key provided: ***" in str(info.value)  # the echoed key was scrubbed
    _assert_no_secret(info.value, caplog)


@pytest.mark.timeout(20)
async def test_openai_compatible_429_retry_after_is_honoured_by_retries(upstream):
    async with _provider(upstream.url("ratelimitonce-a"), max_retries=2) as llm:
        started = time.monotonic()
        response = await llm.achat(HELLO)
        elapsed = time.monotonic() - started
    assert response.text == "hello there"
    assert upstream.hits["ratelimitonce-a"] == 2
    assert elapsed >= 0.95  # waited the server's Retry-After: 1, not the client's own short backoff


@pytest.mark.timeout(20)
async def test_openai_compatible_429_when_retries_run_out_is_rate_limited(upstream, caplog):
    caplog.set_level(logging.DEBUG)
    async with _provider(upstream.url("ratelimit-b"), max_retries=1) as llm:
        started = time.monotonic()
        with pytest.raises(RateLimitedError) as info:
            await llm.achat(HELLO)
        elapsed = time.monotonic() - started
    assert upstream.hits["ratelimit-b"] == 2 and elapsed >= 0.95
    assert info.value.retry_after == 1.0 and info.value.status == 429
    _assert_no_secret(info.value, caplog)


@pytest.mark.timeout(20)
async def test_openai_compatible_500_is_server_error(upstream, caplog):
    caplog.set_level(logging.DEBUG)
    async with _provider(upstream.url("boom")) as llm:
        with pytest.raises(ServerError) as info:
            await llm.achat(HELLO)
    assert info.value.status == 500 and "internal failure" in str(info.value)
    _assert_no_secret(info.value, caplog)


@pytest.mark.timeout(20)
async def test_openai_compatible_404_is_bad_request(upstream):
    async with _provider(upstream.url("badmodel")) as llm:
        with pytest.raises(BadRequestError) as info:
            await llm.achat(HELLO)
    assert info.value.status == 404


@pytest.mark.timeout(20)
async def test_openai_compatible_slow_answer_is_timeout_within_timeout(upstream, caplog):
    caplog.set_level(logging.DEBUG)
    async with _provider(upstream.url("slow"), timeout=0.5) as llm:
        started = time.monotonic()
        with pytest.raises(ProviderTimeoutError) as info:
            await llm.achat(HELLO)
        elapsed = time.monotonic() - started
    # waited its own timeout; had it waited for the server (SLOW_S), the answer would have come instead of an error
    assert elapsed >= 0.4
    _assert_no_secret(info.value, caplog)


@pytest.mark.timeout(20)
async def test_openai_compatible_stream_errors_are_translated(upstream):
    async with _provider(upstream.url("boom")) as llm:
        with pytest.raises(ServerError):
            async for _ in llm.astream(HELLO):
                pass


@pytest.mark.timeout(20)
async def test_openai_compatible_tools_pass_through_and_calls_parse(upstream):
    tools = [
        {
            "type": "function",
            "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
        }
    ]
    async with _provider(upstream.url("tools")) as llm:
        response = await llm.achat(HELLO, tools=tools, tool_choice="auto")
    assert upstream.bodies["tools"][0]["tools"] == tools and upstream.bodies["tools"][0]["tool_choice"] == "auto"
    assert [(c.id, c.name, c.args) for c in response.tool_calls] == [("call_1", "get_weather", {"city": "Paris"})]
    assert response.finish_reason == "tool_calls" and response.text == ""


@pytest.mark.timeout(20)
async def test_openai_compatible_unknown_option_is_refused_before_sending(upstream):
    async with _provider(upstream.url("ok-unknown")) as llm:
        with pytest.raises(TypeError, match="top_k"):
            await llm.achat(HELLO, top_k=5)
    assert "ok-unknown" not in upstream.hits


@pytest.mark.timeout(20)
async def test_vllm_provider_extras_travel_in_body(upstream):
    config = {"provider": "vllm", "vllm_base_url": upstream.url("ok-extras"), "model_name": "m", "top_k": 7}
    async with create_provider(config) as llm:
        assert isinstance(llm, VLLMProvider)
        await llm.achat(HELLO, repetition_penalty=1.2, guided_json={"type": "object"}, extra_body={"min_tokens": 2})
    sent = upstream.bodies["ok-extras"][0]
    assert sent["top_k"] == 7 and sent["repetition_penalty"] == 1.2 and sent["min_tokens"] == 2
    assert sent["structured_outputs"] == {"json": {"type": "object"}} and "guided_json" not in sent


@pytest.mark.timeout(20)
async def test_openai_compatible_aclose_is_idempotent_and_final(upstream):
    llm = _provider(upstream.url("ok-close"))
    await llm.aclose()
    await llm.aclose()
    with pytest.raises(ProviderError, match="closed"):
        await llm.achat(HELLO)


@pytest.mark.timeout(20)
async def test_vllm_provider_server_without_models_is_model_not_found(upstream):
    async with VLLMProvider({"vllm_base_url": upstream.url("nomodels")}) as llm:
        with pytest.raises(ModelNotFoundError, match="model_name"):
            await llm.achat(HELLO)
    assert upstream.hits["nomodels"] == 1  # asked /v1/models, sent no chat request


@pytest.mark.timeout(20)
async def test_openai_compatible_header_secrets_stay_out_of_errors_and_logs(upstream, caplog):
    caplog.set_level(logging.DEBUG)
    header_secret = "hdr-secret-5e8d1c"
    async with _provider(upstream.url("auth-h"), default_headers={"X-Api-Token": header_secret}) as llm:
        with pytest.raises(AuthenticationError) as info:
            await llm.achat(HELLO)
        assert header_secret not in repr(llm.config)
    assert header_secret not in str(info.value) + repr(info.value) + caplog.text
    _assert_no_secret(info.value, caplog)
