"""A start of the in-process engine cancelled while the model loads, then started again, then closed; and another
provider's cancelled start, closed. Prints the engine threads seen at each point (argv[1]: the tiny LLaVA)."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from pathlib import Path

from providers import VLLMNativeProvider
from tests.fixtures.vllm import native_config
from tests.waiting import wait_until


def threads(llm: VLLMNativeProvider) -> int:
    return sum(t.name == f"vllm-engine-{llm._prefix}" for t in threading.enumerate())


async def cancelled_start(llm: VLLMNativeProvider) -> None:
    task = asyncio.create_task(llm.start())
    await wait_until(lambda: threads(llm), 120, what="the engine thread started")
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


async def main() -> None:
    llm = VLLMNativeProvider(native_config(Path(sys.argv[1])))
    await cancelled_start(llm)
    await llm.start()
    engines = threads(llm)
    answer = await llm.achat([{"role": "user", "content": "hi"}], max_tokens=2)
    assert answer.usage is not None
    await llm.aclose()
    after_close = threads(llm)
    other = VLLMNativeProvider(native_config(Path(sys.argv[1])))
    await cancelled_start(other)
    await other.aclose()
    print(json.dumps({"engines": engines, "tokens": answer.usage.completion_tokens,
                      "after_close": after_close, "cancelled_then_closed": threads(other)}))


if __name__ == "__main__":
    asyncio.run(main())
