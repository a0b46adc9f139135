"""
A real Airflow on 127.0.0.1: api-server, scheduler, dag-processor and triggerer, each its own process.

Started one by one (not ``airflow standalone``) so that every process has a PID of its own to stop and a
log file of its own to keep. The Airflow home, SQLite database and image folder live in a temporary
folder; the DAG folder is the repo's ``dags/``; the Cloudflare endpoint is the emulator.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
USERNAME = "admin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class AirflowServices:
    """
    Start, wait for, talk to and stop a whole Airflow deployment.

    :param home: an empty folder for ``AIRFLOW_HOME``; process logs go to ``home/process-logs``.
    :param dags_folder: the DAG folder to serve.
    :param connection_json: the ``cloudflare_workers_ai_default`` connection, as JSON.
    :param output_dir: the ``imagen_output_dir`` Variable the persisting example writes to.
    """

    def __init__(self, home: Path, dags_folder: Path, connection_json: str, output_dir: Path) -> None:
        self.home = home
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.password = secrets.token_urlsafe(12)
        self.process_logs = home / "process-logs"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._airflow = str(Path(sys.executable).with_name("airflow"))
        self.env = self._environment(dags_folder, connection_json, output_dir)
        self._token: str | None = None

    def _environment(self, dags_folder: Path, connection_json: str, output_dir: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW"))}
        passwords = self.home / "passwords.json"
        passwords.write_text(json.dumps({USERNAME: self.password}))
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": "8",
                "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USERNAME}:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__BASE_URL": self.base_url,
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                # Processes started one by one must share the secrets the api-server signs task tokens with.
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
                "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW_CONN_CLOUDFLARE_WORKERS_AI_DEFAULT": connection_json,
                "AIRFLOW_VAR_IMAGEN_OUTPUT_DIR": str(output_dir),
                # The Images view reads stored images only under these prefixes: the folder the DAGs write to.
                "AIRFLOW__IMAGEN__GALLERY_ROOTS": str(output_dir),
                "NO_PROXY": "127.0.0.1,localhost",
            }
        )
        return env

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self, timeout: float = 180) -> None:
        """Migrate the database, start the four components, and wait until all report healthy."""
        self.process_logs.mkdir(parents=True, exist_ok=True)
        with open(self.process_logs / "db-migrate.log", "wb") as log:
            subprocess.run(
                [self._airflow, "db", "migrate"], env=self.env, stdout=log, stderr=subprocess.STDOUT, check=True
            )
        for component in COMPONENTS:
            log = open(self.process_logs / f"{component}.log", "wb")  # noqa: SIM115 - closed with the process
            self.processes[component] = subprocess.Popen(
                [self._airflow, component],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so stop() also reaches its workers
            )
            log.close()
        self.wait_healthy(timeout)
        # Airflow 3.1 builds each hook's connection-form metadata once per api-server process, and a
        # connection Test that comes first imports the hook without Flask-AppBuilder and caches it without
        # its form (every provider's form, not only ours). Load the form metadata first, as opening the
        # Connections page does, so the browser test does not depend on the REST tests' order.
        httpx.get(
            f"{self.base_url}/ui/connections/hook_meta", headers={"Authorization": f"Bearer {self.token()}"}, timeout=60
        ).raise_for_status()

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                health = httpx.get(f"{self.base_url}/api/v2/monitor/health", timeout=5).json()
                last = health
                if all(
                    health.get(part, {}).get("status") == "healthy"
                    for part in ("scheduler", "triggerer", "dag_processor")
                ):
                    return
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(1)
        raise TimeoutError(f"Airflow not healthy after {timeout:.0f} s; last answer: {last}")

    def _check_alive(self) -> None:
        for component, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"airflow {component} exited with {process.returncode}; see its log")

    def stop(self) -> None:
        """Stop every component by its own PID (and its process group), politely first."""
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
            with contextlib.suppress(ProcessLookupError):  # workers left behind in the group
                os.killpg(process.pid, signal.SIGKILL)

    def wait_for_executor_event(self, dag_id: str, task_id: str, run_id: str, state: str, timeout: float = 60) -> None:
        """
        Wait until the scheduler has handled the executor's event for a try that ended in ``state`` (its
        "TaskInstance Finished" line). A task that waits for a person (awaiting_input) and is answered before this
        meets Airflow 3.3.2's race: the late event finds the answered task queued again and fails it.
        """
        wanted = f"TaskInstance Finished: dag_id={dag_id}, task_id={task_id}, run_id={run_id},"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = (self.process_logs / "scheduler.log").read_text(errors="replace").splitlines()
            if any(wanted in line and f"state={state}," in line for line in lines):
                return
            time.sleep(0.5)
        raise TimeoutError(f"the scheduler handled no executor event for {dag_id}.{task_id} {run_id} ({state})")

    def keep_logs(self, destination: Path) -> Path:
        """Copy the process logs and the task logs to ``destination``, for a failed run's artifacts."""
        shutil.rmtree(destination, ignore_errors=True)
        shutil.copytree(self.process_logs, destination / "process-logs")
        if (self.home / "logs").exists():
            shutil.copytree(self.home / "logs", destination / "task-logs")
        return destination

    # -- REST API ----------------------------------------------------------------------------------

    def token(self) -> str:
        if self._token is None:
            response = httpx.post(
                f"{self.base_url}/auth/token", json={"username": USERNAME, "password": self.password}, timeout=30
            )
            response.raise_for_status()
            self._token = str(response.json()["access_token"])
        return self._token

    def client(self) -> httpx.Client:
        """An API client authenticated as the admin user."""
        return httpx.Client(
            base_url=f"{self.base_url}/api/v2", headers={"Authorization": f"Bearer {self.token()}"}, timeout=30
        )

    def wait_for_dags(self, dag_ids: list[str], timeout: float = 120) -> None:
        """Wait until the dag-processor has parsed ``dag_ids``; fail early on import errors."""
        deadline = time.monotonic() + timeout
        with self.client() as api:
            while time.monotonic() < deadline:
                errors = api.get("/importErrors").json()["import_errors"]
                if errors:
                    raise AssertionError(f"DAG import errors: {errors}")
                known = {d["dag_id"] for d in api.get("/dags", params={"limit": 100}).json()["dags"]}
                if set(dag_ids) <= known:
                    return
                time.sleep(1)
        raise TimeoutError(f"DAGs {sorted(set(dag_ids) - known)} not parsed after {timeout:.0f} s")

    def trigger(self, dag_id: str) -> str:
        """Unpause ``dag_id`` and trigger a run without a logical date, as the UI's Trigger button does."""
        with self.client() as api:
            api.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
            response = api.post(f"/dags/{dag_id}/dagRuns", json={"logical_date": None})
            response.raise_for_status()
            return str(response.json()["dag_run_id"])

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float) -> dict[str, Any]:
        """Wait for a run to finish; return it when it succeeded, raise with its task states when not."""
        deadline = time.monotonic() + timeout
        with self.client() as api:
            while True:
                self._check_alive()
                run = api.get(f"/dags/{dag_id}/dagRuns/{run_id}").json()
                if run["state"] == "success":
                    return dict(run)
                if run["state"] == "failed" or time.monotonic() > deadline:
                    tis = api.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
                    states = [(t["task_id"], t["map_index"], t["state"]) for t in tis]
                    raise AssertionError(f"{dag_id} run {run_id} is {run['state']!r}; tasks: {states}")
                time.sleep(1)
