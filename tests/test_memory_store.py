"""The event store against a real SQLite file: round trip, text search (FTS5, quoted), filters, restarts, a full
queue, retention, a corrupt file, a full disk and a SIGKILL mid-write (a child process: tests/memory_writer_child.py)."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from tests.waiting import wait_until
from visual_agent.memory import Event, EventQuery, EventQueryError, EventStore, StorageConfig, StoreUnavailableError

CHILD = Path(__file__).with_name("memory_writer_child.py")


def _store(tmp_path: Path, **config) -> EventStore:
    store = EventStore(StorageConfig(path=str(tmp_path), **config))
    assert store.open(), store.error
    return store


def _write(store: EventStore, event: Event) -> int:
    return store.submit(event).result(timeout=10)


def _colour(rgb: tuple[int, int, int], w: int = 640, h: int = 480) -> np.ndarray:
    return np.full((h, w, 3), rgb, np.uint8)


def test_memory_store_round_trip_with_thumbnails(tmp_path: Path) -> None:
    store = _store(tmp_path)
    try:
        frame = av.VideoFrame.from_ndarray(_colour((200, 30, 30)), format="rgb24")
        a = _write(store, Event(source="door", kind="answer", text="a red parcel on the step", question="what is there?",
                                model="m", frame_times=[100.5, 101.0], image=frame, at=1000.0))
        b = _write(store, Event(source="yard", kind="rule", text="gate open", rule="gate", state="on",
                                image=cv2.imencode(".jpg", _colour((0, 0, 255), 64, 48))[1].tobytes(),
                                strip=[b"\xff\xd8one", b"\xff\xd8two"], at=1001.0))
        c = _write(store, Event(source="door", kind="memory", text="nobody there", at=1002.0))
        events = store.query()
        assert [e.id for e in events] == [c, b, a]  # newest first
        first = store.get(a)
        assert first is not None and first.question == "what is there?" and first.frame_times == (100.5, 101.0)
        assert first.as_dict()["thumbnail"] == f"/events/{a}.jpg"
        jpeg = store.thumbnail(a)
        assert jpeg is not None
        thumb = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert max(thumb.shape[:2]) == 320 and thumb[..., 2].mean() > 150  # ~320 px long side, still red (BGR)
        rule = store.get(b)
        assert rule is not None and rule.state == "on" and rule.strip == 2 and store.thumbnail(b, 2) == b"\xff\xd8two"
        assert store.thumbnail(c) is None and store.get(c).as_dict()["thumbnail"] is None
        assert store.get(999999) is None and store.thumbnail(999999) is None and store.thumbnail(-5) is None
    finally:
        store.close()
        store.close()  # safe twice


def test_memory_store_filters_and_text_search(tmp_path: Path) -> None:
    store = _store(tmp_path)
    try:
        for i, (source, kind, text) in enumerate([
            ("door", "answer", "A parcel arrived at the door"), ("door", "memory", "the courier left a box"),
            ("yard", "memory", "a cat walks across the parcel"), ("yard", "description", "empty yard at night"),
        ]):
            _write(store, Event(source=source, kind=kind, text=text, at=1000.0 + i))
        texts = lambda q: [e.text for e in store.query(q)]  # noqa: E731
        assert texts(EventQuery(q="parcel")) == ["a cat walks across the parcel", "A parcel arrived at the door"]
        assert texts(EventQuery(q="parcels", source="door")) == ["A parcel arrived at the door"]  # porter stemming
        assert texts(EventQuery(since=1001, until=1002)) == ["a cat walks across the parcel", "the courier left a box"]
        assert texts(EventQuery(kind="memory", limit=1)) == ["a cat walks across the parcel"]
        assert texts(EventQuery(q="parcel cat")) == ["a cat walks across the parcel"]  # all words
        best = store.search("when did the courier leave a box?")
        assert best[0].text == "the courier left a box"
        # FTS5 syntax in q is only ever matched as words: no error, no injection
        for nasty in ['"', 'parcel" OR "night', "NEAR(parcel cat)", "parcel*", "text:parcel", "a AND", "-x", "^parcel",
                      "'); DROP TABLE events; --", "(((", "\\"]:
            store.query(EventQuery.from_mapping({"q": nasty}))
        assert texts(EventQuery.from_mapping({"q": 'parcel" OR "night'})) == []  # the words parcel, or, night: none has all
        assert store.count() == 4
    finally:
        store.close()


def test_memory_query_rejects_bad_parameters() -> None:
    for bad in [{"limit": 0}, {"limit": 10**9}, {"limit": "x"}, {"since": -1}, {"since": "nan"}, {"until": "1e999"},
                {"kind": "secrets"}, {"source": "a" * 500}, {"q": "x" * 5000}, {"since": 10, "until": 5},
                {"limit": 1.5}, {"other": 1}, {"source": "bad\x00name"}, {"limit": True}]:
        with pytest.raises(EventQueryError):
            EventQuery.from_mapping({k: str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
                                     for k, v in bad.items()}, strings=True)
    assert EventQuery.from_mapping({"limit": "20", "since": "5"}, strings=True).limit == 20
    assert EventQuery.from_mapping({"q": "?!*"}).q is None


def test_memory_store_files_are_private(tmp_path: Path) -> None:
    """The store holds camera pictures: its directory and files are for their owner only."""
    store = _store(tmp_path / "state")
    try:
        _write(store, Event(source="s", kind="answer", text="x", image=_colour((1, 1, 1), 32, 32)))
        assert (tmp_path / "state").stat().st_mode & 0o077 == 0
        for name in ("events.db", "events.db-wal", "events.db-shm"):
            assert (tmp_path / "state" / name).stat().st_mode & 0o077 == 0, name
    finally:
        store.close()


def test_memory_store_restart_keeps_events(tmp_path: Path) -> None:
    store = _store(tmp_path)
    ids = [_write(store, Event(source="door", kind="answer", text=f"answer {i}", image=_colour((9, 9, 9), 32, 32)))
           for i in range(5)]
    store.close()
    again = _store(tmp_path)
    try:
        assert [e.id for e in again.query()] == ids[::-1]
        assert again.thumbnail(ids[0]) is not None
        assert _write(again, Event(source="door", kind="answer", text="after restart")) > ids[-1]
    finally:
        again.close()


async def test_memory_store_async_api_does_not_block_the_loop(tmp_path: Path) -> None:
    store = EventStore(StorageConfig(path=str(tmp_path)))
    assert await store.start()
    try:
        event_id = await store.write(Event(source="s", kind="answer", text="hello", image=_colour((1, 2, 3))))
        assert [e.id for e in await store.aquery(EventQuery(q="hello"))] == [event_id]
        assert (await store.aget(event_id)).text == "hello"
        assert await store.athumbnail(event_id) is not None
        assert [e.id for e in await store.asearch("hello there")] == [event_id]
    finally:
        await store.aclose()
    with pytest.raises(StoreUnavailableError):
        await store.aquery()


def test_memory_store_full_queue_drops_and_counts(tmp_path: Path) -> None:
    store = _store(tmp_path, queue_max=4)
    blocker = sqlite3.connect(str(store.path), isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # the writer now waits for the lock, so its queue fills
        futures = [store.submit(Event(source="s", kind="answer", text=f"e{i}")) for i in range(40)]
        dropped = [f for f in futures if f.done() and f.exception() is not None]
        assert dropped and store.health()["dropped_queue_full"] == len(dropped)
        assert store.health()["queued"] <= 4  # never more waiting than storage.queue_max
        blocker.execute("ROLLBACK")
        kept = [f.result(timeout=10) for f in futures if f not in dropped]
        assert store.count() == len(kept)
    finally:
        blocker.close()
        store.close()


def test_memory_store_retention_by_age_and_size(tmp_path: Path) -> None:
    store = _store(tmp_path, retention_days=1, max_mb=0.5)
    try:
        old = time.time() - 3 * 86400
        for i in range(30):
            _write(store, Event(source="s", kind="memory", text=f"old {i}", at=old + i))
        noise = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
        for i in range(40):  # ~40 noisy thumbnails: well over half a MiB
            store.submit(Event(source="s", kind="memory", text=f"new {i}", image=noise))
        store.flush(10)

        def within() -> bool:
            h = store.health()
            return h["deleted_by_age"] == 30 and h["deleted_by_size"] > 0 and h["used_mb"] <= 0.5

        _wait_sync(within, what="retention brought the store within its bounds")
        left = store.query(EventQuery(limit=500))
        assert left and all(e.text.startswith("new") for e in left)
        assert left[0].text == "new 39"  # the oldest went first
    finally:
        store.close()


def test_memory_store_corrupt_file_is_reported_not_raised(tmp_path: Path) -> None:
    (tmp_path / "events.db").write_bytes(b"this is not a database" * 100)
    store = EventStore(StorageConfig(path=str(tmp_path)))
    assert store.open() is False
    health = store.health()
    assert health["state"] == "unavailable" and "not a database" in health["error"]
    assert store.add(Event(source="s", kind="answer", text="x")) is False
    assert store.health()["dropped"] == 1
    with pytest.raises(StoreUnavailableError, match="not a database"):
        store.query()
    store.close()
    assert (tmp_path / "events.db").read_bytes().startswith(b"this is not")  # left for the operator, not destroyed


def test_memory_store_full_disk_fails_writes_and_keeps_running(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(CHILD), str(tmp_path), "fsize"], capture_output=True, text=True,
                          timeout=120)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0, proc.stderr[-2000:]
    failed = lines[0]
    assert failed["written"] > 0
    assert failed["health"]["state"] == "failing" and failed["health"]["failed_writes"] >= 1
    assert "full" in failed["health"]["last_error"]["message"] or "disk" in failed["health"]["last_error"]["message"]
    assert lines[1].get("alive") or lines[1].get("after") == "written"  # the writer thread is still there
    store = _store(tmp_path)
    try:
        assert store.count() >= failed["written"]  # what was written before the disk filled is all there
    finally:
        store.close()


def test_memory_store_sigkill_mid_write_loses_no_written_event(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, str(CHILD), str(tmp_path), "kill"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    written: list[int] = []
    try:
        for line in proc.stdout:
            if line.startswith("written "):
                written.append(int(line.split()[1]))
            if len(written) >= 300:
                break
        proc.send_signal(signal.SIGKILL)  # mid-write: the child writes without pause
    finally:
        proc.kill()
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL and len(written) >= 300
    store = _store(tmp_path)
    try:
        ids = {e.id for e in store.query(EventQuery(limit=500))}
        assert store.count() >= len(written)
        assert set(written[-200:]) <= ids  # each event reported written (the newest ones too) survived
        assert store.thumbnail(written[-1]) is not None
    finally:
        store.close()


def _wait_sync(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    asyncio.run(wait_until(predicate, timeout, what))


def test_memory_storage_config_keys(tmp_path: Path) -> None:
    from visual_agent.config_loading import parse_config
    from visual_agent.errors import ConfigError
    from visual_agent.memory import default_state_dir

    cfg = parse_config({"storage": {"path": str(tmp_path), "retention_days": 7, "max_mb": 100}},
                       environ={"VISUAL_AGENT__STORAGE__MEMORY__ENABLED": "true"})
    assert cfg.storage.db_path() == tmp_path / "events.db" and cfg.storage.max_mb == 100 and cfg.storage.memory.enabled
    assert parse_config({}, environ={}).storage.enabled
    assert default_state_dir({"XDG_STATE_HOME": "/var/state"}) == Path("/var/state/visual-agent")
    assert default_state_dir({}) == Path.home() / ".local/state/visual-agent"
    assert default_state_dir({"STATE_DIRECTORY": "/var/lib/visual-agent", "XDG_STATE_HOME": "/x"}) == Path(
        "/var/lib/visual-agent")  # systemd's StateDirectory= wins
    with pytest.raises(ConfigError, match="storage.max_mb"):
        parse_config({"storage": {"max_mb": 0}}, environ={})
    with pytest.raises(ConfigError, match="storage.retention_days"):
        parse_config({"storage": {"retention_days": True}}, environ={})  # a boolean is not a number


def test_memory_store_malformed_event_costs_only_itself(tmp_path: Path) -> None:
    store = _store(tmp_path)
    try:
        good = store.submit(Event(source="s", kind="answer", text="fine"))
        bad = [store.submit(Event(source="s", kind="answer", text="x", frame_times=["soon"])),  # type: ignore[list-item]
               store.submit(Event(source="s", kind="answer", text=None)),  # type: ignore[arg-type]
               store.submit(Event(source="s", kind="answer", text="x", at=float("nan")))]
        after = store.submit(Event(source="s", kind="answer", text="still fine"))
        assert good.result(10) and after.result(10) > good.result(10)
        for future in bad:
            with pytest.raises(ValueError, match="not an event the store can keep"):
                future.result(10)
        assert [e.text for e in store.query()] == ["still fine", "fine"] and store.health()["state"] == "ok"
    finally:
        store.close()


def test_memory_ranking_weighs_rare_words_and_prefers_the_newer() -> None:
    from visual_agent.memory.ranking import rank_matches

    hits = {"parcel": [90, 50, 10], "courier": [50], "door": list(range(100, 0, -1))}
    order = rank_matches(hits, low=1, high=100, cap=1000)
    assert order[:3] == [50, 90, 10]  # courier (rare) + parcel, then parcel alone (newer first), then door alone
    capped = rank_matches({"common": list(range(100, 90, -1)), "rare": [5]}, low=1, high=100, cap=10)
    assert capped[0] == 5  # a word that filled the cap over a tenth of the window counts as common
