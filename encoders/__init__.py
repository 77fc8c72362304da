"""Frames to model input: JPEG/base64 for HTTP providers, CLIP embeddings for the native vLLM provider.

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
    UnsupportedVisionConfigError,
)
from .frames import ChannelOrder
from .jpeg import JpegConfig, JpegEncoder

__all__ = [
    "CacheConfig",
    "CacheStats",
    "EmbeddingCache",
    "Fingerprint",
    "ChannelOrder",
    "CheckpointError",
    "EncoderConfigError",
    "EncoderError",
    "EncodingError",
    "ImageInputError",
    "JpegConfig",
    "JpegEncoder",
    "MissingDependencyError",
    "UnsupportedVisionConfigError",
    "fingerprint",
]
