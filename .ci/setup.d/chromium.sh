#!/usr/bin/env bash
# Headless Chromium (Debian's package) for the reader-study browser tests (plugins/busgen-readerstudy/tests).
# Idempotent: does nothing when a chromium binary is already installed.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    echo "chromium present: $(command -v chromium || command -v chromium-browser)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium: no apt-get here; the browser tests skip with a reason"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get update -qq || ! apt-get install -y -qq --no-install-recommends chromium >/dev/null; then
    echo "chromium: could not be installed; the browser tests skip with a reason"
    exit 0
fi
echo "chromium installed: $(command -v chromium)"
