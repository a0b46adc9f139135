"""
The real triggerer of a running cluster holding N deferred generations: its memory (RSS) and open sockets.

    CLUSTER_TRIGGERER_CAPACITY=2500 scripts/cluster.sh start
    source .cluster/env.sh
    .venv-cluster/bin/python benchmarks/triggerer_in_cluster.py --counts 500 2000 --latency 60
    scripts/cluster.sh stop

Deferring thousands of tasks through the workers would cost thousands of task starts, so this puts the
deferred state straight into the metadata database, as a worker's ``self.defer()`` leaves it: for each
generation a ``Trigger`` row (``ImagenGenerateImageTrigger``, its own prompt) and a DEFERRED task instance of
the paused ``imagen_cluster`` DAG's ``deferred`` task pointing at it, in a run of its own. The triggerer then
picks them up as it would any deferred task and calls the emulator (``--latency`` seconds per generation).
While they are in flight the script samples the triggerer's processes (its supervisor and trigger runner:
every process in the session ``scripts/cluster.sh`` started it in) for RSS, sockets and open files. The run
is deleted afterwards; the DAG stays paused, so nothing resumes on a worker.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import httpx

DAG_ID = "imagen_cluster"
TASK_ID = "deferred"
TRIGGER = "airflow_provider_imagen.triggers.imagen.ImagenGenerateImageTrigger"


def triggerer_processes() -> list[int]:
    leader = int((Path(os.environ["CLUSTER_DIR"]) / "pids" / "triggerer.pid").read_text().split()[0])
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == leader:
            members.append(int(stat.parent.name))
    return members


def sample(pids: list[int]) -> dict[str, float]:
    rss = sockets = files = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                sockets += target.startswith("socket:")
                files += target.startswith("/")
        except OSError:
            continue
    return {"rss_mib": round(rss / 1024, 1), "sockets": sockets, "open_files": files}


def api() -> httpx.Client:
    base = os.environ["CLUSTER_API_URL"]
    token = httpx.post(
        f"{base}/auth/token", json={"username": "admin", "password": os.environ["CLUSTER_ADMIN_PASSWORD"]}, timeout=30
    ).json()["access_token"]
    return httpx.Client(base_url=f"{base}/api/v2", headers={"Authorization": f"Bearer {token}"}, timeout=60)


def defer_directly(run_id: str, count: int) -> None:
    """What ``self.defer()`` leaves behind, for ``count`` map indexes of the ``deferred`` task."""
    from airflow.models.dag_version import DagVersion
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.trigger import Trigger
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState

    with create_session() as session:
        version = DagVersion.get_latest_version(DAG_ID, session=session)
        task = SerializedDagModel.get_dag(DAG_ID, session=session).get_task(TASK_ID)
        triggers = [
            Trigger(classpath=TRIGGER, kwargs={"prompt": f"{run_id} deferred {i}: a lighthouse", "aspect_ratio": "1:1"})
            for i in range(count)
        ]
        session.add_all(triggers)
        session.flush()
        for i, trigger in enumerate(triggers):
            ti = TaskInstance(task, dag_version_id=version.id, run_id=run_id, map_index=10_000 + i)
            ti.state = TaskInstanceState.DEFERRED
            ti.trigger_id = trigger.id
            ti.next_method = "execute_complete"
            ti.try_number = 1
            session.add(ti)


def measure(client: httpx.Client, emulator: httpx.Client, count: int, latency: float) -> dict[str, object]:
    run_id = f"capacity-{count}-{int(time.time())}"
    response = client.post(
        f"/dags/{DAG_ID}/dagRuns", json={"dag_run_id": run_id, "logical_date": None, "conf": {"tag": run_id}}
    )
    response.raise_for_status()
    emulator.post("/reset").raise_for_status()
    emulator.patch("/config", json={"latency": latency, "failure_rate": 0}).raise_for_status()
    pids = triggerer_processes()
    baseline = sample(pids)
    started = time.monotonic()
    defer_directly(run_id, count)
    peak = {"rss_mib": 0.0, "sockets": 0, "open_files": 0, "in_flight_at_emulator": 0}
    deadline = started + latency * (count / 1000 + 2) + 120
    try:
        while time.monotonic() < deadline:
            time.sleep(1)
            now = sample(triggerer_processes())
            requests = emulator.get("/stats").json()["api_requests"]
            for key, value in now.items():
                peak[key] = max(peak[key], value)
            done = client.get(
                f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", params={"state": "scheduled", "limit": 1}
            ).json()["total_entries"]
            peak["in_flight_at_emulator"] = max(peak["in_flight_at_emulator"], requests - done)
            if done >= count:
                break
        seconds = time.monotonic() - started
        return {
            "deferred": count,
            "latency_s": latency,
            "baseline": baseline,
            "peak": peak,
            "per_generation_kib": round((peak["rss_mib"] - baseline["rss_mib"]) * 1024 / count, 1),
            "events_fired": done,
            "seconds_until_all_fired": round(seconds, 1),
            "api_requests": emulator.get("/stats").json()["api_requests"],
        }
    finally:
        client.delete(f"/dags/{DAG_ID}/dagRuns/{run_id}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--latency", type=float, default=60.0, help="seconds each emulated generation takes")
    args = parser.parse_args()
    with api() as client, httpx.Client(base_url=f"{os.environ['CLUSTER_EMULATOR_URL']}/__emulator__") as emulator:
        client.patch(f"/dags/{DAG_ID}", json={"is_paused": True}).raise_for_status()
        for count in args.counts:
            print(json.dumps(measure(client, emulator, count, args.latency)), flush=True)
            time.sleep(10)  # let the triggerer drop the finished triggers before the next count
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
