#!/usr/bin/env bash
# Install headless Chromium from Debian's packages (for tests/test_report.py's browser check). Safe to run again:
# prints the browser's path and does nothing else when one is already installed. Needs root and apt.
set -euo pipefail
for name in chromium chromium-browser; do
    if command -v "$name" >/dev/null 2>&1; then command -v "$name"; exit 0; fi
done
export DEBIAN_FRONTEND=noninteractive
# Wait for another apt/dpkg run to release its lock instead of failing at once.
APT=(apt-get -qq -o DPkg::Lock::Timeout=300)
"${APT[@]}" update >/dev/null
"${APT[@]}" install -y --no-install-recommends chromium >/dev/null
command -v chromium
