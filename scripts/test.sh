#!/usr/bin/env bash
# One command from a fresh clone to a passing test suite: ./scripts/test.sh
# Lints, type-checks and builds the docs site strictly, runs the tests on Airflow 3.3 (latest), the end-to-end
# tests on 3.1 (the oldest supported), the unit tests on 3.1 with the lowest dependency versions pyproject.toml
# admits, the cluster test (scripts/test-cluster.sh: installs PostgreSQL and Redis with apt-get when missing), the
# wheel alone in a clean virtualenv (scripts/test-wheel.sh), then the README's quickstart from a clean state.
set -euo pipefail
cd "$(dirname "$0")/.."

EXTRAS=bench,docs scripts/bootstrap.sh .venv 3.3.2  # bench: the peers the benchmark smoke test compares; docs: mkdocs
scripts/bootstrap.sh .venv-airflow31 3.1.8
RESOLUTION=lowest-direct scripts/bootstrap.sh .venv-lowest 3.1.8  # the floors pyproject.toml declares
scripts/install-browser.sh  # Debian's Chromium, for the web UI test

echo "== ruff" >&2
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy" >&2
.venv/bin/mypy
echo "== the docs site, strict (warnings fail it)" >&2
scripts/docs.sh build --quiet

# The unit and emulator tests run in two processes (they mostly wait on sockets); the end-to-end tests in one,
# as they share real Airflow deployments. Arguments go to every pytest run (e.g. -m "not browser", -x).
status=0
run() {  # remembers the first failure and goes on; 5 is pytest's "arguments selected nothing here"
  local rc=0
  "$@" || rc=$?
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ] && [ "$status" -eq 0 ]; then status=$rc; fi
}
echo "== unit and emulator tests on Airflow 3.3" >&2
run .venv/bin/python -m pytest -n 2 --ignore=tests/e2e "$@"
echo "== end to end on Airflow 3.3: DAG runs, a real deployment and its web UI" >&2
run .venv/bin/python -m pytest tests/e2e "$@"
echo "== end to end on Airflow 3.1 (its unit tests run below, on 3.1.8 at the lowest floors)" >&2
run .venv-airflow31/bin/python -m pytest tests/e2e "$@"
echo "== unit and emulator tests on the lowest direct dependencies (Airflow 3.1.8)" >&2
run .venv-lowest/bin/python -m pytest -n 2 --ignore=tests/e2e --ignore=tests/test_benchmarks_smoke.py "$@"
echo "== the cluster test: CeleryExecutor, PostgreSQL, Redis, S3 (moto), two workers, one killed" >&2
run scripts/test-cluster.sh
echo "== the wheel alone: built, twine-checked, installed in a clean virtualenv, a DAG run from an empty folder" >&2
run scripts/test-wheel.sh
if [ "$status" -ne 0 ]; then
  echo "tests failed (exit $status)" >&2
  exit "$status"
fi

echo "== quickstart from a clean state" >&2
rm -rf .quickstart quickstart-output
scripts/quickstart.sh
test -s quickstart-output/imagen_quickstart.png
