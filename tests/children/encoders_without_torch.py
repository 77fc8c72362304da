"""`import encoders` as if torch, open_clip, torchvision and safetensors were not installed: JPEG and the embedding
cache work, `ClipEncoder` says which extra to install. Prints "ok"."""

from __future__ import annotations

import sys

for _name in ("torch", "open_clip", "torchvision", "safetensors"):
    sys.modules[_name] = None  # type: ignore[assignment]  # as if not installed

import numpy as np  # noqa: E402

import encoders  # noqa: E402


def main() -> None:
    assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
    url = encoders.JpegEncoder().data_url(np.zeros((8, 8, 3), np.uint8))
    assert url.startswith("data:image/jpeg;base64,")
    encoders.EmbeddingCache().put(np.zeros((8, 8, 3), np.uint8), b"x")
    try:
        encoders.ClipEncoder  # noqa: B018
    except encoders.MissingDependencyError as exc:
        assert "clip" in str(exc), exc
        assert isinstance(exc, ImportError)
    else:
        raise AssertionError("ClipEncoder imported without torch")
    print("ok")


if __name__ == "__main__":
    main()
