#!/usr/bin/env bash
# Install what the tests need (cached, idempotent), lint and type-check, and run the tests.
# The run happens in a network namespace that holds only loopback when the machine allows it,
# so WebRTC picks 127.0.0.1 and nothing can reach outside. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
"$ROOT/scripts/setup_test_env.sh"
CACHE="${VISUAL_AGENT_CACHE:-$HOME/.cache/visual-agent}"
VENV="${VISUAL_AGENT_VENV:-$CACHE/venv}"
export PATH="$VENV/bin:$PATH" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VISUAL_AGENT_CACHE="$CACHE"
export VLLM_CACHE_ROOT="$CACHE/vllm" VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_NO_USAGE_STATS=1
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
# Lint and type-check the four packages first (settings in pyproject.toml); a failure fails the run.
# VISUAL_AGENT_NO_LINT=1 skips them for a quick rerun of one test.
if [ "${VISUAL_AGENT_NO_LINT:-0}" != "1" ]; then
  echo "[test] ruff check and mypy on encoders providers webrtc visual_agent" >&2
  ruff check encoders providers webrtc visual_agent
  mypy encoders providers webrtc visual_agent
fi
run_pytest() {
  set +e
  python -m pytest --durations=25 "$@"
  rc=$?
  set -e
  if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: that is a failure" >&2; return 1; fi
  return "$rc"
}
if [ "${VISUAL_AGENT_NO_NETNS:-0}" != "1" ] && unshare -n true 2>/dev/null; then
  export -f run_pytest
  exec unshare -n bash -c 'ip link set lo up && run_pytest "$@"' run_pytest "$@"
else
  echo "[test] no loopback-only network namespace here; running on the host network" >&2
  run_pytest "$@"
fi
