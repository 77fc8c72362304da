"""CLIP image embeddings run by open_clip: pooled vectors for similarity, and LLaVA-space patch embeddings for vLLM.

`ClipEncoder(model_name, pretrained=...)` wraps any open_clip model and gives L2-normalised pooled vectors
(`embed`). `ClipEncoder.from_llava(path)` rebuilds a LLaVA checkpoint's CLIP tower in open_clip, adds its
projector, and gives `embed_for_llm`: the checkpoint's feature layer and select strategy, then the projector,
as the `(n_images, image_tokens, lm_hidden)` tensor vLLM takes with `enable_mm_embeds=True`.

The async variants run in one worker thread owned by the encoder; requests that arrive while it is busy are
run together as one batch, so frames of several sources cost one forward pass. Needs the `clip` extra.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .cache import EmbeddingCache
from .errors import EncoderConfigError, EncoderError, ImageInputError, MissingDependencyError
from .frames import ChannelOrder, frame_size, parse_channel_order
from .llava_checkpoint import (
    LlavaCheckpoint,
    LlavaProjector,
    build_open_clip_vision,
    load_weights,
    read_llava_checkpoint,
)
from .preprocess import PreprocessConfig, Preprocessor

__all__ = ["DEFAULT_MAX_BATCH", "ClipEncoder", "ClipEncoderConfig"]

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 16
_POOLED = "clip-pooled"
_LLM = "clip-llm"


@dataclass(frozen=True, kw_only=True)
class ClipEncoderConfig:
    """Where and how a ClipEncoder runs."""

    device: str = "cpu"
    """torch device, e.g. 'cpu' or 'cuda:0'."""
    dtype: torch.dtype | None = None
    """Compute dtype; None: float32 on CPU, float16 on CUDA."""
    max_batch: int = DEFAULT_MAX_BATCH
    """Most frames run in one forward pass; larger requests are split."""

    def __post_init__(self) -> None:
        if isinstance(self.max_batch, bool) or not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise EncoderConfigError(f"max_batch must be a positive int, got {self.max_batch!r}")

    def resolved_dtype(self) -> torch.dtype:
        if self.dtype is not None:
            return self.dtype
        return torch.float16 if torch.device(self.device).type == "cuda" else torch.float32


def _as_list(images: Any) -> list[Any]:
    """One frame or a list/tuple of frames, checked (cheaply: no pixels converted) before any work."""
    frames = list(images) if isinstance(images, (list, tuple)) else [images]
    if not frames:
        raise ImageInputError("no images given")
    for i, frame in enumerate(frames):
        try:
            frame_size(frame)
        except ImageInputError as exc:
            raise ImageInputError(f"image {i}: {exc}") from None
    return frames


class ClipEncoder:
    """CLIP vision encoder on open_clip: `embed` (pooled, L2-normalised) and, from a LLaVA checkpoint,
    `embed_for_llm`."""

    def __init__(
        self,
        model_name: str,
        pretrained: str | None = None,
        *,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        cache: EmbeddingCache | None = None,
    ) -> None:
        """Any open_clip model: a built-in name ('ViT-B-32'), 'hf-hub:org/repo', 'local-dir:/path'; `pretrained` a tag
        or a local checkpoint file (None: random weights; nothing is downloaded unless a hub tag asks for it)."""
        try:
            import open_clip
        except ImportError as exc:
            raise MissingDependencyError("ClipEncoder needs open_clip: pip install 'visual-agent[clip]'") from exc
        config = ClipEncoderConfig(device=device, dtype=dtype, max_batch=max_batch)
        if pretrained is not None and Path(pretrained).expanduser().exists():
            pretrained = str(Path(pretrained).expanduser())
        try:
            model = open_clip.create_model(model_name, pretrained=pretrained, device="cpu")
        except (RuntimeError, ValueError, FileNotFoundError) as exc:
            raise EncoderError(f"open_clip cannot create {model_name!r} (pretrained={pretrained!r}): {exc}") from exc
        visual = model.visual
        preprocess_cfg = getattr(visual, "preprocess_cfg", None) or {"size": visual.image_size}
        preprocess = PreprocessConfig.from_open_clip(preprocess_cfg)
        self._setup(config, visual, Preprocessor(preprocess), cache, name=model_name)
        self._text_model: Any = model if hasattr(model, "encode_text") else None
        self._tokenizer: Any = open_clip.get_tokenizer(model_name) if self._text_model is not None else None
        self.checkpoint: LlavaCheckpoint | None = None
        self.projector: LlavaProjector | None = None
        self.output_dtype = torch.float32

    @classmethod
    def from_llava(
        cls,
        path: str | Path,
        *,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        output_dtype: torch.dtype | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        cache: EmbeddingCache | None = None,
    ) -> ClipEncoder:
        """The vision tower and projector of a local Hugging Face LLaVA folder, run by open_clip.

        `output_dtype` (default: the checkpoint's dtype, the language model's) is what `embed_for_llm` returns.
        """
        try:
            import open_clip  # noqa: F401  (build_open_clip_vision imports from it)
        except ImportError as exc:
            raise MissingDependencyError("ClipEncoder needs open_clip: pip install 'visual-agent[clip]'") from exc
        ckpt = read_llava_checkpoint(path)
        visual = build_open_clip_vision(ckpt.vision)
        projector = load_weights(ckpt, visual)
        self = cls.__new__(cls)
        config = ClipEncoderConfig(device=device, dtype=dtype, max_batch=max_batch)
        self._setup(config, visual, Preprocessor(ckpt.preprocess), cache, name=str(ckpt.path))
        self._text_model = self._tokenizer = None  # LLaVA keeps the vision tower only
        self.checkpoint = ckpt
        self.projector = projector.to(device=config.device, dtype=config.resolved_dtype()).eval()
        self.output_dtype = output_dtype or ckpt.dtype
        return self

    def _setup(
        self, config: ClipEncoderConfig, visual: nn.Module, pre: Preprocessor, cache: EmbeddingCache | None, name: str
    ) -> None:
        self.config = config
        self.name = name
        # open_clip's VisionTransformer: `hidden_states` reads its parts by name, which nn.Module's types cannot say.
        self.visual: Any = visual.to(device=config.device, dtype=config.resolved_dtype()).eval()
        self.preprocessor = pre
        self.cache = cache
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        kind = "llava" if self.checkpoint is not None else "open_clip"
        return f"ClipEncoder({self.name!r}, {kind}, device={self.config.device}, dtype={self.config.resolved_dtype()})"

    # ---- shapes callers check against -------------------------------------------------------------
    @property
    def embed_dim(self) -> int:
        """Size of an `embed` vector."""
        return int(self.visual.output_dim)

    @property
    def image_tokens(self) -> int:
        """Tokens per image in `embed_for_llm` (the placeholders vLLM expands an image into)."""
        return self._llava().image_tokens

    @property
    def lm_hidden_size(self) -> int:
        """Hidden size of the language model: the last dimension of `embed_for_llm`."""
        return self._llava().text_hidden_size

    def _llava(self) -> LlavaCheckpoint:
        if self.checkpoint is None:
            raise EncoderError(
                f"{self.name!r} is a plain open_clip model with no LLM projector; "
                "build with ClipEncoder.from_llava(path)"
            )
        return self.checkpoint

    # ---- sync API ------------------------------------------------------------------------------------
    def embed(self, images: Any, *, channel_order: ChannelOrder | str = ChannelOrder.RGB) -> torch.Tensor:
        """(n, embed_dim) float32 L2-normalised pooled CLIP vectors of one frame or a list of frames."""
        return self._run(_POOLED, _as_list(images), channel_order)

    @property
    def has_text(self) -> bool:
        """Whether `embed_text` works: open_clip models have a text tower, a LLaVA vision tower does not."""
        return self._text_model is not None

    @torch.inference_mode()
    def embed_text(self, texts: str | list[str]) -> torch.Tensor:
        """(n, embed_dim) float32 L2-normalised text vectors, comparable with `embed`'s (blocking)."""
        if self._text_model is None:
            raise EncoderError(f"{self.name!r} has no text tower (a LLaVA checkpoint's vision tower only)")
        tokens = self._tokenizer([texts] if isinstance(texts, str) else list(texts)).to(self.config.device)
        return F.normalize(self._text_model.encode_text(tokens).float(), dim=-1).cpu()

    def embed_for_llm(self, images: Any, *, channel_order: ChannelOrder | str = ChannelOrder.RGB) -> torch.Tensor:
        """(n_images, image_tokens, lm_hidden) projected features in `output_dtype`: what vLLM's
        `multi_modal_data={"image": tensor}` takes with `enable_mm_embeds=True`."""
        self._llava()
        return self._run(_LLM, _as_list(images), channel_order)

    def pixel_values(self, images: Any, *, channel_order: ChannelOrder | str = ChannelOrder.RGB) -> torch.Tensor:
        """(n, 3, H, W) float32 model input, as the checkpoint's image processor would make it."""
        return self.preprocessor(_as_list(images), channel_order=channel_order)

    def _run(self, kind: str, frames: list[Any], channel_order: ChannelOrder | str) -> torch.Tensor:
        if self.cache is None:
            return self._forward(kind, frames, channel_order)
        order = parse_channel_order(channel_order).value
        fps = [self.cache.fingerprint(f, channel_order=order) for f in frames]
        found = [self.cache.get(fp, namespace=kind) for fp in fps]
        missing = [i for i, v in enumerate(found) if v is None]
        if missing:
            computed = self._forward(kind, [frames[i] for i in missing], channel_order)
            for j, i in enumerate(missing):
                found[i] = computed[j].clone()
                self.cache.put(fps[i], found[i], namespace=kind)
        return torch.stack([t for t in found if t is not None])  # every slot is filled by now

    @torch.inference_mode()
    def _forward(self, kind: str, frames: list[Any], channel_order: ChannelOrder | str) -> torch.Tensor:
        outs = []
        step = self.config.max_batch
        for start in range(0, len(frames), step):
            pixels = self.preprocessor(frames[start : start + step], channel_order=channel_order)
            pixels = pixels.to(device=self.config.device, dtype=self.config.resolved_dtype())
            outs.append(self._pooled(pixels) if kind == _POOLED else self._llm(pixels))
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def _pooled(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(pixels).float(), dim=-1).cpu()

    def _llm(self, pixels: torch.Tensor) -> torch.Tensor:
        ckpt = self._llava()
        states = self.hidden_states(pixels, max(i % (ckpt.vision.num_layers + 1) for i in ckpt.feature_layers))
        feats = [states[i] for i in ckpt.feature_layers]
        if ckpt.select_strategy == "default":
            feats = [f[:, 1:] for f in feats]
        assert self.projector is not None  # set with the checkpoint
        out = self.projector(torch.cat(feats, dim=-1) if len(feats) > 1 else feats[0])
        expected = (pixels.shape[0], ckpt.image_tokens, ckpt.text_hidden_size)
        if tuple(out.shape) != expected:  # a broken invariant, not a user error
            raise EncoderError(f"embed_for_llm made {tuple(out.shape)}, expected {expected}")
        return out.to(dtype=self.output_dtype).cpu()

    def hidden_states(self, pixels: torch.Tensor, last: int | None = None) -> list[torch.Tensor]:
        """HF-indexed hidden states: [0] the embeddings after ln_pre, [i] the output of block i (up to `last`).

        Unused trailing blocks are skipped; negative indices into the returned list still mean what HF's do,
        because the list is padded with None for skipped blocks.
        """
        v = self.visual
        x = v.conv1(pixels)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls_tok = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls_tok, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.ln_pre(x)
        blocks = v.transformer.resblocks
        last = len(blocks) if last is None else last
        states: list[Any] = [x]
        for block in blocks[:last]:
            x = block(x)
            states.append(x)
        states.extend([None] * (len(blocks) - last))
        return states

    # ---- async API: one worker thread, requests that wait are batched --------------------------------
    async def aembed(self, images: Any, *, channel_order: ChannelOrder | str = ChannelOrder.RGB) -> torch.Tensor:
        """`embed` in the encoder's worker thread, batched with other requests waiting at the same time."""
        return await self._submit(_POOLED, _as_list(images), channel_order)

    async def aembed_for_llm(
        self, images: Any, *, channel_order: ChannelOrder | str = ChannelOrder.RGB
    ) -> torch.Tensor:
        """`embed_for_llm` in the encoder's worker thread, batched with other requests waiting at the same time."""
        self._llava()
        return await self._submit(_LLM, _as_list(images), channel_order)

    async def _submit(self, kind: str, frames: list[Any], channel_order: ChannelOrder | str) -> torch.Tensor:
        order = parse_channel_order(channel_order)
        loop = asyncio.get_running_loop()
        request = _Request(kind, frames, order, loop, loop.create_future())
        with self._lock:
            if self._closed:
                raise EncoderError("the ClipEncoder is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._worker, name="clip-encoder", daemon=True)
                self._thread.start()
            self._queue.put(request)
        return await request.future

    def _worker(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            pending = [first]
            stop = False
            while True:  # take everything that arrived meanwhile: one batch per kind
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                pending.append(nxt)
            groups: dict[tuple[str, ChannelOrder], list[_Request]] = {}
            for req in pending:
                groups.setdefault((req.kind, req.order), []).append(req)
            for (kind, order), reqs in groups.items():
                self._serve(kind, order, reqs)
            if stop:
                return

    def _serve(self, kind: str, order: ChannelOrder, reqs: list[_Request]) -> None:
        live = [r for r in reqs if not r.future.cancelled()]
        if not live:
            return
        try:
            out = self._run(kind, [f for r in live for f in r.frames], order)
        except Exception as exc:
            if len(live) > 1:  # one bad request must not fail the others: serve them one by one
                for r in live:
                    self._serve(kind, order, [r])
                return
            live[0].reply(exc=exc)
            return
        start = 0
        for r in live:
            r.reply(result=out[start : start + len(r.frames)])
            start += len(r.frames)

    def close(self) -> None:
        """Stop the worker thread after the requests already queued; safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            self._queue.put(None)
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    async def aclose(self) -> None:
        """`close` without blocking the loop while the last batch finishes."""
        await asyncio.to_thread(self.close)

    def __enter__(self) -> ClipEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> ClipEncoder:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@dataclass
class _Request:
    kind: str
    frames: list[Any]
    order: ChannelOrder
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future

    def reply(self, *, result: Any = None, exc: BaseException | None = None) -> None:
        def settle() -> None:
            if self.future.done():
                return
            if exc is not None:
                self.future.set_exception(exc)
            else:
                self.future.set_result(result)

        try:
            self.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop closed while we worked: nobody is waiting
            log.debug("clip encoder: loop closed before a result could be delivered")
