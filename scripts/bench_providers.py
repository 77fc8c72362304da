#!/usr/bin/env python
"""What the providers cost on top of what they drive, and what concurrency buys, on the tiny LLaVA.

HTTP: a real vLLM OpenAI server. Baseline: the bare `openai.AsyncOpenAI` client sending a JPEG data URL made
beforehand. Against it: `OpenAICompatibleProvider.achat` with the same data URL (the wrapper alone), and with the raw
1280x720 frame (the wrapper plus JPEG encoding in a worker thread).
Native: one in-process `VLLMNativeProvider`; 8 requests one after another against the same 8 at once (the engine
batches them), and the longest event-loop pause while they run.
Every answer is 16 tokens (min_tokens = max_tokens) at temperature 0, so runs compare like with like.

    unshare -n sh -c 'ip link set lo up && ~/.cache/visual-agent/venv/bin/python scripts/bench_providers.py'
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.vllm import native_config, start_vllm_server, stop_vllm_server, vllm_env  # noqa: E402

TOKENS = {"max_tokens": 16}
VLLM_EXTRA = {"min_tokens": 16}


def frame(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(720, 1280, 3), dtype=np.uint8)


async def timed(fn, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - started)
    return out


async def bench_http(base_url: str, model: str, rounds: int) -> list[tuple[str, str, str]]:
    import openai

    from encoders import JpegEncoder
    from providers import OpenAICompatibleProvider

    image = frame()
    url = JpegEncoder(max_side=768).data_url(image)
    raw = openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY")
    llm = OpenAICompatibleProvider({"base_url": base_url, "model_name": model, "temperature": 0.0, **TOKENS})

    def message(img):
        return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": img}} if isinstance(img, str)
                                             else {"type": "image", "image": img}, {"type": "text", "text": "what?"}]}]

    async def bare():
        await raw.chat.completions.create(model=model, messages=message(url), temperature=0.0, extra_body=VLLM_EXTRA, **TOKENS)

    async def wrapped_url():
        await llm.achat(message(url), extra_body=VLLM_EXTRA)

    async def wrapped_frame():
        await llm.achat(message(image), extra_body=VLLM_EXTRA)

    for fn in (bare, wrapped_url, wrapped_frame):  # warm-up
        await fn()
    results = {"bare": [], "url": [], "frame": []}
    for _ in range(3):  # interleaved rounds, so drift hits all three alike
        results["bare"] += await timed(bare, rounds)
        results["url"] += await timed(wrapped_url, rounds)
        results["frame"] += await timed(wrapped_frame, rounds)
    med = {k: statistics.median(v) for k, v in results.items()}
    seq = sum(await timed(wrapped_url, 8))
    started = time.perf_counter()
    await asyncio.gather(*(wrapped_url() for _ in range(8)))
    together = time.perf_counter() - started
    await llm.aclose()
    await raw.close()
    return [
        ("http bare openai client, data URL", f"{med['bare'] * 1000:.1f} ms", "baseline"),
        ("http provider, same data URL", f"{med['url'] * 1000:.1f} ms", f"{med['url'] / med['bare']:.2f}x baseline"),
        ("http provider, raw 1280x720 frame", f"{med['frame'] * 1000:.1f} ms",
         f"{med['frame'] / med['bare']:.2f}x baseline (JPEG in a thread)"),
        ("http 8 sequential / 8 concurrent", f"{seq:.2f} / {together:.2f} s", f"{seq / together:.1f}x throughput"),
    ]


async def bench_native(model_path: Path) -> list[tuple[str, str, str]]:
    from providers import VLLMNativeProvider

    llm = VLLMNativeProvider(native_config(model_path))
    started = time.perf_counter()
    await llm.start()
    start_s = time.perf_counter() - started
    asks = [[{"role": "user", "content": {"text": f"question {i}", "images": [frame(i)]}}] for i in range(8)]
    await llm.achat(asks[0], min_tokens=16)  # warm-up
    started = time.perf_counter()
    alone = [await llm.achat(a, min_tokens=16) for a in asks]
    seq = time.perf_counter() - started
    gaps: list[float] = []

    async def ticker():
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.002)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker(), name="bench-ticker")
    started = time.perf_counter()
    together = await asyncio.gather(*(llm.achat(a, min_tokens=16) for a in asks))
    conc = time.perf_counter() - started
    tick.cancel()
    same = sum(a.token_ids == t.token_ids for a, t in zip(alone, together))
    await llm.aclose()
    return [
        ("native engine start (in-process)", f"{start_s:.1f} s", "vllm import + load + KV cache"),
        ("native one request (16 tokens, 720p frame)", f"{statistics.median(a.latency_s for a in alone) * 1000:.1f} ms",
         "median of 8"),
        ("native 8 sequential / 8 concurrent", f"{seq:.2f} / {conc:.2f} s", f"{seq / conc:.1f}x throughput; {same}/8 same tokens"),
        ("native longest event-loop pause meanwhile", f"{max(gaps) * 1000:.1f} ms", "2 ms ticker"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="requests per path per round (3 rounds)")
    args = parser.parse_args()
    for key, value in vllm_env().items():
        os.environ.setdefault(key, value)
    model_path = Path(os.environ.get("VISUAL_AGENT_CACHE", Path.home() / ".cache" / "visual-agent")) / "tiny-llava"
    if not (model_path / ".complete").exists():
        print(f"no tiny LLaVA at {model_path}: run scripts/setup_test_env.sh", file=sys.stderr)
        return 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        server = start_vllm_server(model_path, Path(tmp) / "server.log")
        try:
            rows.append(("vLLM OpenAI server start", f"{server.start_s:.1f} s", "until /v1/models answers"))
            rows += asyncio.run(bench_http(server.base_url, server.model, args.rounds))
        finally:
            stop_vllm_server(server.process)
    rows += asyncio.run(bench_native(model_path))
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure'.ljust(width)} | value | note |")
    print(f"| {'-' * width} | ----- | ---- |")
    for name, value, note in rows:
        print(f"| {name.ljust(width)} | {value} | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
