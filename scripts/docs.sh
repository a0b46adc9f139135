#!/usr/bin/env bash
# The documentation site (MkDocs Material, API reference from the docstrings by mkdocstrings):
#   scripts/docs.sh              serve it on http://127.0.0.1:8000, rebuilt as docs/, the package or CHANGELOG.md change
#   scripts/docs.sh build        build it into build/site/, failing on any warning (what CI runs)
#   scripts/docs.sh serve ARGS   pass ARGS to `mkdocs serve` (e.g. --dev-addr 127.0.0.1:8001)
# Uses .venv (scripts/bootstrap.sh), adding the `docs` extra to it when mkdocs is missing. Builds offline.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${VENV:-.venv}"
[ -x "$venv/bin/python" ] || scripts/bootstrap.sh "$venv"
if ! "$venv/bin/python" -c 'import mkdocs, material, mkdocstrings_handlers.python' 2>/dev/null; then
  echo "Installing the docs extra into $venv ..." >&2
  if command -v uv >/dev/null 2>&1; then
    uv pip install --quiet --python "$venv/bin/python" -e ".[docs]"
  else
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[docs]"
  fi
fi

export NO_MKDOCS_2_WARNING=1  # Material's notice about its successor, printed on every run
command="${1:-serve}"
[ $# -gt 0 ] && shift
case "$command" in
  build) exec "$venv/bin/mkdocs" build --strict "$@" ;;
  serve) exec "$venv/bin/mkdocs" serve --dev-addr 127.0.0.1:8000 "$@" ;;
  *) echo "usage: scripts/docs.sh [serve|build] [mkdocs arguments]" >&2; exit 2 ;;
esac
