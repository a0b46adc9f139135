#!/usr/bin/env bash
# One command from a fresh clone to a passing test suite: ./scripts/test.sh
# Lints and type-checks, runs the tests on Airflow 3.3 (latest) and on 3.1 (the oldest supported), the unit
# tests on the lowest dependency versions pyproject.toml admits, the cluster test (scripts/test-cluster.sh:
# installs PostgreSQL and Redis with apt-get when missing), then the README's quickstart from a clean state.
set -euo pipefail
cd "$(dirname "$0")/.."

EXTRAS=bench scripts/bootstrap.sh .venv 3.3.2  # bench: the peers the benchmark smoke test compares
scripts/bootstrap.sh .venv-airflow31 3.1.8
RESOLUTION=lowest-direct scripts/bootstrap.sh .venv-lowest 3.1.8  # the floors pyproject.toml declares
scripts/install-browser.sh  # Debian's Chromium, for the web UI test

echo "== ruff" >&2
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy" >&2
.venv/bin/mypy

status=0
echo "== pytest on Airflow 3.3" >&2
.venv/bin/python -m pytest "$@" || status=$?
echo "== pytest on Airflow 3.1" >&2
.venv-airflow31/bin/python -m pytest "$@" || status=$((status ? status : $?))
echo "== pytest on the lowest direct dependencies (Airflow 3.1.8; unit and emulator tests)" >&2
.venv-lowest/bin/python -m pytest --ignore=tests/e2e --ignore=tests/test_benchmarks_smoke.py "$@" \
  || status=$((status ? status : $?))
echo "== the cluster test: CeleryExecutor, PostgreSQL, Redis, S3 (moto), two workers, one killed" >&2
scripts/test-cluster.sh || status=$((status ? status : $?))
if [ "$status" -ne 0 ]; then
  echo "tests failed (exit $status)" >&2
  exit "$status"
fi

echo "== quickstart from a clean state" >&2
rm -rf .quickstart quickstart-output
scripts/quickstart.sh
test -s quickstart-output/imagen_quickstart.png
