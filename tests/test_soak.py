"""The short soak: `scripts/soak.py` for 28 s (reconnects every 5 s, a question twice a second, a small stream),
asserting that the counts that would leak (fds, asyncio tasks, threads, peers, buffers) are back to
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
    """A reconnect and some fifteen questions before the warm-up snapshot (at 9 s), then three more reconnects (at
    least two on a starved machine) and some 35 questions before the end: a leak of one fd, task, thread, peer or
    buffer per reconnect or per question shows in `grown()`. The 45 s run this replaces had the same reconnects
    after warm-up, 10 s apart: the interval is not what leaks, the reconnects and questions are."""
    soak = _soak_module()
    report = await soak.soak(seconds=28, warmup_s=9, reconnect_s=5, ask_every_s=0.5, width=160, height=120, fps=15,
                             broker=(running_mosquitto.host, running_mosquitto.port), log=print)
    print(report.table())
    assert report.reconnects >= 3 and report.questions >= 40
    assert report.unanswered == 0
    end = report.snapshot("end")
    # a starved machine may make a question wait past max_in_flight (a `busy` answer, still one answer); nothing else
    assert set(end.errors) <= {"busy"}, end.errors
    assert end.answers == report.questions + 3  # the three warm-up questions, then one answer per question
    assert report.grown() == {}, report.table()
