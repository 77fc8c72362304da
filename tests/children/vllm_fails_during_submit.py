"""A request put on the engine's queue just after the engine thread failed and drained it: prints its outcome
(`answered`, `EngineError: ...` or `hung`; argv[1]: the tiny LLaVA)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from providers import EngineError, VLLMNativeProvider
from providers.engine_worker import _Abort, _Add
from tests.fixtures.vllm import native_config


async def main() -> None:
    llm = VLLMNativeProvider(native_config(Path(sys.argv[1])))
    await llm.start()
    worker = llm._worker
    assert worker is not None
    commands, engine, thread = worker._commands, worker.engine, worker._thread

    def engine_dies():
        raise RuntimeError("engine died")

    class Racing:  # the engine thread fails and drains its queue just after submit() found it running
        get, get_nowait = commands.get, commands.get_nowait

        @staticmethod
        def put(command):
            if isinstance(command, _Add):
                engine.has_unfinished_requests = engine_dies
                commands.put(_Abort("wake-up"))
                thread.join()
            commands.put(command)

    worker._commands = Racing()  # type: ignore[assignment]  # the queue, with a racing put
    try:
        await asyncio.wait_for(llm.achat([{"role": "user", "content": "hi"}], max_tokens=2), 20)
        outcome = "answered"
    except EngineError as exc:
        outcome = "EngineError: " + str(exc)
    except TimeoutError:
        outcome = "hung"
    print(json.dumps({"outcome": outcome}))


if __name__ == "__main__":
    asyncio.run(main())
