"""The daemon's memory: an embedded event store of what it saw and said, searchable by text and time, and the ways
in and out of it (docs/VISUAL_AGENT_GUIDE.md, "Memory").

| module | one job |
| --- | --- |
| `config.py` | `StorageConfig` (`storage.*`): where the store lives, how long and how much it keeps; the `memory` trigger's keys |
| `events.py` | `Event` (what is recorded), `StoredEvent` (what comes back), `EventKind` |
| `schema.py` | the SQLite file: WAL, tables, FTS5 index, images keyed by event |
| `thumbnails.py` | `Thumbnailer`: an event's image as a ~320 px JPEG (in the writer thread) |
| `writer.py` | `EventWriter`: the one writer thread, a bounded queue, failures counted and reported |
| `vectors.py` | `VectorIndex`: thumbnails' image vectors in a sqlite-vec `vec0` table (`vectors.db`, through apsw) |
| `image_search.py` | `ImageSearch`: the CLIP encoder and its index (`storage.image_model`); None on a light install |
| `retention.py` | `Retention`: age and size bounds, enforced a small batch at a time |
| `query.py` | `EventQuery`: the filters of `GET /events` and `<prefix>/events/query`, FTS5 terms quoted |
| `store.py` | `EventStore`: open, add, query, search, thumbnail, health, close |
| `recorder.py` | `EventRecorder`: the agent's event observer that keeps answers, descriptions and rule changes |
| `retrieval.py` | `recall`: which stored events a question about the past is shown |
| `past.py` | `PastQuestions`: a question with `since`/`until` answered from the store through the one model call |
| `scene_memory.py` | `SceneMemory`: the `storage.memory` trigger, behind the rules' change gate |
| `http.py` | `EventRoutes`: `GET /events` and `GET /events/<id>.jpg` (registered with `WebRTCServer.add_route`) |
| `mqtt_query.py` | `EventQueries`: `<prefix>/events/query` as MQTT request/response |
| `service.py` | `MemoryService`: what the daemon opens, registers, attaches and closes |
"""

from .config import MemoryTriggerConfig, StorageConfig, default_state_dir
from .events import Event, EventKind, StoredEvent
from .query import EventQuery, EventQueryError
from .store import EventStore, StoreUnavailableError

__all__ = [
    "Event",
    "EventKind",
    "EventQuery",
    "EventQueryError",
    "EventStore",
    "MemoryTriggerConfig",
    "StorageConfig",
    "StoreUnavailableError",
    "StoredEvent",
    "default_state_dir",
]
