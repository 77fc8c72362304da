"""The errors `encoders` raises: one tree, so callers can catch the package's failures in one place.

```
EncoderError
 ├── ImageInputError (also TypeError)        a frame of the wrong type, dtype or shape
 ├── EncoderConfigError (also ValueError)    a bad setting (quality out of 1..100, max_side < 1, ...)
 ├── EncodingError                           the JPEG library refused the image
 ├── CheckpointError                         a checkpoint folder that is missing files or is not LLaVA-shaped
 │    ├── UnsupportedVisionConfigError       a vision config open_clip cannot express (names the field)
 │    └── UnsupportedModelFamilyError (also ValueError)  a model family we cannot make embeddings for
 └── MissingDependencyError (also ImportError)  torch / open_clip / safetensors not installed
```
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "EncoderConfigError",
    "EncoderError",
    "EncodingError",
    "ImageInputError",
    "MissingDependencyError",
    "UnsupportedModelFamilyError",
    "UnsupportedVisionConfigError",
]


class EncoderError(Exception):
    """Base of every error raised by `encoders`."""


class ImageInputError(EncoderError, TypeError):
    """A frame of the wrong type, dtype or shape; the message says what was expected."""


class EncoderConfigError(EncoderError, ValueError):
    """A setting out of range; the message names it and its allowed values."""


class EncodingError(EncoderError):
    """The image library refused to encode an otherwise valid image."""


class CheckpointError(EncoderError):
    """A checkpoint folder that lacks a file or a key, or is not a LLaVA checkpoint."""


class UnsupportedVisionConfigError(CheckpointError):
    """The checkpoint's vision config has a field open_clip's VisionTransformer cannot express."""


class UnsupportedModelFamilyError(CheckpointError, ValueError):
    """A model whose image embeddings no encoder here computes; the message names the supported families."""


class MissingDependencyError(EncoderError, ImportError):
    """An optional dependency (torch, open_clip, safetensors) is not installed; the message says which extra."""
