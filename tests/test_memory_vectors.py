"""Image search in the event store: thumbnails embedded by a tiny random open_clip model (a local folder, nothing
downloaded), kept in sqlite-vec beside the events and deleted with them; a question about the past finds an event
only its picture matches; a light install (no `vectors` extra) searches by text and imports nothing of it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.waiting import wait_until
from visual_agent.memory import Event, EventStore, StorageConfig
from visual_agent.memory.retrieval import recall

torch = pytest.importorskip("torch", reason="image search needs the clip extra")
open_clip = pytest.importorskip("open_clip", reason="image search needs the clip extra")
pytest.importorskip("apsw", reason="image search needs the vectors extra")
pytest.importorskip("sqlite_vec", reason="image search needs the vectors extra")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """A tiny random open_clip model with a text tower, saved as a local folder (config + safetensors)."""
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("tiny-clip")
    cfg = {
        "model_cfg": {
            "embed_dim": 24,
            "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
        },
        "preprocess_cfg": {"size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    }
    (path / "open_clip_config.json").write_text(json.dumps(cfg))
    torch.manual_seed(3)
    model = open_clip.CLIP(**cfg["model_cfg"])
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "open_clip_model.safetensors"))
    return path


def _noise(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (96, 128, 3), dtype=np.uint8)


def _store(tmp_path: Path, model: Path, **config) -> EventStore:
    store = EventStore(StorageConfig(path=str(tmp_path), image_model=str(model), **config))
    assert store.open(), store.error
    assert store.image_search is not None and store.image_search.can_search
    return store


def test_memory_vectors_stored_found_and_deleted_with_their_events(tmp_path: Path, tiny_clip: Path) -> None:
    store = _store(tmp_path, tiny_clip, retention_days=1)
    try:
        search = store.image_search
        assert search is not None
        now = time.time()
        old = now - 3 * 86400
        ids = [store.submit(Event(source="yard", kind="memory", text=f"scene {i}", image=_noise(i),
                                  at=now - 10 + i)).result(10) for i in range(4)]
        no_image = store.submit(Event(source="yard", kind="memory", text="no picture")).result(10)
        assert search.index.count() == 4 and no_image not in ids
        for event_id in ids:  # an event's own thumbnail vector finds that event first
            mine = search.embed_thumbnails([store.thumbnail(event_id)])[0]
            assert [e.id for e in store.nearest(mine, limit=4)][0] == event_id
        assert [e.id for e in store.nearest(mine, limit=4, source="elsewhere")] == []
        window = store.nearest(mine, limit=4, since=now - 10 + 1.5)
        assert sorted(e.id for e in window) == ids[2:]  # since/until apply inside the index
        stale = [store.submit(Event(source="yard", kind="memory", text="old", image=_noise(10 + i), at=old + i))
                 .result(10) for i in range(3)]
        asyncio.run(wait_until(lambda: store.health()["deleted_by_age"] == 3, 20, "retention deleted the old events"))
        assert search.index.count() == 4
        assert not {e.id for e in store.nearest(mine, limit=20)} & set(stale)
        assert store.health()["image_search"]["questions"] is True
    finally:
        store.close()
    again = _store(tmp_path, tiny_clip)  # a restart keeps the vectors
    try:
        assert again.image_search is not None and again.image_search.index.count() == 4
    finally:
        again.close()


async def test_memory_past_question_finds_an_event_only_its_picture_matches(tmp_path: Path, tiny_clip: Path) -> None:
    from encoders.clip import ClipEncoder

    question = "when was the delivery van outside?"
    store = EventStore(StorageConfig(path=str(tmp_path), image_model=str(tiny_clip)))
    pictures = [store.make_thumbnail(_noise(20 + i)) for i in range(6)]
    with ClipEncoder(f"local-dir:{tiny_clip}") as encoder:  # the expected answer, from the encoder itself
        scores = encoder.embed_text(question)[0] @ encoder.embed(pictures_bgr(pictures), channel_order="bgr").T
    target = int(scores.argmax())
    assert await store.start(), store.error
    try:
        now = time.time()
        order = [target, *(i for i in range(6) if i != target)]  # the matching picture is the oldest event
        ids = {}
        for n, i in enumerate(order):
            ids[i] = await store.write(Event(source="gate", kind="memory", text=f"reading {n} of the meter",
                                             image=pictures[i], at=now - 60 + n))
        found = await recall(store, question, source="gate", since=now - 120, until=now, limit=2)
        assert ids[target] in [e.id for e in found]
        assert await store.asearch(question, source="gate", since=now - 120, until=now) == []  # no word matches
    finally:
        await store.aclose()
    text_only = EventStore(StorageConfig(path=str(tmp_path), image_search="off", image_model=str(tiny_clip)))
    assert await text_only.start()
    try:  # without the index, the two newest events fill the answer: the matching picture is left out
        found = await recall(text_only, question, source="gate", since=now - 120, until=now, limit=2)
        assert ids[target] not in [e.id for e in found] and len(found) == 2
    finally:
        await text_only.aclose()


def pictures_bgr(jpegs: list[bytes]) -> list[np.ndarray]:
    import cv2

    return [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR) for j in jpegs]


def test_memory_llava_tower_embeds_but_questions_use_text(tmp_path: Path, tiny_llava_path, caplog) -> None:
    store = EventStore(StorageConfig(path=str(tmp_path), image_model=str(tiny_llava_path)))
    with caplog.at_level("WARNING"):
        assert store.open(), store.error
    try:
        assert store.image_search is not None and not store.image_search.can_search
        assert "no text tower" in caplog.text
        store.submit(Event(source="s", kind="memory", text="x", image=_noise(1))).result(10)
        assert store.image_search.index.count() == 1 and store.similar("anything") == []
    finally:
        store.close()


LIGHT = """
import sys
import threading
sys.modules["apsw"] = None  # the vectors extra is not installed
from visual_agent.memory import Event, EventStore, StorageConfig
store = EventStore(StorageConfig(path=sys.argv[1], image_model=sys.argv[2]))
assert store.open() and store.image_search is None
store.submit(Event(source="s", kind="memory", text="a red car")).result(10)
assert [e.text for e in store.search("red car")] == ["a red car"]
store.close()
print(sorted(m for m in ("apsw", "sqlite_vec", "torch", "open_clip") if sys.modules.get(m) is not None))
"""


def test_memory_light_install_searches_text_and_imports_nothing_of_the_extra(tmp_path: Path, tiny_clip: Path) -> None:
    out = subprocess.run([sys.executable, "-c", LIGHT, str(tmp_path), str(tiny_clip)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert "vectors extra" in out.stderr  # the log says why image search is off


def test_memory_vector_index_reopen_drops_vectors_without_events_and_starts_anew_for_another_model(
        tmp_path: Path) -> None:
    from visual_agent.memory.vectors import VectorIndex, VectorIndexError

    path = tmp_path / "vectors.db"
    index = VectorIndex(path, dim=3, model="a")
    index.open((None, None))
    index.add([(i, float(i), "s", np.eye(3)[i]) for i in range(3)])
    assert [i for i, _ in index.nearest(np.eye(3)[2], k=1)] == [2]
    with pytest.raises(VectorIndexError, match="4 values"):
        index.nearest(np.ones(4), k=1)
    index.close()
    index = VectorIndex(path, dim=3, model="a")
    index.open((1, 1))  # a crash left vectors of events 0 and 2 behind (or before) the events
    assert index.count() == 1 and [i for i, _ in index.nearest(np.ones(3), k=3)] == [1]
    index.close()
    other = VectorIndex(path, dim=5, model="b")
    other.open((0, 10))  # another model's vectors cannot be compared with these: a new table
    assert other.count() == 0
    other.add([(4, 4.0, "s", np.ones(5))])
    assert other.count() == 1
    other.close()
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_memory_image_search_config_keys() -> None:
    from visual_agent.config_loading import parse_config
    from visual_agent.errors import ConfigError

    cfg = parse_config({"storage": {"image_search": "off", "image_model": "ViT-B-32"}}, environ={})
    assert (cfg.storage.image_search, cfg.storage.image_model) == ("off", "ViT-B-32")
    assert StorageConfig().image_search == "auto" and StorageConfig().image_model is None
    with pytest.raises(ConfigError, match="storage.image_search"):
        parse_config({"storage": {"image_search": "on"}}, environ={})


def test_memory_question_the_text_tower_cannot_embed_falls_back_to_text(tmp_path: Path, tiny_clip: Path) -> None:
    bad = tmp_path / "bad-clip"  # the same model with a vocabulary too small for open_clip's tokenizer
    bad.mkdir()
    cfg = json.loads((tiny_clip / "open_clip_config.json").read_text())
    cfg["model_cfg"]["text_cfg"]["vocab_size"] = 100
    (bad / "open_clip_config.json").write_text(json.dumps(cfg))
    torch.manual_seed(0)
    from safetensors.torch import save_file
    model = open_clip.CLIP(**cfg["model_cfg"])
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(bad / "open_clip_model.safetensors"))
    store = _store(tmp_path / "store", bad)
    try:
        event_id = store.submit(Event(source="s", kind="memory", text="a red car", image=_noise(0))).result(10)
        assert store.similar("a red car") == []
        assert [e.id for e in store.search("red car")] == [event_id]
        assert store.health()["image_search"]["failures"] == 1
    finally:
        store.close()


class _GatedEncoder:
    """The real encoder behind a gate: holds the writer thread inside `embed` until the test opens it."""

    def __init__(self, encoder) -> None:
        self.encoder, self.gate, self.entered = encoder, threading.Event(), threading.Event()

    def embed(self, images, **kw):
        self.entered.set()
        self.gate.wait(20)
        return self.encoder.embed(images, **kw)


def test_memory_a_slow_encoder_costs_vectors_never_events(tmp_path: Path, tiny_clip: Path) -> None:
    store = _store(tmp_path, tiny_clip, queue_max=4)
    search = store.image_search
    assert search is not None
    gated = _GatedEncoder(search.encoder)
    search.encoder = gated
    try:
        first = store.submit(Event(source="s", kind="memory", text="first", image=_noise(0)))
        assert gated.entered.wait(10)  # the writer holds the first event inside the encoder
        backlog = [store.submit(Event(source="s", kind="memory", text=f"later {i}", image=_noise(i + 1)))
                   for i in range(4)]
        gated.gate.set()
        ids = [f.result(10) for f in [first, *backlog]]  # every event is written
        assert len(set(ids)) == 5 and store.count() == 5
        assert search.index.count() == 1 and search.skipped == 4  # the backlog went without vectors
        assert store.health()["image_search"]["skipped"] == 4
    finally:
        gated.gate.set()
        store.close()


def test_memory_vector_index_windows_across_days(tmp_path: Path) -> None:
    from visual_agent.memory.vectors import VectorIndex

    index = VectorIndex(tmp_path / "vectors.db", dim=2, model="a")
    index.open((None, None))
    day = 86400.0
    index.add([(i, i * day + 100, "s", np.array([1.0, i / 10])) for i in range(4)])  # one event a day
    near = lambda **window: sorted(i for i, _ in index.nearest(np.array([1.0, 0.0]), k=10, **window))  # noqa: E731
    assert near() == [0, 1, 2, 3]
    assert near(since=day + 50, until=2 * day + 200) == [1, 2]
    assert near(since=day + 150) == [2, 3] and near(until=day + 100) == [0, 1]
    assert near(since=day + 150, until=day + 160) == []
    index.close()
