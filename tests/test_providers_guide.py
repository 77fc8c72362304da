"""docs/LLM_PROVIDERS_GUIDE.md's runnable examples, executed as written against the real vLLM peers.

Each block marked `<!-- runnable -->` runs as its own Python process (as a reader would run it), with the
environment variables the examples read pointing at the session's vLLM server and the tiny LLaVA.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.vllm import vllm_env

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "LLM_PROVIDERS_GUIDE.md"
BLOCK = re.compile(r"<!-- runnable -->\s*\n```python\n(.*?)```", re.DOTALL)
HEADING = re.compile(r"^## (.+)$", re.MULTILINE)
EXAMPLE_TIMEOUT_S = 150


def runnable_blocks() -> list[tuple[str, str]]:
    text = GUIDE.read_text()
    blocks = []
    for match in BLOCK.finditer(text):
        headings = [h.group(1) for h in HEADING.finditer(text, 0, match.start())]
        section = headings[-1] if headings else "intro"
        blocks.append((re.sub(r"\W+", "-", section).strip("-").lower(), match.group(1)))
    return blocks


BLOCKS = runnable_blocks()
NEEDS_SERVER = {"a-vllm-server", "llamaindex-providers-llamaindex-providerllm"}
NEEDS_ENGINE = {"the-in-process-engine-vllmnativeprovider-with-image-embeddings", "your-own-embedding_function"}
# Marks at collection, so `-m "not vllm"` leaves out the examples that need the vLLM tier.
PARAMS = [
    pytest.param(name, code, id=name, marks=[pytest.mark.vllm] if name in NEEDS_SERVER | NEEDS_ENGINE else [])
    for name, code in BLOCKS
]


def test_providers_guide_has_runnable_examples_for_each_provider():
    sections = {name for name, _ in BLOCKS}
    assert NEEDS_SERVER <= sections and NEEDS_ENGINE <= sections
    assert "openai-and-any-openai-compatible-service" in sections and "errors" in sections


def _run(code: str, extra_env: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**vllm_env(), **extra_env, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT_S
    )


@pytest.mark.parametrize(("section", "code"), PARAMS)
@pytest.mark.timeout(EXAMPLE_TIMEOUT_S + 30)
def test_providers_guide_example_runs(section, code, request):
    extra: dict[str, str] = {}
    if section in NEEDS_SERVER:
        server = request.getfixturevalue("vllm_server")
        extra["VLLM_BASE_URL"] = f"http://127.0.0.1:{server.port}"  # without /v1, as a reader may write it
    if section in NEEDS_ENGINE:
        extra["LLAVA_MODEL"] = str(request.getfixturevalue("tiny_llava_path"))
    result = _run(code, extra)
    assert result.returncode == 0, f"example in section {section!r} failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    assert result.stdout.strip(), "the example printed nothing"
