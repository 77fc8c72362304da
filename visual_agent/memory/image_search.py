"""`ImageSearch`: the thumbnails' CLIP embeddings, made in the writer thread and kept in a `VectorIndex`, and the
question's text embedding to search them (`storage.image_search`, `storage.image_model`).

`build_image_search` returns None, and the store searches by text only, when the switch is off, no model is
configured, or the `vectors` extra (apsw, sqlite-vec) or the `clip` extra is missing: a light install never imports
them. An encoder without a text tower (a LLaVA checkpoint's vision tower) still embeds the thumbnails, but questions
cannot be compared with them: `can_search` is False and the log says so once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .config import StorageConfig
from .vectors import VECTORS_FILE_NAME, VectorIndex, vectors_available

__all__ = ["ImageSearch", "build_image_search"]

logger = logging.getLogger(__name__)


class ImageSearch:
    """`embed_thumbnails(jpegs)` (writer thread), `embed_question(text)` (reader threads), `index`."""

    def __init__(self, encoder: Any, index: VectorIndex) -> None:
        self.encoder = encoder
        self.index = index
        self.can_search = bool(getattr(encoder, "has_text", False))
        self.failures = 0
        self.skipped = 0
        """Thumbnails left without a vector because the writer's queue was over half full (the encoder fell behind)."""

    def embed_thumbnails(self, jpegs: list[bytes]) -> list[np.ndarray | None]:
        """One L2-normalised vector per JPEG (None for one that does not decode)."""
        images = [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR) for j in jpegs]
        good = [i for i, image in enumerate(images) if image is not None]
        out: list[np.ndarray | None] = [None] * len(jpegs)
        if good:
            vectors = self.encoder.embed([images[i] for i in good], channel_order="bgr").numpy()
            for row, i in enumerate(good):
                out[i] = vectors[row]
        return out

    def embed_question(self, text: str) -> np.ndarray | None:
        """The question's text vector; None when the encoder has no text tower."""
        if not self.can_search:
            return None
        try:
            return np.asarray(self.encoder.embed_text(text)[0].numpy(), dtype=np.float32)
        except Exception as exc:  # a tokenizer that does not fit the model: the question goes on by text
            self.failures += 1
            logger.warning("event store: cannot embed a question with %s (%s: %s); text search only for it",
                           self.index.model, type(exc).__name__, exc)
            return None

    def close(self) -> None:
        self.index.close()
        close = getattr(self.encoder, "close", None)
        if close is not None:
            close()


def build_image_search(config: StorageConfig, directory: Path) -> ImageSearch | None:
    """The image search `config` asks for, its index file in `directory`; None (and the log says why, when a model
    was configured) for text search only. Blocking (loads the model): call it in a worker thread."""
    model = config.image_model
    if config.image_search == "off" or not model:
        return None
    missing = vectors_available()
    if missing is not None:
        logger.warning("event store: storage.image_model is set but image search needs the vectors extra: %s; "
                       "questions about the past use text search only", missing)
        return None
    try:
        encoder = _encoder(model, config.image_pretrained)
    except Exception as exc:  # a missing extra, a bad folder, weights that do not fit: text search goes on
        logger.warning("event store: cannot build the image encoder %r (%s: %s); questions about the past use text "
                       "search only", model, type(exc).__name__, exc)
        return None
    search = ImageSearch(encoder, VectorIndex(directory / VECTORS_FILE_NAME, dim=encoder.embed_dim, model=model))
    if not search.can_search:
        logger.warning("event store: the image encoder %r has no text tower: thumbnails are embedded, but questions "
                       "about the past are matched by text only", model)
    return search


def _encoder(model: str, pretrained: str | None) -> Any:
    """A `ClipEncoder`: a LLaVA folder's vision tower, an open_clip folder (`open_clip_config.json`), or an open_clip
    model name ('ViT-B-32', 'hf-hub:org/repo', 'local-dir:/path') with `pretrained` weights."""
    from encoders.clip import ClipEncoder

    folder = Path(model).expanduser()
    if folder.is_dir():
        if (folder / "open_clip_config.json").is_file():
            return ClipEncoder(f"local-dir:{folder}", pretrained=pretrained)
        return ClipEncoder.from_llava(folder)
    return ClipEncoder(model, pretrained=pretrained)

