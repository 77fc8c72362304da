"""`FrameEncoding`: how sampled frames become the user message's content, JPEG data URLs or image embeddings.

One object owns the whole choice, so the daemon and a `VisualAgent` built by hand decide it the same way:
- `encoder.embeddings` (`EmbeddingsMode`): `auto` sends embeddings when the provider takes them, `clip` always
  (refused at once if the provider cannot take them), `off` never.
- JPEG: one `JpegEncoder` (`encoder.jpeg_max_side`, `encoder.jpeg_quality`), run in a worker thread; several
  questions on the same frames share one encoding, also while it runs.
- Embeddings: the given `embedding_function`, else the encoder of the provider's model family, picked from its
  model folder by `encoders.encoder_for` (LLaVA: `ClipEncoder`, Qwen2-VL: `Qwen2VLEncoder`, whose embeddings are a
  dict `{"image_embeds", "image_grid_thw"}` rather than one tensor) and loaded by `load_embedder` (eagerly by
  `start()`, else on first use) with a bounded `EmbeddingCache`, so a static scene is not encoded again
  (`encoder.cache_entries`, 0: off). A family no encoder computes is refused at construction, naming the ones
  that are supported, not at the first question.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from providers.registry import embedding_kinds

from .config import DEFAULT_EMBEDDING_CACHE_ENTRIES, EmbeddingsMode, EncoderConfig, embeddings_mode
from .errors import ErrorType, QuestionError

if TYPE_CHECKING:
    from encoders import EmbeddingCache, JpegEncoder
    from providers import LLMProvider

    from .sampling import Recalled, TakenFrame

__all__ = ["EMBEDDING_CACHE_MAX_BYTES", "EmbeddingFunction", "FrameEncoding", "load_embedder"]

logger = logging.getLogger(__name__)

EmbeddingFunction = Callable[[list[Any]], Awaitable[Any]]
"""``async (frames) -> embeddings`` as the provider takes them: a tensor (n_frames, image_tokens, lm_hidden) for
LLaVA, or Qwen2-VL's dict ``{"image_embeds": (tokens, lm_hidden), "image_grid_thw": (n_frames, 3)}``."""

EMBEDDING_CACHE_MAX_BYTES = 256 * 1024 * 1024
"""Most bytes of embeddings the encoder's cache keeps (a LLaVA-1.5 frame is 576 x 4096 values)."""
_JPEG_SHARED_ENTRIES = 16
"""Frames whose JPEG encoding is kept for other questions on the same frames."""


def load_embedder(model_path: str, *, cache_entries: int = DEFAULT_EMBEDDING_CACHE_ENTRIES) -> Any:
    """The encoder that turns frames into the LM-space embeddings of the model at `model_path` (blocking: call it
    in a thread): `encoders.encoder_for` picks it by the folder's model family. The one place the embedding encoder
    is chosen and loaded; `cache_entries` 0: no cache. Raises `encoders.UnsupportedModelFamilyError` for a family
    no encoder computes, `encoders.CheckpointError` for a folder it cannot read."""
    from encoders import EmbeddingCache, encoder_for

    cache = EmbeddingCache(cache_entries, EMBEDDING_CACHE_MAX_BYTES) if cache_entries > 0 else None
    return encoder_for(model_path, cache=cache)


def _refuse_unsupported_family(model_path: str | None) -> None:
    """Refuse now (ValueError naming the supported families) a local model folder whose family has no encoder.

    Reads only `config.json`, so construction stays cheap; a path that is not a readable local folder (a Hugging
    Face id, a typo) is left to `load_embedder`, which fails with the file it could not read."""
    from encoders import SUPPORTED_FAMILIES, CheckpointError, model_family

    if not model_path:
        return
    try:
        family = model_family(model_path)
    except CheckpointError:
        return
    if family not in SUPPORTED_FAMILIES:
        from encoders import UnsupportedModelFamilyError, encoder_for

        try:
            encoder_for(model_path)  # refuses before loading anything, naming the supported families
        except UnsupportedModelFamilyError as exc:
            raise UnsupportedModelFamilyError(f"{exc} For the agent: encoder.embeddings: off sends the frames as JPEG.") from None


class FrameEncoding:
    """Frames to model input for one provider: JPEG data URLs or embeddings, decided once at construction."""

    def __init__(
        self,
        llm: LLMProvider,
        *,
        mode: EmbeddingsMode | str = EmbeddingsMode.AUTO,
        embedding_function: EmbeddingFunction | None = None,
        jpeg_encoder: JpegEncoder | None = None,
        config: EncoderConfig | None = None,
        provider_name: str | None = None,
        model_path: str | None = None,
    ) -> None:
        """`model_path`: the model folder whose family's encoder makes the default embeddings (None:
        `config.clip_checkpoint`, else the provider's model). Raises ValueError when the mode and the provider do
        not fit together, or when the default embeddings would serve and the folder's model family has no encoder
        (`encoders.UnsupportedModelFamilyError`)."""
        self.config = config or EncoderConfig()
        self.mode = embeddings_mode(mode)
        name = provider_name or type(llm).__name__
        takes = llm.capabilities.image_embeddings
        kinds = " or ".join(embedding_kinds())
        if embedding_function is not None and not takes:
            raise ValueError(f"{name} cannot take image embeddings; use provider {kinds} with enable_mm_embeds: true, "
                             "or drop the embedding function (frames then go as JPEG)")
        if self.mode is EmbeddingsMode.OFF and embedding_function is not None:
            raise ValueError("JPEG frames were asked for (encoder.embeddings: off): drop the "
                             "embedding_function, or ask for embeddings")
        if self.mode is EmbeddingsMode.CLIP and not takes:
            raise ValueError(f"{name} cannot take image embeddings; use provider {kinds} with enable_mm_embeds: true, "
                             "or set encoder.embeddings: auto")
        self._llm = llm
        self._model_path = model_path or self.config.clip_checkpoint
        self._clip: Any = None
        self._clip_lock = asyncio.Lock()
        self._closed = False
        if embedding_function is None and takes and self.mode is not EmbeddingsMode.OFF:
            # With none given, the encoder of the model's family serves; a family without one is refused now.
            _refuse_unsupported_family(self._model_path or llm.model)
            embedding_function = self._default_embeddings
        self.embedding_function = embedding_function
        if jpeg_encoder is None and embedding_function is None:
            from encoders import JpegEncoder

            jpeg_encoder = JpegEncoder(max_side=self.config.jpeg_max_side, quality=self.config.jpeg_quality)
        self.jpeg_encoder = jpeg_encoder
        self._shared: collections.OrderedDict[tuple[str, int, int], tuple[Any, asyncio.Future[list[str]], int]] = (
            collections.OrderedDict())
        """(source, seq, id(frame)) -> (frame, the JPEG encoding of its batch, its index in the batch)."""

    @classmethod
    def from_config(cls, config: EncoderConfig, llm: LLMProvider, *, provider_name: str | None = None,
                    model_path: str | None = None) -> FrameEncoding:
        """The daemon's encoding: the `encoder` section applied to this provider."""
        return cls(llm, mode=config.embeddings, config=config, provider_name=provider_name, model_path=model_path)

    @property
    def uses_embeddings(self) -> bool:
        """True when frames go as embeddings, False for JPEG data URLs."""
        return self.embedding_function is not None

    def __repr__(self) -> str:
        return f"FrameEncoding({'embeddings' if self.uses_embeddings else 'jpeg'}, mode={self.mode.value})"

    async def start(self) -> None:
        """Load the embedding encoder now when it will serve (the daemon: a bad checkpoint fails at start, not later)."""
        if self.embedding_function == self._default_embeddings:
            await self._embedder()

    async def content(self, text: str, frames: Sequence[TakenFrame], source: str,
                      recalled: Sequence[Recalled] = ()) -> Any:
        """The user message's content: text plus the frames as embeddings or `image_url` parts. `recalled` (a
        question about the past): stored images, each after its caption, before the live frames."""
        if self.embedding_function is not None:
            pictures = await asyncio.to_thread(_decoded, [r.image for r in recalled if r.image is not None])
            captions = [r.caption() for r in recalled]
            return {"text": "\n".join([text, *captions]),
                    "image_embeddings": await self.embedding_function(pictures + [f.frame for f in frames])}
        parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
        for item in recalled:
            parts.append({"type": "text", "text": item.caption()})
            if item.image is not None:
                parts.append({"type": "image_url", "image_url": {"url": await self._stored_url(item.image)}})
        return parts + [
            {"type": "image_url", "image_url": {"url": url}} for url in await self._jpeg_urls(frames, source)]

    async def _stored_url(self, image: Any) -> str:
        """A stored picture as a data URL: JPEG bytes as they are, anything else encoded (in a worker thread)."""
        if isinstance(image, bytes | bytearray):
            return "data:image/jpeg;base64," + base64.b64encode(bytes(image)).decode("ascii")
        encoder = self.jpeg_encoder
        assert encoder is not None
        return await asyncio.to_thread(encoder.data_url, image)

    async def _jpeg_urls(self, frames: Sequence[TakenFrame], source: str) -> list[str]:
        # Several questions on the same frames encode them once, also while the encoding runs: the cache holds the
        # encoding task (shielded, so a question that times out does not cancel it for the others). An entry holds the
        # frame itself, so its id() cannot be reused while cached.
        keys = [(source, f.seq, id(f.frame)) for f in frames]
        missing = [(k, f.frame) for k, f in zip(keys, frames, strict=True) if k not in self._shared]
        if missing:
            encoder = self.jpeg_encoder
            assert encoder is not None

            def encode() -> list[str]:
                return [encoder.data_url(frame) for _, frame in missing]

            batch = asyncio.ensure_future(asyncio.to_thread(encode))
            batch.add_done_callback(self._forget_failed)
            for i, (key, frame) in enumerate(missing):
                self._shared[key] = (frame, batch, i)
        entries = [self._shared[k] for k in keys]
        for key in keys:
            self._shared.move_to_end(key)
        while len(self._shared) > _JPEG_SHARED_ENTRIES:
            self._shared.popitem(last=False)
        return [(await asyncio.shield(batch))[i] for _, batch, i in entries]

    def _forget_failed(self, batch: asyncio.Future[list[str]]) -> None:
        if batch.cancelled() or batch.exception() is not None:
            for key in [k for k, (_, b, _) in self._shared.items() if b is batch]:
                del self._shared[key]

    async def _embedder(self) -> Any:
        if self._closed:
            raise QuestionError(ErrorType.SHUTDOWN, "the frame encoder is closed")
        if self._clip is None:
            async with self._clip_lock:
                if self._clip is None:
                    path = self._model_path or self._llm.model
                    if not path:
                        raise QuestionError(ErrorType.INTERNAL, "no model folder to load the embedding encoder from "
                                            "(encoder.clip_checkpoint or llm.model_name)")
                    self._clip = await asyncio.to_thread(load_embedder, path, cache_entries=self.config.cache_entries)
                    logger.info("frames go to the LLM as %s embeddings from %s", type(self._clip).__name__, path)
        return self._clip

    async def _default_embeddings(self, frames: list[Any]) -> Any:
        """Embeddings by the encoder of the provider's own model folder, loaded on first use (or by `start`)."""
        return await (await self._embedder()).aembed_for_llm(frames)

    @property
    def embedder(self) -> Any:
        """The embedding encoder once loaded (`ClipEncoder` or `Qwen2VLEncoder`; None: not yet, or frames go as JPEG
        or through a given function)."""
        return self._clip

    def cache_stats(self) -> Any:
        """The embedding encoder's `EmbeddingCache` counters (None: no cache, or no encoder loaded)."""
        cache: EmbeddingCache | None = None if self._clip is None else self._clip.cache
        return None if cache is None else cache.stats()

    async def aclose(self) -> None:
        """Wait for JPEG encodings still running; close the embedding encoder. Safe twice."""
        running = {b for _, b, _ in self._shared.values() if not b.done()}
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        if self._closed:
            return
        self._closed = True
        if self._clip is not None:
            with contextlib.suppress(Exception):
                await self._clip.aclose()


def _decoded(images: list[Any]) -> list[Any]:
    """Stored pictures for an embedding encoder: JPEG bytes decoded to RGB arrays, others as they are (CPU work:
    a worker thread)."""
    import io

    import numpy as np
    from PIL import Image

    return [np.asarray(Image.open(io.BytesIO(bytes(i))).convert("RGB")) if isinstance(i, bytes | bytearray) else i
            for i in images]
