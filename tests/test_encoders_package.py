"""The `encoders` package: exported names complete, and the light install (no torch) still imports it."""

from __future__ import annotations

import encoders
from tests.children import run_child


def test_encoders_exports_are_complete():
    for name in encoders.__all__:
        assert getattr(encoders, name) is not None, name
    public_classes = {n for n in dir(encoders) if n[:1].isupper()}
    assert public_classes <= set(encoders.__all__)


def test_encoders_imports_without_torch():
    result = run_child("encoders_without_torch", timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
