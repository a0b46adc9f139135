#!/usr/bin/env bash
# Debian's Chromium for the web UI test (tests/e2e/test_web_ui.py drives it with Playwright).
# Playwright's own browser download cannot work offline, so the test launches /usr/bin/chromium.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
echo "== installing chromium (apt-get)" >&2
$sudo apt-get update -qq >/dev/null || true
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
/usr/bin/chromium --version >&2
