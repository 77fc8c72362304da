"""`FrameEncoding`: how sampled frames become the user message's content, JPEG data URLs or image embeddings.

One object owns the whole choice, so the daemon and a `VisualAgent` built by hand decide it the same way:
- `encoder.embeddings` (`EmbeddingsMode`): `auto` sends embeddings when the provider takes them, `clip` always
  (refused at once if the provider cannot take them), `off` never. The agent's older `frames_as` spellings
  (`jpeg`, `embeddings`) still work, with a DeprecationWarning.
- JPEG: one `JpegEncoder` (`encoder.jpeg_max_side`, `encoder.jpeg_quality`), run in a worker thread; several
  questions on the same frames share one encoding, also while it runs.
- Embeddings: the given `embedding_function`, else the CLIP encoder of the provider's LLaVA folder, loaded by
  `load_embedder` (eagerly by `start()`, else on first use) with a bounded `EmbeddingCache`, so a static scene
  is not encoded again (`encoder.cache_entries`, 0: off).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import warnings
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from providers.registry import embedding_kinds

from .config import DEFAULT_EMBEDDING_CACHE_ENTRIES, EmbeddingsMode, EncoderConfig, embeddings_mode
from .errors import ErrorType, QuestionError

if TYPE_CHECKING:
    from encoders import ClipEncoder, EmbeddingCache, JpegEncoder
    from providers import LLMProvider

    from .sampling import TakenFrame

__all__ = ["EMBEDDING_CACHE_MAX_BYTES", "EmbeddingFunction", "FrameEncoding", "load_embedder"]

logger = logging.getLogger(__name__)

EmbeddingFunction = Callable[[list[Any]], Awaitable[Any]]
"""``async (frames) -> embeddings`` of shape (n_frames, image_tokens, lm_hidden)."""

EMBEDDING_CACHE_MAX_BYTES = 256 * 1024 * 1024
"""Most bytes of embeddings the CLIP cache keeps (a LLaVA-1.5 frame is 576 x 4096 values)."""
_JPEG_SHARED_ENTRIES = 16
"""Frames whose JPEG encoding is kept for other questions on the same frames."""


def load_embedder(model_path: str, *, cache_entries: int = DEFAULT_EMBEDDING_CACHE_ENTRIES) -> ClipEncoder:
    """The encoder that turns frames into the LM-space embeddings of the model at `model_path` (blocking: call it
    in a thread). The one place the CLIP encoder is chosen and loaded; `cache_entries` 0: no cache."""
    from encoders import ClipEncoder, EmbeddingCache

    cache = EmbeddingCache(cache_entries, EMBEDDING_CACHE_MAX_BYTES) if cache_entries > 0 else None
    return ClipEncoder.from_llava(model_path, cache=cache)


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
        """`model_path`: the LLaVA folder of the default CLIP encoder (None: `config.clip_checkpoint`, else the
        provider's model). Raises ValueError when the mode and the provider do not fit together."""
        self.config = config or EncoderConfig()
        self.mode = embeddings_mode(mode)
        name = provider_name or type(llm).__name__
        takes = llm.capabilities.image_embeddings
        kinds = " or ".join(embedding_kinds())
        if embedding_function is not None and not takes:
            raise ValueError(f"{name} cannot take image embeddings; use provider {kinds} with enable_mm_embeds: true, "
                             "or drop the embedding function (frames then go as JPEG)")
        if self.mode is EmbeddingsMode.OFF and embedding_function is not None:
            raise ValueError("JPEG frames were asked for (frames_as='jpeg' / encoder.embeddings: off): drop the "
                             "embedding_function, or ask for embeddings")
        if self.mode is EmbeddingsMode.CLIP and not takes:
            raise ValueError(f"{name} cannot take image embeddings; use provider {kinds} with enable_mm_embeds: true, "
                             "or set encoder.embeddings: auto")
        self._llm = llm
        self._model_path = model_path or self.config.clip_checkpoint
        self._clip: ClipEncoder | None = None
        self._clip_lock = asyncio.Lock()
        self._closed = False
        if embedding_function is None and takes and self.mode is not EmbeddingsMode.OFF:
            embedding_function = self._default_embeddings  # with none given, the CLIP encoder serves
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
        """Load the CLIP encoder now when it will serve (the daemon: a bad checkpoint fails at start, not later)."""
        if self.embedding_function == self._default_embeddings:
            await self._embedder()

    async def content(self, text: str, frames: Sequence[TakenFrame], source: str) -> Any:
        """The user message's content: text plus the frames as embeddings or `image_url` parts."""
        if self.embedding_function is not None:
            return {"text": text, "image_embeddings": await self.embedding_function([f.frame for f in frames])}
        return [{"type": "text", "text": text}] + [
            {"type": "image_url", "image_url": {"url": url}} for url in await self._jpeg_urls(frames, source)]

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

    async def _embedder(self) -> ClipEncoder:
        if self._closed:
            raise QuestionError(ErrorType.SHUTDOWN, "the frame encoder is closed")
        if self._clip is None:
            async with self._clip_lock:
                if self._clip is None:
                    path = self._model_path or self._llm.model
                    if not path:
                        raise QuestionError(ErrorType.INTERNAL, "no LLaVA folder to load the CLIP encoder from "
                                            "(encoder.clip_checkpoint or llm.model_name)")
                    self._clip = await asyncio.to_thread(load_embedder, path, cache_entries=self.config.cache_entries)
                    logger.info("frames go to the LLM as CLIP embeddings from %s", path)
        return self._clip

    async def _default_embeddings(self, frames: list[Any]) -> Any:
        """CLIP embeddings from the provider's own LLaVA folder, loaded on first use."""
        return await (await self._embedder()).aembed_for_llm(frames)

    @property
    def embedder(self) -> ClipEncoder | None:
        """The CLIP encoder once loaded (None: not yet, or frames go as JPEG or through a given function)."""
        return self._clip

    def cache_stats(self) -> Any:
        """The CLIP encoder's `EmbeddingCache` counters (None: no cache, or CLIP not loaded)."""
        cache: EmbeddingCache | None = None if self._clip is None else self._clip.cache
        return None if cache is None else cache.stats()

    async def aclose(self) -> None:
        """Wait for JPEG encodings still running; close the CLIP encoder. Safe twice."""
        running = {b for _, b, _ in self._shared.values() if not b.done()}
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        if self._closed:
            return
        self._closed = True
        if self._clip is not None:
            with contextlib.suppress(Exception):
                await self._clip.aclose()


def frames_as_mode(frames_as: str | EmbeddingsMode) -> EmbeddingsMode:
    """`VisualAgent(frames_as=...)`: the config's values, or the older `jpeg`/`embeddings` with a DeprecationWarning."""
    if isinstance(frames_as, str) and frames_as in _OLD_FRAMES_AS:
        warnings.warn(f"frames_as={frames_as!r} is deprecated; use {_OLD_FRAMES_AS[frames_as].value!r} "
                      "(the values of encoder.embeddings)", DeprecationWarning, stacklevel=3)
    try:
        return embeddings_mode(frames_as)
    except ValueError:
        raise ValueError(f"frames_as must be auto, clip or off (or the older jpeg, embeddings), got {frames_as!r}") from None


_OLD_FRAMES_AS = {"jpeg": EmbeddingsMode.OFF, "embeddings": EmbeddingsMode.CLIP}
