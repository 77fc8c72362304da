"""Shared test set-up: every module in tests/fixtures/ is a pytest plugin (real peers as fixtures)."""

from pathlib import Path

pytest_plugins = sorted(
    f"tests.fixtures.{path.stem}"
    for path in (Path(__file__).parent / "fixtures").glob("*.py")
    if not path.name.startswith("_")
)
