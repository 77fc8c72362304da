"""The `encoders` package: exported names complete, and the light install (no torch) still imports it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import encoders


def test_encoders_exports_are_complete():
    for name in encoders.__all__:
        assert getattr(encoders, name) is not None, name
    public_classes = {n for n in dir(encoders) if n[:1].isupper()}
    assert public_classes <= set(encoders.__all__)


def test_encoders_imports_without_torch():
    code = textwrap.dedent(
        """
        import sys
        for name in ("torch", "open_clip", "torchvision", "safetensors"):
            sys.modules[name] = None  # as if not installed
        import numpy as np
        import encoders
        assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
        url = encoders.JpegEncoder().data_url(np.zeros((8, 8, 3), np.uint8))
        assert url.startswith("data:image/jpeg;base64,")
        encoders.EmbeddingCache().put(np.zeros((8, 8, 3), np.uint8), b"x")
        try:
            encoders.ClipEncoder
        except encoders.MissingDependencyError as exc:
            assert "clip" in str(exc), exc
            assert isinstance(exc, ImportError)
        else:
            raise AssertionError("ClipEncoder imported without torch")
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
