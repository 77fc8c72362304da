"""`StorageConfig`: where the event store lives, how long and how much it keeps (`storage.*` keys), and the optional
`memory` trigger that describes each source on scene change so there is something to search between questions."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field

from ..strict_numbers import Section

__all__ = [
    "DEFAULT_MEMORY_PROMPT",
    "MemoryTriggerConfig",
    "StorageConfig",
    "default_state_dir",
]

DEFAULT_RETENTION_DAYS = 30.0
DEFAULT_MAX_MB = 1024.0
DEFAULT_QUEUE_MAX = 1024
DEFAULT_THUMBNAIL_MAX_SIDE = 320
DEFAULT_THUMBNAIL_QUALITY = 70
DEFAULT_MEMORY_EVERY_S = 60.0
DEFAULT_MEMORY_CHECK_S = 1.0
DEFAULT_MEMORY_PROMPT = (
    "Describe what you see in one sentence: who or what is there and what they are doing."
)
DEFAULT_PAST_EVENTS = 8
"""Stored events a question about the past shows the model (their thumbnails and texts), at most."""
STATE_DIR_NAME = "visual-agent"
DB_FILE_NAME = "events.db"


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """`$STATE_DIRECTORY` (what systemd's `StateDirectory=` gives a service), else `$XDG_STATE_HOME/visual-agent`,
    else `~/.local/state/visual-agent` (the XDG base-directory default)."""
    env = os.environ if environ is None else environ
    systemd = (env.get("STATE_DIRECTORY") or "").split(":")[0]
    if systemd and Path(systemd).is_absolute():
        return Path(systemd)
    base = env.get("XDG_STATE_HOME") or ""
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".local" / "state"
    return root / STATE_DIR_NAME


class MemoryTriggerConfig(Section):
    """Scene memory: describe each source when its picture changes, at most every `every_s`; a static scene costs
    nothing (the same grey-thumbnail change gate as the rules)."""

    enabled: bool = False
    """Off by default: each description is a model call."""
    every_s: float = Field(DEFAULT_MEMORY_EVERY_S, ge=1)
    """At most one description of a source per this many seconds."""
    threshold: float | None = Field(None, gt=0, le=1)
    """Mean grey-thumbnail difference (0-1) that counts as a change; None: `agent.scene_change.threshold`."""
    check_interval_s: float = Field(DEFAULT_MEMORY_CHECK_S, gt=0)
    """How often the newest frame is compared with the frame of the last description."""
    prompt: str = DEFAULT_MEMORY_PROMPT
    """The question asked; its answer is stored as a `memory` event."""


class StorageConfig(Section):
    """The event store: every answer, description and rule event with a thumbnail, searchable by text and time."""

    enabled: bool = True
    """Keep events; off: nothing is written and questions about the past get an error answer."""
    path: str | None = None
    """Directory of the store (`events.db` in it); None: systemd's `$STATE_DIRECTORY`, else
    `$XDG_STATE_HOME/visual-agent`, else `~/.local/state/visual-agent`."""
    retention_days: float = Field(DEFAULT_RETENTION_DAYS, gt=0)
    """Events older than this are deleted (continuously, in small batches)."""
    max_mb: float = Field(DEFAULT_MAX_MB, gt=0)
    """The store's data is kept under this many MiB: the oldest events go first."""
    queue_max: int = Field(DEFAULT_QUEUE_MAX, ge=1)
    """Events waiting for the writer thread; beyond it new ones are dropped and counted."""
    thumbnail_max_side: int = Field(DEFAULT_THUMBNAIL_MAX_SIDE, ge=16, le=1920)
    """Longest side of each event's JPEG thumbnail, in pixels."""
    thumbnail_quality: int = Field(DEFAULT_THUMBNAIL_QUALITY, ge=1, le=100)
    """JPEG quality of the thumbnails."""
    past_events: int = Field(DEFAULT_PAST_EVENTS, ge=1, le=64)
    """Most stored events (thumbnail and text) a question about the past shows the model."""
    image_search: Literal["auto", "off"] = "auto"
    """`auto`: embed each thumbnail and add image similarity to questions about the past when `image_model` is set
    and the `vectors` extra is installed (else text search only); `off`: text search only."""
    image_model: str | None = None
    """The image encoder of `image_search`: an open_clip model name ('ViT-B-32', 'hf-hub:org/repo') or a local folder
    (an open_clip folder with `open_clip_config.json`, or a LLaVA checkpoint: its vision tower, which has no text
    tower, so questions are still matched by text only). None: no image search."""
    image_pretrained: str | None = None
    """open_clip weights for a model name: a tag ('laion2b_s34b_b79k', downloaded once) or a local file."""
    memory: MemoryTriggerConfig = Field(default_factory=MemoryTriggerConfig)
    """The scene-memory trigger."""

    def directory(self) -> Path:
        """The store's directory: `path` (with `~` expanded) or the default state directory."""
        return Path(self.path).expanduser() if self.path else default_state_dir()

    def db_path(self) -> Path:
        """The SQLite file."""
        return self.directory() / DB_FILE_NAME
