"""Qwen2-VL image embeddings: the checkpoint's vision tower and patch merger, nothing of its language model.

`Qwen2VLEncoder(path).embed_for_llm(images)` gives what vLLM takes for a Qwen2-VL model with
`enable_mm_embeds=True`: `{"image_embeds": (tokens, lm_hidden), "image_grid_thw": (n_images, 3)}`, the tokens of
all images one after another (image i has `grid[i].prod() // merge_size**2` of them). Images keep their aspect
ratio, so the token count varies by size; the grid tells vLLM where each image's tokens go.

Preprocessing is the checkpoint's own image processor (the one vLLM loads for raw images), and the tower is
transformers' module filled with the `visual.*` weights only, so a 7B checkpoint costs the tower's memory, not the
model's. torch and transformers are imported on first use.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

from .cache import EmbeddingCache
from .errors import CheckpointError, ImageInputError, MissingDependencyError
from .frames import ChannelOrder, frame_size, parse_channel_order, to_array

__all__ = ["Qwen2VLEncoder"]

_VISUAL_PREFIXES = ("model.visual.", "visual.")


def _import_torch_transformers():
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise MissingDependencyError(
            f"Qwen2VLEncoder needs torch and transformers ({exc.name or exc} is missing): pip install torch transformers"
        ) from exc
    return torch, transformers


class Qwen2VLEncoder:
    """The vision tower + merger of a local Qwen2-VL folder; `embed_for_llm` returns vLLM's `image_embeds` form."""

    family = "qwen2_vl"

    def __init__(
        self, path: str | Path, *, device: str = "cpu", dtype: Any = None, cache: EmbeddingCache | None = None
    ) -> None:
        """`cache`: reuse an image's embeddings when the same frame (same size) comes again, e.g. a static scene."""
        torch, transformers = _import_torch_transformers()
        from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

        self.path = Path(path).expanduser()
        config = _read_config(self.path)
        if config.get("model_type") != "qwen2_vl":
            raise CheckpointError(f"{self.path} is a {config.get('model_type')!r} model, not qwen2_vl")
        hf_config = transformers.Qwen2VLConfig.from_pretrained(self.path)
        self.lm_hidden_size = int(hf_config.get_text_config().hidden_size)
        self.merge_size = int(hf_config.vision_config.spatial_merge_size)
        dtype = dtype or torch.float32
        tower = Qwen2VisionTransformerPretrainedModel._from_config(hf_config.vision_config, dtype=dtype)
        missing, unexpected = tower.load_state_dict(_visual_weights(self.path), strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"{self.path}: the vision tower's weights do not match its config "
                f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
            )
        self.visual = tower.to(device=device).eval()
        self.device = device
        self.cache = cache
        self.image_processor = transformers.AutoImageProcessor.from_pretrained(self.path)
        self._lock = threading.Lock()
        """The tower is used by one thread at a time (torch modules are not meant to be run concurrently)."""

    def __repr__(self) -> str:
        return f"Qwen2VLEncoder({str(self.path)!r}, device={self.device})"

    def image_inputs(self, images: Any, *, channel_order: ChannelOrder | str = ChannelOrder.RGB) -> dict[str, Any]:
        """`pixel_values` (patches) and `image_grid_thw`, as the checkpoint's processor makes them."""
        frames = list(images) if isinstance(images, (list, tuple)) else [images]
        if not frames:
            raise ImageInputError("no images given")
        arrays = []
        for i, frame in enumerate(frames):
            try:
                arrays.append(to_array(frame, out="rgb", channel_order=channel_order))
            except ImageInputError as exc:
                raise ImageInputError(f"image {i}: {exc}") from None
        return self.image_processor(images=arrays, return_tensors="pt")

    def embed_for_llm(self, images: Any, *, channel_order: ChannelOrder | str = ChannelOrder.RGB) -> dict[str, Any]:
        """`{"image_embeds": (tokens, lm_hidden) float32, "image_grid_thw": (n_images, 3) int64}` of one image or a
        list: what vLLM's `multi_modal_data={"image": ...}` and `VLLMNativeProvider`'s `image_embeddings` take."""
        if self.cache is None:
            return self._forward(images, channel_order)
        import torch

        frames = list(images) if isinstance(images, (list, tuple)) else [images]
        order = parse_channel_order(channel_order).value
        # The cache's fingerprint ignores the aspect ratio, but the grid depends on the size: the size is in the key.
        keys = [(self.cache.fingerprint(f, channel_order=order), "qwen2vl-llm-{}x{}".format(*frame_size(f))) for f in frames]
        found: list[Any] = [self.cache.get(fp, namespace=namespace) for fp, namespace in keys]
        missing = [i for i, value in enumerate(found) if value is None]
        if missing:
            computed = self._forward([frames[i] for i in missing], channel_order)
            grid = computed["image_grid_thw"]
            parts = computed["image_embeds"].split(self.tokens_per_image(grid))
            for j, i in enumerate(missing):
                found[i] = (parts[j].clone(), grid[j].clone())
                self.cache.put(keys[i][0], found[i], namespace=keys[i][1])
        return {
            "image_embeds": torch.cat([embeds for embeds, _ in found]),
            "image_grid_thw": torch.stack([grid for _, grid in found]),
        }

    def _forward(self, images: Any, channel_order: ChannelOrder | str) -> dict[str, Any]:
        import torch

        inputs = self.image_inputs(images, channel_order=channel_order)
        grid = inputs["image_grid_thw"]
        with self._lock, torch.inference_mode():
            pixels = inputs["pixel_values"].to(device=self.device, dtype=self.visual.dtype)
            out = self.visual(pixels, grid_thw=grid.to(self.device))
        embeds = out.pooler_output if hasattr(out, "pooler_output") else out
        return {"image_embeds": embeds.detach().to("cpu", torch.float32), "image_grid_thw": grid.to(torch.int64)}

    async def aembed_for_llm(self, images: Any, *, channel_order: ChannelOrder | str = ChannelOrder.RGB) -> dict[str, Any]:
        """`embed_for_llm` in a worker thread, so the event loop keeps running."""
        return await asyncio.to_thread(self.embed_for_llm, images, channel_order=channel_order)

    def tokens_per_image(self, grid: Any) -> list[int]:
        """Each image's share of `image_embeds`, from its `image_grid_thw` row."""
        return [int(row.prod()) // self.merge_size**2 for row in grid]

    def close(self) -> None:
        """Nothing to release (no thread of its own); here so every encoder closes the same way."""

    async def aclose(self) -> None:
        self.close()


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path / 'config.json'}: {exc}") from exc


def _visual_weights(path: Path) -> dict[str, Any]:
    """The `visual.*` tensors of every safetensors file, keys without the prefix (the tower's own names)."""
    try:
        from safetensors import safe_open
    except ImportError as exc:
        raise MissingDependencyError("Qwen2VLEncoder needs safetensors: pip install safetensors") from exc
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path} has no *.safetensors weights")
    weights = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                for prefix in _VISUAL_PREFIXES:
                    if key.startswith(prefix):
                        weights[key[len(prefix) :]] = handle.get_tensor(key)
                        break
    if not weights:
        raise CheckpointError(f"{path} has no vision tower weights (keys starting with {' or '.join(_VISUAL_PREFIXES)})")
    return weights
