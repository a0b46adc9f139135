#!/usr/bin/env bash
# A production-shaped Airflow deployment on this machine, every server on 127.0.0.1 and free ports:
#   PostgreSQL (metadata DB), Redis (Celery broker), moto's S3 server (the image bucket), the Cloudflare
#   emulator, and Airflow 3.3 with the CeleryExecutor: api-server, scheduler, dag-processor, triggerer and
#   two Celery workers (worker-a, worker-b).
#
#   scripts/cluster.sh setup    install what is missing (Debian's postgresql and redis-server, the venv)
#   scripts/cluster.sh start    setup, then start everything and wait until it is healthy
#   scripts/cluster.sh status   what runs, with its PID, and Airflow's health
#   scripts/cluster.sh stop     stop exactly what start started (PID files), politely then SIGKILL
#
# Settings (environment):
#   CLUSTER_DIR        data dirs, logs, PID files and env.sh (default: .cluster)
#   CLUSTER_VENV       the virtualenv (default: .venv-cluster)
#   CLUSTER_DAGS       the DAG folder to serve (default: tests/cluster/dags)
#   CLUSTER_LATENCY    seconds each emulated generation takes (default: 2)
#   CLUSTER_HEARTBEAT_TIMEOUT  [scheduler] task_instance_heartbeat_timeout, seconds (default: 20, for the
#                      worker-kill test; Airflow's default is 300)
#   CLUSTER_WORKER_CONCURRENCY  task slots per Celery worker (default: 4)
#   CLUSTER_TRIGGERER_CAPACITY  [triggerer] capacity (default: 1000, Airflow's)
#
# After start, `source $CLUSTER_DIR/env.sh` gives a shell the same Airflow settings (AIRFLOW_HOME, DB,
# broker, connections) and CLUSTER_* facts (URLs, ports, bucket). That file holds the emulator's token
# and the database password: it is written mode 600 and never printed.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

cluster_dir="$(mkdir -p "${CLUSTER_DIR:-.cluster}" && cd "${CLUSTER_DIR:-.cluster}" && pwd)"
venv="${CLUSTER_VENV:-.venv-cluster}"
dags="$(cd "${CLUSTER_DAGS:-tests/cluster/dags}" && pwd)"
airflow_version=3.3.2
bucket=imagen-cluster
pids="$cluster_dir/pids"
logs="$cluster_dir/logs"
# Start order (stop ends the Airflow parts first, then the rest).
AIRFLOW_PARTS=(api-server scheduler dag-processor triggerer worker-a worker-b)
SERVICES=(postgres redis s3 emulator "${AIRFLOW_PARTS[@]}")

cluster_started=0

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# -- setup -------------------------------------------------------------------------------------------

pg_bin() {
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  [ -n "$dir" ] && [ -x "$dir/postgres" ] && echo "$dir"
}

setup_debian() {
  if [ -n "$(pg_bin || true)" ] && command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
    return
  fi
  command -v apt-get >/dev/null || die "PostgreSQL or Redis is missing and there is no apt-get to install them"
  [ "$(id -u)" = 0 ] || die "PostgreSQL or Redis is missing: apt-get install postgresql redis-server (as root)"
  log "Installing Debian's postgresql and redis-server ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # policy-rc.d: the packages' own init scripts must not start system-wide servers on default ports.
  local policy=/usr/sbin/policy-rc.d created_policy=0
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created_policy=1; fi
  apt-get install -y -qq postgresql redis-server >/dev/null || { [ "$created_policy" = 1 ] && rm -f "$policy"; die "apt-get install failed"; }
  [ "$created_policy" = 1 ] && rm -f "$policy"
  [ -n "$(pg_bin || true)" ] || die "postgresql installed but no server binary found"
}

setup_venv() {
  local stamp="$venv/.cluster-stamp" want
  want="$airflow_version $(cksum < pyproject.toml) $(cksum < "$0")"
  if [ -x "$venv/bin/airflow" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return
  fi
  command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet --disable-pip-version-check uv >/dev/null
  local uv_bin
  uv_bin="$(command -v uv || python3 -c 'import os,sysconfig; print(os.path.join(sysconfig.get_path("scripts"), "uv"))')"
  log "Setting up $venv (apache-airflow==$airflow_version, CeleryExecutor, amazon, moto) ..."
  export UV_COMPILE_BYTECODE=1  # every airflow command pays ~2 s more without compiled bytecode
  "$uv_bin" venv --quiet --allow-existing --python "${PYTHON:-python3}" "$venv"
  # celery<5.7: celery 5.7.0 removed celery.backends.database.retry, which apache-airflow-providers-celery
  # 3.26.0 imports, so the CeleryExecutor does not load. The provider's floor: left free, the resolver may
  # trade it for a newer redis client and pick 3.6.1, which imports a module Airflow 3 no longer has.
  "$uv_bin" pip install --quiet --python "$venv/bin/python" \
    "apache-airflow==$airflow_version" \
    "apache-airflow-providers-celery>=3.26" \
    "apache-airflow-providers-amazon[s3fs]" \
    "celery<5.7" \
    psycopg2-binary asyncpg redis "moto[server]" pytest \
    -e .
  echo "$want" > "$stamp"
}

# -- processes ---------------------------------------------------------------------------------------

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# A PID file holds the PID and the process's start time (clock ticks after boot), so that a PID reused by
# another process after a reboot or a crash is never mistaken for ours.
proc_start() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $20 }'; }

write_pid() { echo "$2 $(proc_start "$2")" > "$pids/$1.pid"; }

pid_of() {  # the PID in NAME's PID file, if that process still runs
  local pid start
  [ -f "$pids/$1.pid" ] && read -r pid start < "$pids/$1.pid" || return 0
  [ -n "$pid" ] && [ "$(proc_start "$pid")" = "$start" ] && echo "$pid"
  return 0
}

alive() { [ -n "$(pid_of "$1")" ]; }

# Every process in the session a service was started in: task runners put themselves in process groups
# of their own, but stay in the worker's session.
# Every process in the session of a service's first process: task runners put themselves in process groups
# of their own but stay in it. Linux reuses no PID that is still some process's session id, so this holds
# after the first process died too. With a second argument, its children as well: PostgreSQL's backends
# make sessions of their own.
session_members() {
  ps -e -o pid= -o sid= -o ppid= | awk -v sid="$1" -v kids="${2:-}" '$2 == sid || (kids && $3 == sid) { print $1 }'
}

launch() {  # launch NAME COMMAND...: in a session of its own, output to logs/NAME.log, PID to pids/NAME.pid
  local name="$1"; shift
  setsid "$@" > "$logs/$name.log" 2>&1 < /dev/null &
  write_pid "$name" $!
}

wait_for() {  # wait_for NAME SECONDS COMMAND...: until COMMAND succeeds, or fail with NAME's log tail
  local name="$1" seconds="$2"; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if [ "$name" != postgres ] && ! alive "$name"; then
      tail -n 30 "$logs/$name.log" >&2 || true
      die "$name exited during start-up (log: $logs/$name.log)"
    fi
    [ "$SECONDS" -lt "$deadline" ] || { tail -n 30 "$logs/$name.log" >&2 || true; die "$name not ready after ${seconds}s"; }
    sleep 1
  done
}

write_env() {
  local pg_port redis_port s3_port emulator_port api_port pg_password token jwt secret fernet
  pg_port="$(free_port)"; redis_port="$(free_port)"; s3_port="$(free_port)"
  emulator_port="$(free_port)"; api_port="$(free_port)"
  read -r pg_password token jwt secret < <(python3 -c 'import secrets; print(*(secrets.token_hex(n) for n in (16, 24, 32, 16)))')
  fernet="$(python3 -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())')"
  local home="$cluster_dir/airflow" api="http://127.0.0.1:$api_port"
  mkdir -p "$home"
  printf '{"admin": "%s"}\n' "$secret" > "$home/passwords.json"
  chmod 600 "$home/passwords.json"
  (
    umask 077
    cat > "$cluster_dir/env.sh" <<EOF
# Written by scripts/cluster.sh start: the cluster's settings. Secrets inside: do not print or commit.
export CLUSTER_DIR='$cluster_dir'
export CLUSTER_PG_PORT=$pg_port CLUSTER_REDIS_PORT=$redis_port CLUSTER_S3_PORT=$s3_port
export CLUSTER_EMULATOR_URL='http://127.0.0.1:$emulator_port' CLUSTER_API_URL='$api'
export CLUSTER_S3_URL='http://127.0.0.1:$s3_port' CLUSTER_BUCKET='$bucket' CLUSTER_S3_CONN_ID=cluster_s3
export CLUSTER_PG_PASSWORD='$pg_password' CLUSTER_EMULATOR_TOKEN='$token' CLUSTER_ADMIN_PASSWORD='$secret'
export AIRFLOW_HOME='$home'
export AIRFLOW__CORE__DAGS_FOLDER='$dags'
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__EXECUTOR=CeleryExecutor
export AIRFLOW__CORE__PARALLELISM=32
export AIRFLOW__CORE__FERNET_KEY='$fernet'
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=admin:admin
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE='$home/passwords.json'
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL='$api/execution/'
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN='postgresql+psycopg2://airflow:$pg_password@127.0.0.1:$pg_port/airflow'
export AIRFLOW__CELERY__BROKER_URL='redis://127.0.0.1:$redis_port/0'
export AIRFLOW__CELERY__RESULT_BACKEND='db+postgresql+psycopg2://airflow:$pg_password@127.0.0.1:$pg_port/airflow'
export AIRFLOW__CELERY__WORKER_CONCURRENCY=${CLUSTER_WORKER_CONCURRENCY:-4}
export AIRFLOW__API__HOST=127.0.0.1 AIRFLOW__API__PORT=$api_port AIRFLOW__API__BASE_URL='$api'
export AIRFLOW__API__SECRET_KEY='$secret' AIRFLOW__API_AUTH__JWT_SECRET='$jwt'
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=5
# Triggers one triggerer runs at once (Airflow's default: 1000).
export AIRFLOW__TRIGGERER__CAPACITY=${CLUSTER_TRIGGERER_CAPACITY:-1000}
# A dead worker's tasks are noticed after this many seconds without a heartbeat (Airflow's default: 300).
export AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT=${CLUSTER_HEARTBEAT_TIMEOUT:-20}
export AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL=5
export AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_SEC=3
# A message a killed worker had taken but not started is re-queued after this (Airflow's default: 600).
export AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT=90
export AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL=10
export AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=$(free_port) AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=$(free_port)
# Each worker names itself in the task instances it runs (see cluster_hostname.py).
export AIRFLOW__CORE__HOSTNAME_CALLABLE=cluster_hostname.hostname
export PYTHONPATH='$cluster_dir/lib'\${PYTHONPATH:+:\$PYTHONPATH}
export AIRFLOW_CONN_CLOUDFLARE_WORKERS_AI_DEFAULT='{"conn_type": "cloudflare_workers_ai", "host": "http://127.0.0.1:$emulator_port/client/v4", "password": "$token", "extra": {"account_id": "emulator-account", "timeout": 60}}'
export AIRFLOW_CONN_CLUSTER_S3='{"conn_type": "aws", "login": "cluster-key", "password": "cluster-secret", "extra": {"endpoint_url": "http://127.0.0.1:$s3_port", "region_name": "us-east-1"}}'
export AIRFLOW_VAR_IMAGEN_CLUSTER_OUTPUT='s3://cluster_s3@$bucket'
# The Images view reads stored images only under [imagen] gallery_roots: the bucket the DAGs write to.
export AIRFLOW__IMAGEN__GALLERY_ROOTS='s3://cluster_s3@$bucket/'
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
EOF
  )
  mkdir -p "$cluster_dir/lib"
  cat > "$cluster_dir/lib/cluster_hostname.py" <<'EOF'
"""[core] hostname_callable for a cluster whose workers share one machine: CLUSTER_HOST_NAME, else the FQDN."""

import os
import socket


def hostname() -> str:
    return os.environ.get("CLUSTER_HOST_NAME") or socket.getfqdn()
EOF
}

# PostgreSQL's folder: in CLUSTER_DIR when the postgres user can reach it, else (a clone under /root, say)
# a folder of its own under /tmp. Its path is kept in CLUSTER_DIR/pg-dir for stop.
pg_dir() { cat "$cluster_dir/pg-dir" 2>/dev/null || echo "$cluster_dir/pg"; }

# PostgreSQL refuses to run as root: as root it runs as the postgres user, else as whoever runs this.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

start_postgres() {
  local bin data="$cluster_dir/pg"
  bin="$(pg_bin)"
  [ ! -f "$cluster_dir/pg-dir" ] || rm -rf "$(cat "$cluster_dir/pg-dir")"
  rm -rf "$data"; mkdir -p "$data"
  if ! as_pg test -x "$data"; then  # fails when a parent folder is closed to others
    rm -rf "$data"
    data="$(mktemp -d /tmp/imagen-cluster-pg.XXXXXX)"
    log "the postgres user cannot reach $cluster_dir: PostgreSQL's data go to $data"
  fi
  echo "$data" > "$cluster_dir/pg-dir"
  mkdir -p "$data/socket"
  local auth_local=trust  # the socket's folder is open to its owner only
  chmod 700 "$data"
  if [ "$(id -u)" = 0 ]; then chown -R postgres:postgres "$data"; auth_local=peer; fi
  as_pg "$bin/initdb" -D "$data/data" -U postgres --auth-local="$auth_local" --auth-host=scram-sha-256 \
    > "$logs/postgres-initdb.log" 2>&1 || { tail "$logs/postgres-initdb.log" >&2; die "initdb failed"; }
  ln -sf "$data/postgres.log" "$logs/postgres.log"  # written by the postgres user, in its own folder
  as_pg "$bin/pg_ctl" -D "$data/data" -l "$data/postgres.log" -w -t 60 start \
    -o "-c listen_addresses=127.0.0.1 -p $CLUSTER_PG_PORT -k $data/socket -c max_connections=200 -c fsync=off" \
    > /dev/null || { tail "$logs/postgres.log" >&2; die "PostgreSQL did not start"; }
  write_pid postgres "$(head -n 1 "$data/data/postmaster.pid")"
  as_pg "$bin/psql" -h "$data/socket" -p "$CLUSTER_PG_PORT" -U postgres -q -v ON_ERROR_STOP=1 \
    -c "CREATE ROLE airflow LOGIN PASSWORD '$CLUSTER_PG_PASSWORD'" -c "CREATE DATABASE airflow OWNER airflow" > /dev/null
}

start() {
  setup_debian
  setup_venv
  local name
  for name in "${SERVICES[@]}"; do
    alive "$name" && die "a cluster already runs from $cluster_dir ($name): scripts/cluster.sh stop first"
  done
  # What a crashed run left: stale PID files, or processes of a service whose first process died.
  if compgen -G "$pids/*.pid" >/dev/null; then stop; fi
  mkdir -p "$pids" "$logs"
  # A start that fails half way stops what it had started.
  trap 'if [ "$cluster_started" != 1 ]; then log "start failed: stopping what it started"; stop || true; fi' EXIT
  # Nothing of the caller's Airflow settings may leak into the cluster's processes.
  unset $(compgen -e | grep -E '^_?AIRFLOW' || true)
  write_env
  # shellcheck source=/dev/null
  source "$cluster_dir/env.sh"
  local started=$SECONDS bin="$repo/$venv/bin"

  log "PostgreSQL on 127.0.0.1:$CLUSTER_PG_PORT"
  start_postgres
  log "Redis on 127.0.0.1:$CLUSTER_REDIS_PORT"
  mkdir -p "$cluster_dir/redis"
  launch redis redis-server --bind 127.0.0.1 --port "$CLUSTER_REDIS_PORT" --dir "$cluster_dir/redis" \
    --save '' --appendonly no --protected-mode yes --daemonize no
  log "S3 (moto) on $CLUSTER_S3_URL"
  launch s3 "$bin/moto_server" -H 127.0.0.1 -p "$CLUSTER_S3_PORT"
  log "Cloudflare emulator on $CLUSTER_EMULATOR_URL (latency ${CLUSTER_LATENCY:-2} s)"
  launch emulator "$bin/imagen-emulator" --host 127.0.0.1 --port "${CLUSTER_EMULATOR_URL##*:}" \
    --token "$CLUSTER_EMULATOR_TOKEN" --latency "${CLUSTER_LATENCY:-2}" --log-level warning
  wait_for redis 30 redis-cli -h 127.0.0.1 -p "$CLUSTER_REDIS_PORT" ping
  wait_for s3 60 curl -sf "$CLUSTER_S3_URL/moto-api/data.json"
  wait_for emulator 60 curl -sf "$CLUSTER_EMULATOR_URL/__emulator__/stats"
  AWS_ACCESS_KEY_ID=cluster-key AWS_SECRET_ACCESS_KEY=cluster-secret "$bin/python" -c \
    'import boto3, os, sys; boto3.client("s3", endpoint_url=os.environ["CLUSTER_S3_URL"], region_name="us-east-1").create_bucket(Bucket=sys.argv[1])' \
    "$bucket"

  log "Airflow $airflow_version: migrating the metadata database ..."
  "$bin/airflow" db migrate > "$logs/db-migrate.log" 2>&1 || { tail -n 30 "$logs/db-migrate.log" >&2; die "airflow db migrate failed"; }
  launch api-server "$bin/airflow" api-server --host 127.0.0.1 --port "$AIRFLOW__API__PORT" --workers 1
  launch scheduler "$bin/airflow" scheduler --skip-serve-logs
  launch dag-processor "$bin/airflow" dag-processor
  launch triggerer "$bin/airflow" triggerer --skip-serve-logs
  local worker
  for worker in worker-a worker-b; do
    launch "$worker" env CLUSTER_HOST_NAME="$worker" "$bin/airflow" celery worker --skip-serve-logs \
      --celery-hostname "$worker@127.0.0.1" --concurrency "$AIRFLOW__CELERY__WORKER_CONCURRENCY" \
      --without-mingle --without-gossip
  done
  wait_for api-server 120 curl -sf "$CLUSTER_API_URL/api/v2/monitor/health"
  wait_for scheduler 120 airflow_healthy
  for worker in worker-a worker-b; do
    wait_for "$worker" 120 grep -q "$worker@127.0.0.1 ready" "$logs/$worker.log"
  done
  cluster_started=1
  log "Cluster up in $((SECONDS - started)) s: Airflow UI/API $CLUSTER_API_URL (user admin, password in $AIRFLOW_HOME/passwords.json)"
  log "Use it from a shell: source $cluster_dir/env.sh"
}

airflow_healthy() {
  curl -sf "$CLUSTER_API_URL/api/v2/monitor/health" | python3 -c '
import json, sys
health = json.load(sys.stdin)
sys.exit(0 if all(health.get(p, {}).get("status") == "healthy" for p in ("metadatabase", "scheduler", "triggerer", "dag_processor")) else 1)'
}

# -- stop and status ---------------------------------------------------------------------------------

stop_one() {  # SIGTERM the session, wait up to 30 s, then SIGKILL whatever of it is left
  local name="$1" pid members kids=""
  pid=""; [ ! -f "$pids/$name.pid" ] || read -r pid _ < "$pids/$name.pid" || true
  [[ "$pid" =~ ^[0-9]+$ ]] || { rm -f "$pids/$name.pid"; return 0; }
  [ -n "$(pid_of "$name")" ] && kids=1  # still our process: its children are ours too
  if [ "$name" = postgres ] && [ -n "$kids" ]; then
    local bin; bin="$(pg_bin || true)"
    if [ -n "$bin" ] && [ -f "$(pg_dir)/data/postmaster.pid" ]; then
      as_pg "$bin/pg_ctl" -D "$(pg_dir)/data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    fi
  fi
  members="$(session_members "$pid" "$kids")"
  if [ -n "$members" ]; then
    kill -TERM $members 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while [ -n "$(session_members "$pid" "$kids")" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.5; done
    members="$(session_members "$pid" "$kids")"
    if [ -n "$members" ]; then
      log "$name: still running after 30 s, SIGKILL to $(echo $members | wc -w) process(es)"
      kill -KILL $members 2>/dev/null || true
      sleep 0.5
    fi
  fi
  rm -f "$pids/$name.pid"
}

stop() {
  [ -d "$pids" ] || { log "nothing to stop in $cluster_dir"; return 0; }
  local name
  # Airflow first, all parts at once, then the emulator, S3, Redis and PostgreSQL.
  local jobs=()  # only these: a bare `wait` would also wait for the servers this shell started
  for name in "${AIRFLOW_PARTS[@]}"; do
    if [ -f "$pids/$name.pid" ]; then stop_one "$name" & jobs+=($!); fi
  done
  [ ${#jobs[@]} -eq 0 ] || wait "${jobs[@]}" || true
  jobs=()
  for name in emulator s3 redis postgres; do
    if [ -f "$pids/$name.pid" ]; then stop_one "$name" & jobs+=($!); fi
  done
  [ ${#jobs[@]} -eq 0 ] || wait "${jobs[@]}" || true
  local left=""
  for name in "${SERVICES[@]}"; do
    [ -f "$pids/$name.pid" ] && left="$left $name"
  done
  [ -z "$left" ] || die "could not stop:$left"
  case "$(pg_dir)" in /tmp/imagen-cluster-pg.*) rm -rf "$(pg_dir)" "$cluster_dir/pg-dir" ;; esac
  log "stopped"
}

status() {
  local name rc=0
  for name in "${SERVICES[@]}"; do
    if alive "$name"; then
      printf '%-14s running  pid %s\n' "$name" "$(pid_of "$name")"
    elif [ -f "$pids/$name.pid" ]; then
      printf '%-14s DEAD     (pid file %s)\n' "$name" "$pids/$name.pid"; rc=1
    else
      printf '%-14s stopped\n' "$name"; rc=1
    fi
  done
  if [ -f "$cluster_dir/env.sh" ] && alive api-server; then
    # shellcheck source=/dev/null
    source "$cluster_dir/env.sh"
    printf 'airflow health: %s\n' "$(curl -s --max-time 5 "$CLUSTER_API_URL/api/v2/monitor/health" || echo unreachable)"
  fi
  return $rc
}

case "${1:-}" in
  setup) setup_debian; setup_venv ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 setup|start|stop|status" >&2; exit 2 ;;
esac
