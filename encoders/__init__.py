"""Frames to model input: JPEG/base64 for HTTP providers, image embeddings for the native vLLM provider.

`encoder_for(model_folder)` picks the embeddings encoder of a model's family (LLaVA: `ClipEncoder`, Qwen2-VL:
`Qwen2VLEncoder`).

Imports nothing of ours. The CLIP names need torch and open_clip (the `clip` extra) and are imported lazily,
so `import encoders` works on the light install.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .cache import CacheConfig, CacheStats, EmbeddingCache, Fingerprint, fingerprint
from .errors import (
    CheckpointError,
    EncoderConfigError,
    EncoderError,
    EncodingError,
    ImageInputError,
    MissingDependencyError,
    UnsupportedModelFamilyError,
    UnsupportedVisionConfigError,
)
from .family import SUPPORTED_FAMILIES, encoder_for, model_family
from .frames import ChannelOrder, to_array
from .jpeg import JpegConfig, JpegEncoder

_LAZY = {
    "ClipEncoder": ".clip",
    "ClipEncoderConfig": ".clip",
    "PreprocessConfig": ".preprocess",
    "Qwen2VLEncoder": ".qwen2_vl",
    "Preprocessor": ".preprocess",
    "LlavaCheckpoint": ".llava_checkpoint",
    "read_llava_checkpoint": ".llava_checkpoint",
}

if TYPE_CHECKING:
    from .clip import ClipEncoder, ClipEncoderConfig
    from .llava_checkpoint import LlavaCheckpoint, read_llava_checkpoint
    from .preprocess import PreprocessConfig, Preprocessor
    from .qwen2_vl import Qwen2VLEncoder

__all__ = [
    "CacheConfig",
    "CacheStats",
    "EmbeddingCache",
    "Fingerprint",
    "ChannelOrder",
    "ClipEncoder",
    "ClipEncoderConfig",
    "CheckpointError",
    "EncoderConfigError",
    "EncoderError",
    "EncodingError",
    "ImageInputError",
    "JpegConfig",
    "JpegEncoder",
    "LlavaCheckpoint",
    "MissingDependencyError",
    "PreprocessConfig",
    "Preprocessor",
    "Qwen2VLEncoder",
    "SUPPORTED_FAMILIES",
    "UnsupportedModelFamilyError",
    "UnsupportedVisionConfigError",
    "encoder_for",
    "fingerprint",
    "model_family",
    "read_llava_checkpoint",
    "to_array",
]


def __getattr__(name: str) -> Any:
    """Import the torch-backed names on first use, so `import encoders` works without torch/open_clip."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'encoders' has no attribute {name!r}")
    import importlib

    try:
        value = getattr(importlib.import_module(module, __name__), name)
    except ImportError as exc:
        if isinstance(exc, MissingDependencyError):
            raise
        raise MissingDependencyError(
            f"encoders.{name} needs torch and open_clip ({exc.name or exc} is missing): "
            "pip install 'visual-agent[clip]'"
        ) from exc
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
