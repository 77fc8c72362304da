"""webrtc.heap: freed C-heap memory goes back to the kernel after a peer ends (scripts/soak.py measured the growth)."""

from __future__ import annotations

import threading

import psutil

from webrtc.heap import trim_heap


def _churn_in_a_thread() -> None:
    """What a decoder thread does: many malloc'd blocks in its own arena, then freed (a few kept, as fragments)."""
    blocks = [bytes(2000) for _ in range(100_000)]  # ~200 MB, above pymalloc's 512-byte limit: malloc's arena
    kept = blocks[::1000]
    del blocks
    assert len(kept) == 100


async def test_webrtc_heap_trim_returns_a_thread_arenas_freed_memory():
    proc = psutil.Process()
    thread = threading.Thread(target=_churn_in_a_thread)
    before = proc.memory_info().rss
    thread.start()
    thread.join()
    held = proc.memory_info().rss - before
    assert held > 50 * 2**20, f"the freed blocks were not kept by the arena ({held / 2**20:.1f} MiB): nothing to test"
    assert await trim_heap() is True
    after = proc.memory_info().rss - before
    assert after < held / 4, f"{held / 2**20:.1f} MiB held before the trim, {after / 2**20:.1f} MiB after"
