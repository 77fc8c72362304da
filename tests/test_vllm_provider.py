"""VLLMProvider against a real vLLM OpenAI-compatible server: URL forms, model auto-detection, vLLM extras."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from providers import (
    EmbeddingsNotSupportedError,
    ProviderConfigError,
    VLLMProvider,
    create_provider,
    normalize_vllm_base_url,
)
from tests.waiting import wait_until

HELLO = [{"role": "user", "content": "hello"}]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://h:8001", "http://h:8001/v1"),
        ("http://h:8001/", "http://h:8001/v1"),
        ("http://h:8001/v1", "http://h:8001/v1"),
        ("http://h:8001/v1/", "http://h:8001/v1"),
        (" https://gpu.example/vllm/ ", "https://gpu.example/vllm/v1"),
    ],
)
def test_normalize_vllm_base_url_forms(given, expected):
    assert normalize_vllm_base_url(given) == expected


@pytest.mark.parametrize("bad", ["", "localhost:8000", None])
def test_normalize_vllm_base_url_refuses_bad(bad):
    with pytest.raises(ProviderConfigError):
        normalize_vllm_base_url(bad)


def test_vllm_provider_init_does_no_network():
    # Port 9 on loopback has nothing listening: an __init__ that asked /v1/models would fail here.
    llm = VLLMProvider({"vllm_base_url": "http://127.0.0.1:9"})
    assert llm.model is None and llm.base_url == "http://127.0.0.1:9/v1"


@pytest.mark.vllm
@pytest.mark.timeout(120)
@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
async def test_vllm_provider_every_url_form_reaches_server(vllm_server, suffix):
    async with VLLMProvider({"vllm_base_url": f"http://127.0.0.1:{vllm_server.port}{suffix}", "max_tokens": 4}) as llm:
        assert llm.base_url == vllm_server.base_url
        assert await llm.list_models() == [vllm_server.model]
        response = await llm.achat(HELLO)
    assert response.usage.completion_tokens >= 1


def _models_requests(log_path) -> int:
    return log_path.read_text(errors="replace").count('"GET /v1/models HTTP')


def _chat_requests(log_path) -> int:
    return log_path.read_text(errors="replace").count('"POST /v1/chat/completions HTTP')


@pytest.mark.vllm
@pytest.mark.timeout(120)
async def test_vllm_provider_detects_model_once(vllm_server):
    llm = create_provider({"provider": "vllm", "vllm_base_url": vllm_server.base_url, "max_tokens": 4})
    assert isinstance(llm, VLLMProvider) and llm.model is None
    before = _models_requests(vllm_server.log_path)
    chats_before = _chat_requests(vllm_server.log_path)
    responses = await asyncio.gather(*(llm.achat(HELLO) for _ in range(3)))
    await llm.achat(HELLO)
    await llm.aclose()
    # the access log has all four chats: every request made before them is logged too
    await wait_until(lambda: _chat_requests(vllm_server.log_path) - chats_before >= 4, what="four chats in the log")
    assert llm.model == vllm_server.model and {r.model for r in responses} == {vllm_server.model}
    assert _models_requests(vllm_server.log_path) - before == 1


@pytest.mark.vllm
@pytest.mark.timeout(120)
async def test_vllm_provider_structured_output_follows_schema(vllm_server):
    schema = {
        "type": "object",
        "properties": {"answer": {"enum": ["yes", "no"]}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    config = {"vllm_base_url": vllm_server.base_url, "guided_json": schema, "temperature": 0.0, "max_tokens": 32}
    async with VLLMProvider(config) as llm:
        # A random model cannot write this JSON by chance: the server enforced the schema sent in extra_body.
        response = await llm.achat(HELLO, extra_body={"structured_outputs": {"json": schema, "disable_any_whitespace": True}})
    assert json.loads(response.text)["answer"] in ("yes", "no")


@pytest.mark.vllm
@pytest.mark.timeout(120)
async def test_vllm_provider_sampling_extras_accepted(vllm_server):
    async with VLLMProvider({"vllm_base_url": vllm_server.base_url, "top_k": 5, "repetition_penalty": 1.3}) as llm:
        response = await llm.achat(HELLO, max_tokens=6, min_p=0.01, extra_body={"min_tokens": 6})
    assert response.usage.completion_tokens == 6  # min_tokens reached the server through extra_body


@pytest.mark.vllm
@pytest.mark.timeout(120)
async def test_vllm_provider_refuses_embeddings_naming_native(vllm_server):
    async with VLLMProvider({"vllm_base_url": vllm_server.base_url, "max_tokens": 4}) as llm:
        assert llm.capabilities.image_embeddings is False
        with pytest.raises(EmbeddingsNotSupportedError) as info:
            await llm.achat([{"role": "user", "content": {"text": "hi", "image_embeddings": np.zeros((1, 16, 64))}}])
        assert "VLLMNativeProvider" in str(info.value) and "VLLMProvider" in str(info.value)
        assert (await llm.achat(HELLO)).usage.completion_tokens >= 1
