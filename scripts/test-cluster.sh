#!/usr/bin/env bash
# The cluster test, from a fresh clone: installs what it needs (scripts/cluster.sh setup), starts PostgreSQL,
# Redis, moto's S3, the emulator and Airflow with the CeleryExecutor and two workers, runs tests/cluster,
# and always stops the cluster, also when the test fails or the script is interrupted.
#   scripts/test-cluster.sh [pytest args]
# Process and task logs of a failed run are kept in test-artifacts/cluster/.
set -euo pipefail
cd "$(dirname "$0")/.."

export CLUSTER_DIR="${CLUSTER_DIR:-.cluster}"
venv="${CLUSTER_VENV:-.venv-cluster}"
artifacts=test-artifacts/cluster

scripts/cluster.sh setup

finish() {
  local status=$?
  if [ "$status" -ne 0 ] && [ -d "$CLUSTER_DIR/logs" ]; then
    rm -rf "$artifacts/logs" && mkdir -p "$artifacts/logs"
    cp -rL "$CLUSTER_DIR/logs/." "$artifacts/logs/process-logs" 2>/dev/null || true
    cp -r "$CLUSTER_DIR/airflow/logs" "$artifacts/logs/task-logs" 2>/dev/null || true
    echo "cluster logs kept in $artifacts/logs" >&2
  fi
  scripts/cluster.sh stop || status=1
  exit "$status"
}
trap finish EXIT
trap 'exit 130' INT TERM

started=$SECONDS
scripts/cluster.sh start
# shellcheck source=/dev/null
( source "$CLUSTER_DIR/env.sh" && exec "$venv/bin/python" -m pytest tests/cluster -m cluster -p no:cacheprovider "$@" )
echo "cluster test passed in $((SECONDS - started)) s (start, two runs; stop follows)" >&2
