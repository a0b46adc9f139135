#!/usr/bin/env bash
# Runs the side-by-side benchmarks (benchmarks/run.py) against the emulator on 127.0.0.1:
#   ./scripts/bench.sh [--repeat N] [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
# The peers compared against (cloudflare SDK, http and openai providers) live in the "bench" extra.
EXTRAS=bench scripts/bootstrap.sh .venv
exec .venv/bin/python benchmarks/run.py "$@"
