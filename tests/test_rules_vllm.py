"""The rules' structured-output path against the real vLLM server on the tiny LLaVA: each check's answer is valid
JSON of the schema and parses as yes or no (the random model's choice and wording are not asserted)."""

from __future__ import annotations

import asyncio
import json
import time

import av
import numpy as np
import pytest

from providers import create_provider
from tests.fixtures.frames import Buffers
from visual_agent.agent import VisualAgent
from visual_agent.rules import RuleConfig, RuleEngine
from visual_agent.rules.answer import RULE_SYSTEM_PROMPT, parse_answer, structured_options

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(300)]


async def test_rules_structured_answers_from_the_real_vllm_server_parse(vllm_server):
    llm = create_provider({"provider": "vllm", "base_url": vllm_server.base_url, "temperature": 0.7})
    source = Buffers("cam", max_frames=4)
    agent = VisualAgent(llm=llm, webrtc_driver=source)
    rule = RuleConfig(name="person", source="cam", question="Is a person in the picture?", check_every_s=0.5,
                      only_on_change=False, lookback_s=0)
    engine = RuleEngine(agent, [rule])
    rng = np.random.default_rng(0)
    feeding = True

    async def feed() -> None:
        while feeding:
            source.get_buffer("cam").put(av.VideoFrame.from_ndarray(rng.integers(0, 255, (96, 128, 3), np.uint8), format="rgb24"))
            await asyncio.sleep(0.1)

    feeder = asyncio.create_task(feed())
    try:
        await engine.start()
        runtime = engine.rules()[0]
        deadline = time.monotonic() + 120
        while runtime.checks < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert runtime.checks >= 3, f"only {runtime.checks} checks; last error {runtime.error}"
        assert runtime.errors == 0, runtime.error
        assert runtime.unparsable == 0, runtime.reason  # structured output: always the schema JSON
        assert runtime.answer in (True, False) and runtime.model
    finally:
        feeding = False
        await feeder
        await engine.close()
        await agent.close(grace_s=0)
        await llm.aclose()


async def test_rules_structured_output_request_gives_schema_json(vllm_server):
    llm = create_provider({"provider": "vllm", "base_url": vllm_server.base_url})
    frame = np.zeros((64, 64, 3), np.uint8)
    messages = [{"role": "system", "content": RULE_SYSTEM_PROMPT},
                {"role": "user", "content": {"text": "Is the picture dark?", "images": [frame]}}]
    try:
        for _ in range(3):
            response = await llm.achat(messages, max_tokens=192, temperature=1.0, **structured_options(llm))
            data = json.loads(response.text, strict=False)  # the whole JSON, not only a salvaged verdict
            assert set(data) == {"answer", "reason"} and data["answer"] in (True, False), response.text
            answer, reason = parse_answer(response.text)
            assert answer is data["answer"]
            assert isinstance(reason, str)
    finally:
        await llm.aclose()


async def test_rules_structured_output_from_the_native_engine(native_provider):
    """The in-process engine takes the same `structured_outputs` as its own SamplingParams."""
    frame = np.zeros((64, 64, 3), np.uint8)
    messages = [{"role": "system", "content": RULE_SYSTEM_PROMPT},
                {"role": "user", "content": {"text": "Is the picture dark?", "images": [frame]}}]
    options = structured_options(native_provider)
    assert "structured_outputs" in options
    for _ in range(2):
        response = await native_provider.achat(messages, max_tokens=192, temperature=1.0, **options)
        data = json.loads(response.text, strict=False)
        assert set(data) == {"answer", "reason"} and data["answer"] in (True, False), response.text
        assert parse_answer(response.text)[0] is data["answer"]
