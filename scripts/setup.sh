#!/usr/bin/env bash
# Create .venv (once) and install genlab with its dev tools and the sweep launchers into it. Safe to run again.
# TORCH_SPEC picks the PyTorch build; the default is a CUDA build that also runs on CPU-only machines.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC2086
.venv/bin/python -m pip install --quiet --disable-pip-version-check $TORCH_SPEC
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev,launchers]'
echo "genlab is installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
# Headless Chromium for the offline report's browser test: Debian's package, as root. Elsewhere that test skips.
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    bash scripts/install_chromium.sh >/dev/null || echo "note: installing Chromium failed; the report's browser test will skip"
else
    command -v chromium >/dev/null 2>&1 || echo "note: no Chromium (scripts/install_chromium.sh needs root and apt); the report's browser test will skip"
fi
