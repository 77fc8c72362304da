"""Context-length discovery and refusals: `ContextLengthError` from any server's wording, `context_length()`."""

from __future__ import annotations

import pytest

from providers import BadRequestError, ContextLengthError, OpenAICompatibleProvider, ProviderConfigError
from providers.errors import context_length_error


@pytest.mark.parametrize(
    "message, limit, input_tokens, at_least",
    [
        ("This model's maximum context length is 256 tokens. However, your prompt contains at least 257 input "
         "tokens, which exceeds this limit even without any output tokens.", 256, 257, True),
        ("This model's maximum context length is 512 tokens. However, your prompt contains 600 input tokens, "
         "which exceeds this limit", 512, 600, False),
        ("Input length (518) exceeds model's maximum context length (512).", 512, 518, False),
        ("The decoder prompt (length 600) is longer than the maximum model length of 512. Make sure that "
         "`max_model_len` is no smaller than the number of text tokens.", 512, 600, False),
        ("max_tokens=512 cannot be greater than max_model_len=256. Please request fewer output tokens.", 256, None,
         False),
        ("This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
         8192, 9000, False),
        ("max_tokens must be at least 1, got 0.", None, None, False),
    ],
)
def test_context_length_error_reads_each_servers_wording(message, limit, input_tokens, at_least):
    err = context_length_error(message, endpoint="http://x/v1", status=400)
    assert isinstance(err, ContextLengthError) and isinstance(err, BadRequestError)
    assert (err.limit, err.input_tokens, err.input_at_least) == (limit, input_tokens, at_least)
    assert err.status == 400 and err.endpoint == "http://x/v1"


@pytest.mark.parametrize("message", ["model 'x' not found", "temperature must be >= 0", "unknown field 'foo'"])
def test_context_length_error_is_none_for_other_refusals(message):
    assert context_length_error(message) is None


def test_translate_openai_error_gives_context_length_error():
    import httpx
    import openai

    from providers.errors import translate_openai_error

    request = httpx.Request("POST", "http://x/v1/chat/completions")
    response = httpx.Response(400, request=request, json={"error": {"message": "Input length (518) exceeds model's "
                                                                    "maximum context length (512)."}})
    exc = openai.BadRequestError("Input length (518) exceeds model's maximum context length (512).",
                                 response=response, body=None)
    err = translate_openai_error(exc, endpoint="http://x/v1")
    assert isinstance(err, ContextLengthError) and err.limit == 512 and err.input_tokens == 518


async def test_openai_compatible_context_length_is_the_configured_one():
    p = OpenAICompatibleProvider({"base_url": "http://127.0.0.1:9/v1", "model_name": "m", "context_tokens": 4096,
                                  "image_tokens": 576})
    try:
        assert await p.context_length() == 4096 and p.image_tokens() == 576
    finally:
        await p.aclose()
    q = OpenAICompatibleProvider({"base_url": "http://127.0.0.1:9/v1", "model_name": "m"})
    try:
        assert await q.context_length() is None and q.image_tokens() is None
    finally:
        await q.aclose()


@pytest.mark.parametrize("key, value", [("context_tokens", 0), ("image_tokens", -1), ("context_tokens", "4k")])
def test_token_count_config_is_checked(key, value):
    with pytest.raises(ProviderConfigError, match=key):
        OpenAICompatibleProvider({"base_url": "http://127.0.0.1:9/v1", "model_name": "m", key: value})


@pytest.mark.vllm
async def test_native_engine_knows_its_context_and_refuses_past_it_with_context_length_error(native_provider):
    assert await native_provider.context_length() == 512
    assert native_provider.image_tokens() == 16  # the tiny LLaVA's image tokens
    with pytest.raises(ContextLengthError) as info:
        await native_provider.achat([{"role": "user", "content": "why " * 600}])
    assert info.value.limit == 512 and info.value.input_tokens and info.value.input_tokens > 512
