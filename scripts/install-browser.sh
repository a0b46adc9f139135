#!/usr/bin/env bash
# Debian's Chromium for the web UI test (tests/e2e/test_web_ui.py drives it with Playwright).
# Playwright's own browser download cannot work offline, so the test launches /usr/bin/chromium.
# CHROMIUM=/path/to/chromium uses a browser of your own instead (the test reads the same variable).
set -euo pipefail
if [ -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "No apt-get here: install Chromium and set CHROMIUM=/path/to/chromium, or run the tests with -m 'not browser'" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
echo "== installing chromium (apt-get)" >&2
$sudo apt-get update -qq >/dev/null || true
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
/usr/bin/chromium --version >&2
