#!/usr/bin/env bash
# Creates (or refreshes) a virtual environment with Airflow and this provider installed for development.
#   scripts/bootstrap.sh [VENV_DIR] [AIRFLOW_VERSION]     defaults: .venv 3.3.2
# Uses uv when it can (seconds), installing it with pip if missing; falls back to venv + pip.
# RESOLUTION=lowest-direct (uv only) installs the provider's own dependencies at the lowest versions
# pyproject.toml admits, then just the test runner's tools: proof that the declared floors work.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${1:-.venv}"
airflow_version="${2:-3.3.2}"
python="${PYTHON:-python3}"

"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python >= 3.10 is required")'

stamp="$venv/.bootstrap-stamp"
want="$airflow_version $(cksum < pyproject.toml)"
resolution="${RESOLUTION:-highest}"
extras="${EXTRAS:-}"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ]; then
  read -r have_version have_sum have_size have_resolution have_extras < "$stamp" || true
  # Up to date for this pyproject.toml and Airflow version, with the extras asked for (or more).
  if [ "$have_version $have_sum $have_size $have_resolution" = "$want $resolution" ] \
    && { [ -z "$extras" ] || [ "${have_extras:-}" = "$extras" ]; }; then
    exit 0
  fi
fi

# Airflow pays ~2 s per command without compiled bytecode, and this machine may forbid writing it lazily.
export UV_COMPILE_BYTECODE=1
if ! command -v uv >/dev/null 2>&1; then
  "$python" -m pip install --quiet --disable-pip-version-check uv >/dev/null 2>&1 || true
fi
uv_bin="$(command -v uv || true)"
[ -n "$uv_bin" ] || uv_bin="$("$python" -c 'import shutil,sysconfig,os; p=os.path.join(sysconfig.get_path("scripts"),"uv"); print(p if os.path.exists(p) else (shutil.which("uv") or ""))')"

echo "Setting up $venv with apache-airflow==$airflow_version ..." >&2
if [ -n "$uv_bin" ] && [ "$resolution" = "lowest-direct" ]; then
  "$uv_bin" venv --quiet --allow-existing --python "$python" "$venv"
  "$uv_bin" pip install --quiet --python "$venv/bin/python" --resolution lowest-direct \
    "apache-airflow==$airflow_version" -e .
  "$uv_bin" pip install --quiet --python "$venv/bin/python" "pytest>=8" "pytest-xdist>=3" "respx>=0.21" "hypothesis>=6" "pillow>=10" "statsd>=3.3"
elif [ -n "$uv_bin" ]; then
  "$uv_bin" venv --quiet --allow-existing --python "$python" "$venv"
  "$uv_bin" pip install --quiet --python "$venv/bin/python" "apache-airflow==$airflow_version" -e ".[dev${EXTRAS:+,$EXTRAS}]"
else
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "apache-airflow==$airflow_version" -e ".[dev${EXTRAS:+,$EXTRAS}]"
fi
echo "$want $resolution $extras" > "$stamp"
