"""Scripts the tests run in a child process, kept as files so ruff and the editor see them: `run_child(name)` runs
`python -m tests.children.<name>` from the repository root. Each prints what its test reads (one JSON line, "ok").

This package imports nothing heavy: a child that checks what `import visual_agent` pulls in starts clean.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_child(name: str, *args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `tests/children/<name>.py` with `args` in a new interpreter; its output is captured as text."""
    return subprocess.run([sys.executable, "-m", f"tests.children.{name}", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
