"""The short soak: `scripts/soak.py` for well under a minute (reconnects every 10 s, a question twice a second, a
small stream), asserting that the counts that would leak (fds, asyncio tasks, threads, peers, buffers) are back to
their post-warm-up baseline at the end and that every question got exactly one answer. RSS is left to the full run
(BENCHMARKS.md): a short run says nothing about memory growth. The LLM is the soak's STAND-IN (tests/fixtures/llm_stub.py).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.mqtt, pytest.mark.webrtc, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[1]


def _soak_module():
    spec = importlib.util.spec_from_file_location("soak_script", ROOT / "scripts" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


async def test_soak_short_counts_return_to_baseline(running_mosquitto):
    soak = _soak_module()
    report = await soak.soak(seconds=45, warmup_s=15, reconnect_s=10, ask_every_s=0.5, width=160, height=120, fps=15,
                             broker=(running_mosquitto.host, running_mosquitto.port), log=print)
    print(report.table())
    assert report.reconnects >= 3 and report.questions >= 60
    assert report.unanswered == 0
    end = report.snapshot("end")
    # a starved machine may make a question wait past max_in_flight (a `busy` answer, still one answer); nothing else
    assert set(end.errors) <= {"busy"}, end.errors
    assert end.answers == report.questions + 3  # the three warm-up questions, then one answer per question
    assert report.grown() == {}, report.table()
