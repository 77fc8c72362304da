"""The package surface: every exported name exists, and `import visual_agent` stays light (no torch, no vllm)."""

from __future__ import annotations

import subprocess
import sys

import visual_agent


def test_visual_agent_exports_are_complete_and_importable():
    assert len(set(visual_agent.__all__)) == len(visual_agent.__all__)
    for name in visual_agent.__all__:
        assert getattr(visual_agent, name) is not None, name
    for name in ("VisualAgent", "MqttMessager", "load_config", "Daemon", "ErrorType", "Answer", "Question"):
        assert name in visual_agent.__all__


def test_visual_agent_import_is_light():
    code = "import sys, visual_agent, visual_agent.cli; print(sorted(m for m in ('torch', 'vllm', 'open_clip') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
