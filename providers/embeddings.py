"""Precomputed image embeddings checked against the model before the engine sees them.

vLLM takes LM-space image features `(n_images, image_tokens, lm_hidden)` (or a list of 2-D tensors) with
`enable_mm_embeds`. Models whose images keep their aspect ratio (Qwen2-VL and kin: a vision config with
`spatial_merge_size`) take `{"image_embeds": (tokens, lm_hidden), "image_grid_thw": (n_images, 3)}` instead, every
image's tokens one after another (`grid[i].prod() // merge_size**2` of them). A wrong shape inside the engine
gives an error about tensors, not about what the caller did; here it is an `EmbeddingShapeError` (a ValueError)
that says expected and got. torch is imported on first use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import EmbeddingShapeError

__all__ = ["EmbeddingShape", "GridImage", "expected_image_tokens", "grid_merge_size"]

GRID_FORM = '{"image_embeds": (tokens, lm_hidden), "image_grid_thw": (n_images, 3)}'


def expected_image_tokens(hf_config: Any) -> int | None:
    """Feature tokens per image for LLaVA-1.5-style models (fixed grid); None where it varies by image size."""
    if getattr(hf_config, "model_type", None) != "llava":
        return None
    vision = hf_config.vision_config
    grid = (vision.image_size // vision.patch_size) ** 2
    return grid + (1 if getattr(hf_config, "vision_feature_select_strategy", "default") == "full" else 0)


def grid_merge_size(hf_config: Any) -> int | None:
    """The patch merge size of models that take embeddings with an `image_grid_thw` (Qwen2-VL style), else None."""
    merge = getattr(getattr(hf_config, "vision_config", None), "spatial_merge_size", None)
    return int(merge) if merge else None


@dataclass(frozen=True)
class GridImage:
    """One image's embeddings `(tokens, lm_hidden)` and its `(t, h, w)` patch grid."""

    embeds: Any
    grid: Any


@dataclass(frozen=True)
class EmbeddingShape:
    """What one model takes: `lm_hidden` per token, `image_tokens` per image (None: not fixed), in `dtype`."""

    model: str
    lm_hidden: int
    image_tokens: int | None
    dtype: Any
    endpoint: str | None = None
    merge_size: int | None = None
    """Set for models that take the grid form (image_embeds + image_grid_thw)."""

    @classmethod
    def of_model(cls, model_config: Any, *, endpoint: str | None = None) -> EmbeddingShape:
        """From a vLLM `ModelConfig` (its `hf_config`, `dtype` and `model`)."""
        hf_config = model_config.hf_config
        return cls(
            model=str(model_config.model),
            lm_hidden=hf_config.get_text_config().hidden_size,
            image_tokens=expected_image_tokens(hf_config),
            dtype=model_config.dtype,
            endpoint=endpoint,
            merge_size=grid_merge_size(hf_config),
        )

    @property
    def per_image(self) -> str:
        return f"({self.image_tokens or 'image_tokens'}, {self.lm_hidden})"

    def _error(self, message: str) -> EmbeddingShapeError:
        return EmbeddingShapeError(message, endpoint=self.endpoint)

    def split(self, value: Any) -> list[Any]:
        """One 2-D tensor per image from a 3-D tensor/array or a list of 2-D ones (a bare 2-D one is refused)."""
        import numpy as np
        import torch

        if isinstance(value, Mapping):
            return self._split_grid(value)
        if self.merge_size is not None:
            raise self._error(
                f"{self.model} places image tokens by each image's patch grid: image_embeddings must be {GRID_FORM} "
                "(encoders.encoder_for(model_folder).embed_for_llm(images) makes it)"
            )
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(value)
        if isinstance(value, torch.Tensor):
            if value.dim() == 3:
                return list(value.unbind(0))
            raise self._error(
                f"image_embeddings must be a 3-D tensor (n_images, {self.per_image[1:]} or a list of 2-D tensors; "
                f"got shape {tuple(value.shape)} (for one image use embeddings[None])"
            )
        if isinstance(value, (list, tuple)) and value:
            items = [torch.from_numpy(v) if isinstance(v, np.ndarray) else v for v in value]
            for i, item in enumerate(items):
                if not isinstance(item, torch.Tensor) or item.dim() != 2:
                    got = tuple(item.shape) if isinstance(item, torch.Tensor) else type(item).__name__
                    raise self._error(f"image_embeddings[{i}] must be a 2-D tensor {self.per_image}; got {got}")
            return items
        raise self._error(
            f"image_embeddings must be a torch tensor (n_images, {self.per_image[1:]} or a list of 2-D tensors; "
            f"got {type(value).__name__}"
        )

    def _split_grid(self, value: Mapping[str, Any]) -> list[GridImage]:
        """One GridImage per row of `image_grid_thw`, after checking the token count the grid implies."""
        import numpy as np
        import torch

        if self.merge_size is None:
            raise self._error(
                f"{self.model} takes image_embeddings as a tensor (n_images, {self.per_image[1:]}; "
                f"the {GRID_FORM} form is for Qwen2-VL-style models"
            )
        if set(value) != {"image_embeds", "image_grid_thw"}:
            raise self._error(f"image_embeddings as a dict must have exactly the keys of {GRID_FORM}; got {sorted(value)}")
        embeds, grid = (torch.from_numpy(v) if isinstance(v, np.ndarray) else v for v in (value["image_embeds"], value["image_grid_thw"]))
        if not isinstance(embeds, torch.Tensor) or embeds.dim() != 2:
            got = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
            raise self._error(f"image_embeds must be a 2-D tensor (tokens, {self.lm_hidden}); got {got}")
        if not isinstance(grid, torch.Tensor) or grid.dim() != 2 or grid.shape[-1] != 3 or torch.is_floating_point(grid):
            got = f"{tuple(grid.shape)} {grid.dtype}" if isinstance(grid, torch.Tensor) else type(grid).__name__
            raise self._error(f"image_grid_thw must be an integer tensor (n_images, 3); got {got}")
        counts = [int(row.prod()) // self.merge_size**2 for row in grid]
        if sum(counts) != embeds.shape[0]:
            raise self._error(
                f"image_grid_thw {grid.tolist()} means {sum(counts)} image tokens for {self.model} (merge size "
                f"{self.merge_size}), but image_embeds has {embeds.shape[0]}"
            )
        return [GridImage(part, row) for part, row in zip(embeds.split(counts), grid, strict=True)]

    def check(self, items: list[Any]) -> Any:
        """Shape, dtype and finiteness checked; one 3-D tensor in the model's dtype (a list if lengths differ), or
        for grid models one `{"image_embeds", "image_grid_thw"}` dict of every image."""
        import torch

        if items and isinstance(items[0], GridImage):
            embeds = self.check([item.embeds for item in items])
            embeds = torch.cat(list(embeds), 0) if isinstance(embeds, list) else embeds.flatten(0, 1)
            grid = torch.stack([item.grid for item in items]).to(torch.int64)
            return {"image_embeds": embeds, "image_grid_thw": grid}

        for i, item in enumerate(items):
            got = tuple(item.shape)
            if item.shape[-1] != self.lm_hidden:
                raise self._error(
                    f"image embedding {i} has hidden size {item.shape[-1]}, but {self.model}'s language model has "
                    f"hidden size {self.lm_hidden}: expected {self.per_image} per image, got {got} "
                    "(were these projected by this model's projector?)"
                )
            if self.image_tokens is not None and item.shape[0] != self.image_tokens:
                raise self._error(
                    f"image embedding {i} has {item.shape[0]} tokens, but {self.model} uses {self.image_tokens} "
                    f"tokens per image: expected {self.per_image}, got {got}"
                )
            if not torch.is_floating_point(item):
                raise self._error(f"image embedding {i} has dtype {item.dtype}; expected a float tensor")
            if not bool(torch.isfinite(item).all()):
                raise self._error(f"image embedding {i} holds NaN or infinite values")
        items = [item.detach().to(device="cpu", dtype=self.dtype).contiguous() for item in items]
        if len({tuple(item.shape) for item in items}) == 1:
            return torch.stack(items)
        return items
