"""Detailed, non-square test pictures for the parity tests: resizing or cropping differences between our encoders
and the engine's own vision path would show on them (a flat picture would hide them)."""

from __future__ import annotations

import numpy as np

__all__ = ["gradient", "noise"]


def noise(height: int, width: int, seed: int) -> np.ndarray:
    """Uniform RGB noise, the same for the same seed."""
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def gradient(height: int, width: int) -> np.ndarray:
    """Red rising left to right, green top to bottom, blue a diagonal ramp."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], -1).astype(np.uint8)
