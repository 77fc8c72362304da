"""A child process for the event store's crash tests (tests/test_memory_store.py), run as a script.

    python tests/memory_writer_child.py DIR kill    # writes events forever, printing "written <id>" once each is committed
    python tests/memory_writer_child.py DIR fsize   # file size limited (RLIMIT_FSIZE): writes until writes fail, prints health

`kill` is SIGKILLed by the test mid-write; the test then reopens the store and checks that every event reported
written is there. `fsize` makes the disk "full" for this process only.
"""

from __future__ import annotations

import json
import resource
import signal
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from visual_agent.memory import Event, EventStore, StorageConfig  # noqa: E402


def main() -> int:
    directory, mode = Path(sys.argv[1]), sys.argv[2]
    if mode == "fsize":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
    store = EventStore(StorageConfig(path=str(directory)))
    if not store.open():
        print(json.dumps({"open_failed": store.error}), flush=True)
        return 2
    if mode == "fsize":
        limit = store.path.stat().st_size + 256 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    rng = np.random.default_rng(1)
    n = 0
    while True:
        n += 1
        image = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)  # noise: thumbnails that do not compress
        future = store.submit(Event(source="cam", kind="answer", text=f"event number {n}", image=image))
        try:
            event_id = future.result(timeout=30)
        except Exception as exc:
            if mode == "fsize":
                health = store.health()
                print(json.dumps({"failed": str(exc), "health": health, "written": n - 1}), flush=True)
                more = store.submit(Event(source="cam", kind="answer", text="after the failure"))
                try:
                    more.result(timeout=30)
                    print(json.dumps({"after": "written"}), flush=True)
                except Exception as again:
                    print(json.dumps({"after": f"failed: {again}", "alive": True}), flush=True)
                store.close()
                return 0
            raise
        print(f"written {event_id}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
