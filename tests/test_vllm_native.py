"""VLLMNativeProvider: the real in-process vLLM engine on the tiny LLaVA (one engine for the session)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import numpy as np
import pytest

from providers import (
    BadRequestError,
    EmbeddingShapeError,
    EmbeddingsNotSupportedError,
    MessageFormatError,
    ProviderConnectionError,
    ToolsNotSupportedError,
    UsageEvent,
    VLLMNativeProvider,
    create_provider,
)
from tests.loop_probe import loop_gaps

IMAGE_TOKENS = 16
LM_HIDDEN = 64
FULL = {"min_tokens": 16, "max_tokens": 16}  # always 16 tokens, so comparisons cover a whole answer

vllm = pytest.mark.vllm


def _image(seed: int) -> np.ndarray:
    # 56 x 56: the model's own input size, so no resampling differs between the two paths compared below.
    return np.random.default_rng(seed).integers(0, 256, size=(56, 56, 3), dtype=np.uint8)


def _ask(image=None, embeddings=None, text="what is in the picture?"):
    content = {"text": text}
    if image is not None:
        content["images"] = [image]
    if embeddings is not None:
        content["image_embeddings"] = embeddings
    return [{"role": "user", "content": content}]


@pytest.fixture(scope="module")
def hf_features(tiny_llava_path):
    """`image -> (1, 16, 64)` projected features computed by Hugging Face's LlavaForConditionalGeneration."""
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_path, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(tiny_llava_path)

    def features(image: np.ndarray):
        pixels = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            out = model.get_image_features(
                pixel_values=pixels,
                vision_feature_layer=model.config.vision_feature_layer,
                vision_feature_select_strategy=model.config.vision_feature_select_strategy,
            )
        # transformers 5.x returns a model output whose pooler_output is a list of (tokens, hidden) per image.
        feats = out.pooler_output if hasattr(out, "pooler_output") else out
        return torch.stack(list(feats))

    return features


async def test_vllm_native_embeddings_without_enable_mm_embeds_refused_before_engine_start(tiny_llava_path):
    llm = VLLMNativeProvider({"model_name": str(tiny_llava_path)})
    assert llm.capabilities.image_embeddings is False
    with pytest.raises(EmbeddingsNotSupportedError, match="enable_mm_embeds"):
        await llm.achat(_ask(embeddings=np.zeros((1, IMAGE_TOKENS, LM_HIDDEN), dtype=np.float32)))
    assert llm._worker is None
    await llm.aclose()


async def test_vllm_native_tools_without_parser_refused_before_engine_start(tiny_llava_path):
    llm = create_provider({"provider": "vllm_native", "model_name": str(tiny_llava_path)})
    assert isinstance(llm, VLLMNativeProvider) and llm.capabilities.tools is False
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    with pytest.raises(ToolsNotSupportedError, match="tool_parser"):
        await llm.achat([{"role": "user", "content": "hi"}], tools=tools)
    assert llm._worker is None  # refused without loading the model
    await llm.aclose()


@vllm
@pytest.mark.timeout(300)
def test_vllm_native_start_cancelled_mid_build_loads_one_engine(tiny_llava_path):
    """A first request whose caller gives up while the model loads (a question's timeout) must leave the next
    request waiting for that same engine, not building a second one (vLLM allows one per process: the second
    failed, forever); aclose stops the engine of a cancelled start too. In a child process, because the session
    engine holds this process's one engine slot."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from tests.fixtures.vllm import vllm_env

    root = Path(__file__).resolve().parent.parent
    run = subprocess.run(
        [sys.executable, "-m", "tests.children.vllm_cancelled_start", str(tiny_llava_path)],
        cwd=root, env=vllm_env(), capture_output=True, text=True, timeout=280,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result == {"engines": 1, "tokens": 2, "after_close": 0, "cancelled_then_closed": 0}


def test_vllm_native_engine_args_pass_through_unchanged(tiny_llava_path):
    llm = VLLMNativeProvider(
        {"model_name": "m", "dtype": "float32", "engine_args": {"enforce_eager": True, "dtype": "bfloat16", "seed": 3}}
    )
    args = llm.engine_args()
    assert args["enforce_eager"] is True and args["seed"] == 3 and args["dtype"] == "bfloat16"
    assert args["model"] == "m" and args["enable_mm_embeds"] is False and args["tensor_parallel_size"] == 1


@vllm
@pytest.mark.timeout(180)
async def test_vllm_native_answers_from_raw_image(native_provider):
    assert native_provider.capabilities.image_embeddings and native_provider.capabilities.images
    with_image = await native_provider.achat(_ask(_image(0)), **FULL)
    text_only = await native_provider.achat(_ask(), **FULL)
    assert len(with_image.token_ids) == with_image.usage.completion_tokens == 16
    assert with_image.usage.prompt_tokens - text_only.usage.prompt_tokens >= IMAGE_TOKENS
    assert with_image.token_ids != text_only.token_ids  # the picture changed the answer


@vllm
@pytest.mark.timeout(180)
async def test_vllm_native_hf_features_give_token_identical_answer(native_provider, hf_features):
    import torch

    image = _image(1)
    features = await asyncio.to_thread(hf_features, image)
    assert tuple(features.shape) == (1, IMAGE_TOKENS, LM_HIDDEN)
    from_image = await native_provider.achat(_ask(image), **FULL)
    from_features = await native_provider.achat(_ask(embeddings=features), **FULL)
    as_list = await native_provider.achat(_ask(embeddings=[features[0]]), **FULL)
    assert from_features.token_ids == from_image.token_ids == as_list.token_ids
    assert from_features.usage.prompt_tokens == from_image.usage.prompt_tokens
    # And the embeddings are really what the model reads: other features, another answer.
    other = await native_provider.achat(_ask(embeddings=torch.randn(1, IMAGE_TOKENS, LM_HIDDEN) * 3), **FULL)
    assert other.token_ids != from_image.token_ids


@vllm
@pytest.mark.timeout(180)
async def test_vllm_native_wrong_embedding_shapes_rejected_then_engine_answers(native_provider, hf_features):
    import torch

    image = _image(2)
    before = await native_provider.achat(_ask(image), **FULL)
    cases = {
        "hidden": (torch.randn(1, IMAGE_TOKENS, 32), ["hidden size 32", f"hidden size {LM_HIDDEN}"]),
        "tokens": (torch.randn(1, 15, LM_HIDDEN), ["15 tokens", f"{IMAGE_TOKENS} tokens"]),
        "2-D": (torch.randn(IMAGE_TOKENS, LM_HIDDEN), ["3-D", "embeddings[None]"]),
        "nan": (torch.full((1, IMAGE_TOKENS, LM_HIDDEN), float("nan")), ["NaN"]),
    }
    for name, (embeddings, phrases) in cases.items():
        with pytest.raises(EmbeddingShapeError) as info:
            await native_provider.achat(_ask(embeddings=embeddings))
        assert isinstance(info.value, ValueError)
        for phrase in phrases:
            assert phrase in str(info.value), (name, str(info.value))
    with pytest.raises(MessageFormatError, match="mix"):
        await native_provider.achat(_ask(image, embeddings=torch.randn(1, IMAGE_TOKENS, LM_HIDDEN)))
    after = await native_provider.achat(_ask(image), **FULL)
    assert after.token_ids == before.token_ids


@vllm
@pytest.mark.timeout(180)
async def test_vllm_native_concurrent_calls_each_get_their_own_answer(native_provider, hf_features):
    requests = [_ask(_image(10 + i), text=f"question {i}") for i in range(3)]
    requests.append(_ask(embeddings=await asyncio.to_thread(hf_features, _image(20))))
    alone = [await native_provider.achat(r, **FULL) for r in requests]
    assert len({a.token_ids for a in alone}) == len(alone)  # different prompts, different answers
    together = await asyncio.gather(*(native_provider.achat(r, **FULL) for r in requests))
    assert [t.token_ids for t in together] == [a.token_ids for a in alone]


@vllm
@pytest.mark.timeout(180)
async def test_vllm_native_concurrent_calls_batched_off_the_loop(native_provider):
    long = {"max_tokens": 200, "min_tokens": 200}
    with _engine_steps(native_provider) as steps:
        await native_provider.achat(_ask(_image(30)), **long)
        alone = steps.count
        started = time.monotonic()
        async with loop_gaps(0.005) as probe:
            await asyncio.gather(*(native_provider.achat(_ask(_image(30 + i)), **long) for i in range(4)))
        elapsed = time.monotonic() - started
        together = steps.count - alone
    # The loop kept ticking through the generation: the engine ran beside it, not on it (on the loop, one pause
    # would last the whole generation). Half of it leaves room for a loaded machine's scheduling.
    assert probe.max < elapsed / 2, f"the loop stalled {probe.max:.3f} s during {elapsed:.2f} s of generation"
    # Four requests decoded together, in the engine steps of about one (one after another would take 4x as many).
    assert together < 2 * alone, f"4 concurrent took {together} engine steps, one alone {alone}: not batched"


class _StepCount:
    count = 0


@contextlib.contextmanager
def _engine_steps(provider: VLLMNativeProvider) -> Iterator[_StepCount]:
    """Count the engine's steps (one step decodes a token for every request in the batch) while inside."""
    engine = provider._worker.engine
    step, counted = engine.step, _StepCount()

    def counting_step():
        counted.count += 1
        return step()

    engine.step = counting_step
    try:
        yield counted
    finally:
        del engine.step  # the class's own again (the engine is the session's)


@vllm
@pytest.mark.timeout(180)
async def test_vllm_native_streams_tokens(native_provider):
    messages = _ask(_image(3))
    deltas = [d async for d in native_provider.astream(messages, **FULL)]
    whole = await native_provider.achat(messages, **FULL)
    assert len(deltas) >= 2 and "".join(deltas) == whole.text


@vllm
@pytest.mark.timeout(180)
async def test_vllm_native_streamed_usage_when_asked(native_provider):
    """The engine's own counts, last, when `stream_options` asks for them: the same as `achat` reports."""
    messages = _ask(_image(5))
    items = [d async for d in native_provider.astream(messages, stream_options={"include_usage": True}, **FULL)]
    whole = await native_provider.achat(messages, **FULL)
    assert isinstance(items[-1], UsageEvent) and items[-1].usage == whole.usage
    assert whole.usage.completion_tokens == 16 and whole.usage.prompt_tokens > IMAGE_TOKENS
    assert "".join(items[:-1]) == whole.text


@vllm
@pytest.mark.timeout(180)
async def test_vllm_native_stream_stopped_early_frees_engine(native_provider):
    messages = _ask(_image(4))
    expected = await native_provider.achat(messages, **FULL)
    stream = native_provider.astream(messages, max_tokens=200, min_tokens=200)
    async for _ in stream:
        break
    await stream.aclose()
    again = await native_provider.achat(messages, **FULL)
    assert again.token_ids == expected.token_ids


@vllm
@pytest.mark.timeout(180)
async def test_vllm_native_tool_call_parsed_by_vllm_parser(native_provider):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ]
    plain = await native_provider.achat([{"role": "user", "content": "weather?"}], **FULL)
    # The random model cannot choose to call a tool, so structured output makes it write one in the
    # pythonic format; the provider must render the tools and parse the call with vLLM's parser.
    response = await native_provider.achat(
        [{"role": "user", "content": "weather?"}],
        tools=tools,
        max_tokens=40,
        structured_outputs={"regex": r"\[get_weather\(city='(Paris|Rome)'\)\]"},
    )
    assert response.usage.prompt_tokens > plain.usage.prompt_tokens  # the tools were rendered into the prompt
    assert [c.name for c in response.tool_calls] == ["get_weather"]
    assert response.tool_calls[0].args["city"] in ("Paris", "Rome")
    assert response.finish_reason == "tool_calls" and response.text == ""


@vllm
@pytest.mark.timeout(180)
async def test_vllm_native_reads_png_from_url_bytes_and_data_url(native_provider):
    import base64
    import io

    from aiohttp import web
    from PIL import Image

    image = _image(5)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")  # lossless: every form carries the same pixels
    png = buffer.getvalue()
    app = web.Application()
    app.router.add_get("/frame.png", lambda request: web.Response(body=png, content_type="image/png"))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/frame.png"
    try:
        expected = await native_provider.achat(_ask(image), **FULL)
        forms = [png, url, "data:image/png;base64," + base64.b64encode(png).decode(), Image.open(io.BytesIO(png))]
        for form in forms:
            response = await native_provider.achat(_ask(form), **FULL)
            assert response.token_ids == expected.token_ids, type(form)
        with pytest.raises(ProviderConnectionError) as info:
            await native_provider.achat(_ask(url.replace("frame", "missing")))
        assert info.value.status == 404
    finally:
        await runner.cleanup()


@vllm
@pytest.mark.timeout(180)
async def test_vllm_native_malformed_options_are_bad_requests(native_provider):
    # The HTTP providers send these to the server, which answers 400 (BadRequestError); in-process they must
    # be the same clear error, not a KeyError/TypeError from deep inside.
    cases = [
        {"response_format": {"type": "json_schema"}},  # no json_schema
        {"response_format": "json"},
        {"structured_outputs": {"jsn": {"type": "object"}}},
        {"top_p": 5},  # vLLM's own validation errors are no ValueError
    ]
    for opts in cases:
        with pytest.raises(BadRequestError):
            await native_provider.achat([{"role": "user", "content": "hi"}], **opts)
    with pytest.raises(BadRequestError, match="refused"):  # longer than max_model_len: refused by the engine
        await native_provider.achat([{"role": "user", "content": "word " * 2000}])
    answer = await native_provider.achat(
        [{"role": "user", "content": "hi"}], max_tokens=2, response_format={"type": "json_object"}
    )
    assert answer.usage.completion_tokens >= 1


@vllm
@pytest.mark.timeout(180)
async def test_vllm_native_cpu_thread_warning_not_repeated_per_image_request(native_provider):
    # vLLM's CPU worker replaces torch.set_num_threads, process-wide, by a function that logs a warning, and
    # vLLM's own renderer calls it twice around every multimodal request: two warnings per question.
    import logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("vllm.v1.worker.cpu_worker")
    logger.addHandler(handler)
    try:
        for i in range(3):
            await native_provider.achat(_ask(_image(40 + i)), max_tokens=1)
    finally:
        logger.removeHandler(handler)
    assert not [r for r in records if "torch.set_num_threads" in r.getMessage()]


@vllm
@pytest.mark.timeout(300)
def test_vllm_native_request_submitted_as_the_engine_fails_gets_an_error_not_silence(tiny_llava_path):
    """A request put on the engine's queue just after the engine thread failed and drained it was never answered:
    its caller waited forever. In a child process, because the engine is made to fail."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from tests.fixtures.vllm import vllm_env

    root = Path(__file__).resolve().parent.parent
    run = subprocess.run(
        [sys.executable, "-m", "tests.children.vllm_fails_during_submit", str(tiny_llava_path)],
        cwd=root, env=vllm_env(), capture_output=True, text=True, timeout=280,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    outcome = json.loads(run.stdout.strip().splitlines()[-1])["outcome"]
    assert outcome.startswith("EngineError") and "engine died" in outcome, outcome
