#!/usr/bin/env bash
# One command from a fresh clone to a generated image:
#   ./scripts/quickstart.sh [--output PATH]
# Sets up .venv, an Airflow home on SQLite in .quickstart/, runs the imagen_quickstart DAG with
# `airflow dags test` against the built-in emulator (or against Cloudflare when CLOUDFLARE_ACCOUNT_ID
# and CLOUDFLARE_API_TOKEN are set), prints the image URL from XCom and saves the image.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh .venv
exec .venv/bin/python scripts/quickstart.py "$@"
