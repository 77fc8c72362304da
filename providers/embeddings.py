"""Precomputed image embeddings checked against the model before the engine sees them.

vLLM takes LM-space image features `(n_images, image_tokens, lm_hidden)` (or a list of 2-D tensors) with
`enable_mm_embeds`. A wrong shape inside the engine gives an error about tensors, not about what the caller did;
here it is an `EmbeddingShapeError` (a ValueError) that says expected and got. torch is imported on first use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import EmbeddingShapeError

__all__ = ["EmbeddingShape", "expected_image_tokens"]


def expected_image_tokens(hf_config: Any) -> int | None:
    """Feature tokens per image for LLaVA-1.5-style models (fixed grid); None where it varies by image size."""
    if getattr(hf_config, "model_type", None) != "llava":
        return None
    vision = hf_config.vision_config
    grid = (vision.image_size // vision.patch_size) ** 2
    return grid + (1 if getattr(hf_config, "vision_feature_select_strategy", "default") == "full" else 0)


@dataclass(frozen=True)
class EmbeddingShape:
    """What one model takes: `lm_hidden` per token, `image_tokens` per image (None: not fixed), in `dtype`."""

    model: str
    lm_hidden: int
    image_tokens: int | None
    dtype: Any
    endpoint: str | None = None

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

    def check(self, items: list[Any]) -> Any:
        """Shape, dtype and finiteness checked; one 3-D tensor in the model's dtype (a list if lengths differ)."""
        import torch

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
