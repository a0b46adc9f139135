#!/usr/bin/env bash
# Does the package stand alone? Builds the sdist and the wheel, checks both with `twine check --strict`,
# checks that the sdist carries what the docs site needs, then installs the wheel ALONE in a clean virtualenv
# with apache-airflow==3.3.2 (no source tree on the path, no dags/ of this repository) and checks, from an
# empty folder, that `airflow providers list` shows the provider, that `imagen-emulator` starts, and that a
# five-line DAG in an empty DAGs folder generates an image against it with `airflow dags test`.
#   scripts/test-wheel.sh           AIRFLOW_VERSION=3.3.2 by default; KEEP=1 keeps the temporary folder
# Everything lives in one temporary folder, removed at the end, pass or fail; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
airflow_version="${AIRFLOW_VERSION:-3.3.2}"
python="${PYTHON:-python3}"

work="$(mktemp -d "${TMPDIR:-/tmp}/imagen-wheel-XXXXXX")"
emulator_pid=""
cleanup() {
  local rc=$?
  if [ -n "$emulator_pid" ] && kill -0 "$emulator_pid" 2>/dev/null; then
    kill "$emulator_pid" 2>/dev/null || true
    wait "$emulator_pid" 2>/dev/null || true
  fi
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
  if [ "$rc" -ne 0 ]; then echo "test-wheel: FAILED (exit $rc)" >&2; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
step() { echo "== $*" >&2; }
fail() { echo "test-wheel: $*" >&2; exit 1; }

command -v uv >/dev/null 2>&1 || fail "uv is needed (pip install uv, or your package manager's)"

step "build the sdist and the wheel"
uv build --quiet --out-dir "$work/dist" "$repo"
sdist=("$work"/dist/*.tar.gz)
wheel=("$work"/dist/*.whl)
[ -f "${sdist[0]}" ] && [ -f "${wheel[0]}" ] || fail "uv build made no sdist or no wheel"
echo "${sdist[0]##*/} ${wheel[0]##*/}" >&2

step "twine check --strict"
uv venv --quiet --python "$python" "$work/tools"
uv pip install --quiet --python "$work/tools/bin/python" twine
"$work/tools/bin/twine" check --strict "${sdist[0]}" "${wheel[0]}"

step "the sdist carries the docs site's sources"
listing="$(tar -tzf "${sdist[0]}")"
for wanted in mkdocs.yml CHANGELOG.md README.md docs/index.md docs/reference/index.md airflow_provider_imagen/__init__.py; do
  grep -q "^[^/]*/$wanted\$" <<<"$listing" || fail "the sdist lacks $wanted"
done

step "install the wheel alone with apache-airflow==$airflow_version in a clean virtualenv"
uv venv --quiet --python "$python" "$work/venv"
UV_COMPILE_BYTECODE=1 uv pip install --quiet --python "$work/venv/bin/python" \
  "apache-airflow==$airflow_version" "${wheel[0]}"
bin="$work/venv/bin"

# From here on: an empty folder, no repository on the path, an Airflow home and a DAGs folder of our own.
mkdir -p "$work/cwd" "$work/home" "$work/dags"
cd "$work/cwd"
unset PYTHONPATH AIRFLOW_CONN_CLOUDFLARE_WORKERS_AI_DEFAULT
export AIRFLOW_HOME="$work/home" AIRFLOW__CORE__DAGS_FOLDER="$work/dags" AIRFLOW__CORE__LOAD_EXAMPLES=False

where="$("$bin/python" -c 'import airflow_provider_imagen as p; print(p.__file__)')"
case "$where" in
  "$work/venv/"*) ;;
  *) fail "airflow_provider_imagen imported from $where, not from the wheel" ;;
esac
"$bin/python" -c 'import dags' 2>/dev/null && fail "a dags package is importable: the repository leaks onto the path"
version="$("$bin/python" -c 'import importlib.metadata as m; print(m.version("airflow-provider-imagen"))')"
module_version="$("$bin/python" -c 'import airflow_provider_imagen as p; print(p.__version__)')"
[ "$version" = "$module_version" ] || fail "metadata version $version differs from __version__ $module_version"

step "airflow providers list"
"$bin/airflow" db migrate >"$work/migrate.log" 2>&1 || { tail -20 "$work/migrate.log" >&2; fail "airflow db migrate failed"; }
"$bin/airflow" providers list >"$work/providers.txt" 2>&1 || { cat "$work/providers.txt" >&2; fail "providers list failed"; }
grep -q "airflow-provider-imagen" "$work/providers.txt" || { cat "$work/providers.txt" >&2; fail "airflow providers list does not show airflow-provider-imagen"; }

step "imagen-emulator starts"
port="$("$bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$bin/imagen-emulator" --port "$port" --log-level warning >"$work/emulator.log" 2>&1 &
emulator_pid=$!
stats="http://127.0.0.1:$port/__emulator__/stats"
"$bin/python" - "$stats" <<'PY' || { cat "$work/emulator.log" >&2; fail "imagen-emulator did not answer on 127.0.0.1:$port"; }
import sys, time, httpx
deadline = time.monotonic() + 60
while True:
    try:
        httpx.get(sys.argv[1], timeout=2).raise_for_status()
        break
    except httpx.HTTPError:
        if time.monotonic() > deadline:
            sys.exit(1)
        time.sleep(0.2)
PY

step "a five-line DAG in an empty folder generates an image (airflow dags test)"
cat >"$work/dags/my_first_image.py" <<'DAG'
from airflow.sdk import DAG
from airflow_provider_imagen.operators import ImagenGenerateImageOperator

with DAG(dag_id="my_first_image", schedule=None):
    ImagenGenerateImageOperator(task_id="generate_image", prompt="A lighthouse on a cliff at dawn, watercolor")
DAG
export AIRFLOW_CONN_CLOUDFLARE_WORKERS_AI_DEFAULT="{\"conn_type\": \"cloudflare_workers_ai\", \"host\": \"http://127.0.0.1:$port/client/v4\", \"password\": \"emulator-token\", \"extra\": {\"account_id\": \"emulator-account\"}}"
"$bin/airflow" dags test my_first_image >"$work/dags-test.log" 2>&1 || { tail -40 "$work/dags-test.log" >&2; fail "airflow dags test failed"; }
url="$(grep -o "Generated a default-ratio image with google/imagen-4 [^:]*: http://127.0.0.1:$port/images/[0-9a-f]*\.png" "$work/dags-test.log" | grep -o 'http://.*' | tail -1 || true)"
[ -n "$url" ] || { tail -40 "$work/dags-test.log" >&2; fail "the task logged no generated image"; }
# The connection the docs give (account id emulator-account) is long enough for Airflow's secret masker.
if grep -q "Skipping masking" "$work/dags-test.log"; then fail "the task logged Airflow's 'Skipping masking' warning"; fi
"$bin/python" - "$url" "$stats" <<'PY' || fail "the image or the emulator's count is wrong"
import sys, httpx
image = httpx.get(sys.argv[1], timeout=30)
assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n", "the image URL serves no PNG"
generations = httpx.get(sys.argv[2], timeout=5).json()["generations"]
assert generations == 1, f"{generations} generations billed for one image"
print(f"{sys.argv[1]}: a PNG of {len(image.content):,} bytes, 1 generation billed")
PY

echo "test-wheel: OK (${wheel[0]##*/} $version, apache-airflow==$airflow_version)" >&2
