"""
The provider in a production topology: CeleryExecutor with two workers, PostgreSQL, Redis, S3 (moto's
server), a triggerer, and the emulator serving transient faults; then a Celery worker killed mid-run.

Runs against the cluster that ``scripts/cluster.sh start`` started (``scripts/test-cluster.sh`` does it all);
everything is read back the way an operator would: Airflow's REST API, the bucket, the emulator's counters.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import struct
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster.conftest import FIGURES

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

DAG_ID = "imagen_cluster"
DAG_FILE = Path(__file__).parent / "dags" / "imagen_cluster.py"
IMAGEN = "google/imagen-4"
FAILURE_RATE = 0.15
SEED = 2026  # its first draw is a fault, so the first run meets at least one
WORKERS = ("worker-a", "worker-b")
RUN_TIMEOUT = 300.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def env(name: str) -> str:
    return os.environ[name]


def dag_module() -> Any:
    spec = importlib.util.spec_from_file_location("imagen_cluster_dag", DAG_FILE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def expected_prompts(tag: str) -> dict[str, list[str]]:
    """The prompts each task of a run asks for, rendered as Airflow renders them."""
    dag = dag_module()
    counts = {"deferred": dag.N_DEFERRED, "on_worker": dag.N_ON_WORKER, "batch": dag.N_BATCH}
    return {task: [p.replace(dag.TAG, tag) for p in dag.prompts(task, n)] for task, n in counts.items()}


# -- the cluster's parts ---------------------------------------------------------------------------------


class Airflow:
    def __init__(self) -> None:
        token = httpx.post(
            f"{env('CLUSTER_API_URL')}/auth/token",
            json={"username": "admin", "password": env("CLUSTER_ADMIN_PASSWORD")},
            timeout=30,
        )
        token.raise_for_status()
        self.api = httpx.Client(
            base_url=f"{env('CLUSTER_API_URL')}/api/v2",
            headers={"Authorization": f"Bearer {token.json()['access_token']}"},
            timeout=30,
        )

    def wait_for_dag(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            errors = self.api.get("/importErrors").json()["import_errors"]
            assert not errors, f"DAG import errors: {errors}"
            if self.api.get(f"/dags/{DAG_ID}").status_code == 200:
                self.api.patch(f"/dags/{DAG_ID}", json={"is_paused": False}).raise_for_status()
                return
            time.sleep(1)
        raise TimeoutError(f"{DAG_ID} not parsed after {timeout:.0f} s")

    def trigger(self, tag: str) -> str:
        response = self.api.post(f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": {"tag": tag}})
        response.raise_for_status()
        return str(response.json()["dag_run_id"])

    def run(self, run_id: str) -> dict[str, Any]:
        return dict(self.api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}").json())

    def task_instances(self, run_id: str) -> list[dict[str, Any]]:
        response = self.api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
        response.raise_for_status()
        return list(response.json()["task_instances"])

    def stored_uris(self, run_id: str) -> dict[str, list[str]]:
        """Per task, the ``stored_uri`` XComs of its task instances: where the run says it put each image."""
        uris: dict[str, list[str]] = {}
        for ti in self.task_instances(run_id):
            response = self.api.get(
                f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{ti['task_id']}/xcomEntries/stored_uri",
                params={"map_index": ti["map_index"]},
            )
            response.raise_for_status()
            value = response.json()["value"]
            uris.setdefault(ti["task_id"], []).extend(value if isinstance(value, list) else [value])
        return uris

    def wait_for_run(self, run_id: str, timeout: float = RUN_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(run_id)
            if run["state"] in ("success", "failed") or time.monotonic() > deadline:
                break
            time.sleep(2)
        tis = self.task_instances(run_id)
        states = sorted((t["task_id"], t["map_index"], t["state"], t["try_number"]) for t in tis)
        assert run["state"] == "success", f"run {run_id} is {run['state']!r}; tasks: {states}"
        return run


class Emulator:
    def __init__(self) -> None:
        self.http = httpx.Client(base_url=f"{env('CLUSTER_EMULATOR_URL')}/__emulator__", timeout=30)

    def configure(self, **changes: Any) -> None:
        self.http.patch("/config", json=changes).raise_for_status()

    def stats(self) -> dict[str, Any]:
        response = self.http.get("/stats")
        response.raise_for_status()
        return dict(response.json())


def prompt_of(request: dict[str, Any]) -> str | None:
    data = request.get("input")
    return data.get("prompt") if isinstance(data, dict) else None


def generations(before: dict[str, Any], after: dict[str, Any], prompts: list[str]) -> dict[str, Any]:
    """
    What the emulator served for these prompts between two snapshots of its counters.

    ``generated`` counts what Cloudflare would bill: generations that completed (the emulator's own count,
    per prompt), whether or not a client was still waiting; a transient fault and an answer from the AI
    Gateway cache (``cache_hits``) are not billed. ``per_prompt_requests`` counts every request per prompt.
    """
    requests = after["by_model"].get(IMAGEN, 0) - before["by_model"].get(IMAGEN, 0)
    faults = after["faults_served"] - before["faults_served"]
    seen = Counter(p for p in map(prompt_of, after["recent"][len(before["recent"]) :]) if p in set(prompts))
    assert len(after["recent"]) < 1000, "the emulator's request record overflowed: per-prompt counts are partial"
    billed = {p: after["generations_by_prompt"].get(p, 0) - before["generations_by_prompt"].get(p, 0) for p in prompts}
    return {
        "requests": requests,
        "faults_served": faults,
        "cache_hits": after["cache_hits"] - before["cache_hits"],
        "generated": sum(billed.values()),
        "extra_generations": sum(billed.values()) - len(prompts),
        "per_prompt_generations": billed,
        "per_prompt_requests": {p: seen[p] for p in prompts},
    }


class Bucket:
    def __init__(self) -> None:
        import boto3

        self.name = env("CLUSTER_BUCKET")
        self.s3 = boto3.client(
            "s3",
            endpoint_url=env("CLUSTER_S3_URL"),
            region_name="us-east-1",
            aws_access_key_id="cluster-key",
            aws_secret_access_key="cluster-secret",
        )

    def objects(self, prefix: str) -> dict[str, bytes]:
        keys: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", [])]
        return {key: self.s3.get_object(Bucket=self.name, Key=key)["Body"].read() for key in keys}

    def unfinished_uploads(self) -> list[str]:
        return [u["Key"] for u in self.s3.list_multipart_uploads(Bucket=self.name).get("Uploads", [])]


def complete_png(data: bytes) -> bool:
    """A PNG signature, then chunks whose CRCs all check, ending with IEND at the last byte."""
    if not data.startswith(PNG_SIGNATURE):
        return False
    offset = len(PNG_SIGNATURE)
    while offset + 12 <= len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        end = offset + 12 + length
        if end > len(data):
            return False
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(data[offset + 4 : end - 4]) != crc:
            return False
        if kind == b"IEND":
            return end == len(data)
        offset = end
    return False


def check_bucket(bucket: Bucket, tag: str, prompts: dict[str, list[str]], stored: dict[str, list[str]]) -> dict:
    """
    One complete PNG per image under <tag>/<task>/, and nothing else (no temporary or partial objects): the
    objects are exactly those the task instances report in XCom ``stored_uri``, one per prompt.
    """
    objects = bucket.objects(f"{tag}/")
    by_task = Counter(key.split("/")[1] for key in objects)
    assert by_task == {task: len(p) for task, p in prompts.items()}, sorted(objects)
    reported = [uri.split(f"@{bucket.name}/", 1)[1] for uris in stored.values() for uri in uris]
    assert sorted(reported) == sorted(objects), (sorted(reported), sorted(objects))
    broken = [key for key, data in objects.items() if not complete_png(data)]
    assert not broken, f"objects that are not complete PNGs: {broken}"
    assert bucket.unfinished_uploads() == []
    return {"objects": len(objects), "bytes": sum(map(len, objects.values())), "per_task": dict(by_task)}


def who_ran_what(tis: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    work: dict[str, Counter[str]] = {}
    for ti in tis:
        work.setdefault(ti["hostname"] or "?", Counter())[ti["task_id"]] += 1
    return {host: dict(tasks) for host, tasks in sorted(work.items())}


# -- the cluster's processes -------------------------------------------------------------------------------


def session_members(leader: int) -> list[int]:
    """PIDs in the session the cluster script started a service in (its task runners included)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == leader:  # after the name: state, ppid, pgrp, session
                members.append(int(stat.parent.name))
    return members


def kill_worker(name: str) -> int:
    """SIGKILL a Celery worker and everything it started, as when its machine dies."""
    leader = int((Path(env("CLUSTER_DIR")) / "pids" / f"{name}.pid").read_text().split()[0])  # PID, start time
    members = session_members(leader)
    assert leader in members, f"{name} (pid {leader}) is not running"
    for pid in members:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(members)


# -- tests -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def airflow() -> Airflow:
    client = Airflow()
    client.wait_for_dag()
    return client


@pytest.fixture(scope="module")
def emulator() -> Emulator:
    server = Emulator()
    server.configure(failure_rate=FAILURE_RATE, seed=SEED)
    return server


@pytest.fixture(scope="module")
def bucket() -> Bucket:
    return Bucket()


def test_run_with_transient_faults_stores_each_image_once(airflow: Airflow, emulator: Emulator, bucket: Bucket):
    tag = "run1"
    prompts = expected_prompts(tag)
    every_prompt = [p for task in prompts.values() for p in task]
    before = emulator.stats()
    started = time.monotonic()
    run_id = airflow.trigger(tag)
    airflow.wait_for_run(run_id)
    seconds = time.monotonic() - started
    counted = generations(before, emulator.stats(), every_prompt)
    tis = airflow.task_instances(run_id)

    assert {ti["state"] for ti in tis} == {"success"}
    stored = check_bucket(bucket, tag, prompts, airflow.stored_uris(run_id))
    assert counted["faults_served"] > 0, "no fault was injected: the drill proved nothing"
    assert all(n >= 1 for n in counted["per_prompt_requests"].values()), counted
    # Billed exactly once per image: every request was a fault or the one generation of its prompt.
    assert counted["extra_generations"] == 0, counted
    work = who_ran_what(tis)
    assert set(WORKERS) <= set(work), f"both workers should have run tasks: {work}"

    FIGURES["run1 (faults, no kill)"] = {
        "seconds": round(seconds, 1),
        "images": len(every_prompt),
        **stored,
        **{k: v for k, v in counted.items() if not k.startswith("per_prompt")},
        "task_instances_by_worker": work,
        "task_retries": sum(ti["try_number"] - 1 for ti in tis),
    }


def test_run_survives_a_worker_killed_mid_generation(airflow: Airflow, emulator: Emulator, bucket: Bucket):
    tag = "run2"
    prompts = expected_prompts(tag)
    every_prompt = [p for task in prompts.values() for p in task]
    before = emulator.stats()
    started = time.monotonic()
    run_id = airflow.trigger(tag)

    # Wait until a worker runs an `on_worker` generation whose request the emulator has received (it takes
    # CLUSTER_LATENCY seconds to answer), then kill that worker.
    victim = None
    deadline = time.monotonic() + 120
    while victim is None:
        assert time.monotonic() < deadline, "no generation in flight on a worker within 120 s"
        asked = {prompt_of(r) for r in emulator.stats()["recent"][len(before["recent"]) :]}
        for ti in airflow.task_instances(run_id):
            on_a_worker = ti["task_id"] == "on_worker" and ti["state"] == "running" and ti["hostname"] in WORKERS
            if on_a_worker and prompts["on_worker"][ti["map_index"]] in asked:
                victim = ti["hostname"]
                break
        else:
            time.sleep(0.3)
    running = [
        (ti["task_id"], ti["map_index"])
        for ti in airflow.task_instances(run_id)
        if ti["state"] == "running" and ti["hostname"] == victim
    ]
    killed_processes = kill_worker(victim)
    killed_after = time.monotonic() - started

    airflow.wait_for_run(run_id)
    seconds = time.monotonic() - started
    counted = generations(before, emulator.stats(), every_prompt)
    tis = airflow.task_instances(run_id)
    survivor = next(w for w in WORKERS if w != victim)

    assert {ti["state"] for ti in tis} == {"success"}
    stored = check_bucket(bucket, tag, prompts, airflow.stored_uris(run_id))
    assert all(n >= 1 for n in counted["per_prompt_requests"].values()), counted
    # The interrupted tasks were retried, and finished on the worker that was left.
    by_key = {(ti["task_id"], ti["map_index"]): ti for ti in tis}
    for key in running:
        assert by_key[key]["try_number"] >= 2, (key, by_key[key])
        assert by_key[key]["hostname"] == survivor, (key, by_key[key])

    # Durable generation: a retry re-sends an in-flight generation with the same AI Gateway cache key (an
    # unbilled cache hit) and reuses what earlier tries recorded, so the kill costs no second generation.
    on_workers = {*prompts["on_worker"], *prompts["batch"]}
    extra_prompts = {p: n for p, n in counted["per_prompt_requests"].items() if n > 1 and p in on_workers}
    FIGURES["run2 (faults, worker killed)"] = {
        "seconds": round(seconds, 1),
        "images": len(every_prompt),
        **stored,
        **{k: v for k, v in counted.items() if not k.startswith("per_prompt")},
        "killed_worker": victim,
        "killed_after_seconds": round(killed_after, 1),
        "killed_processes": killed_processes,
        "task_instances_running_on_it": [f"{task}[{index}]" for task, index in running],
        "prompts_requested_more_than_once": len(extra_prompts),
        "task_instances_by_worker_final_try": who_ran_what(tis),
        "task_retries": sum(ti["try_number"] - 1 for ti in tis),
    }
    print(f"\nExtra generations after killing {victim}: {counted['extra_generations']}")
    assert all(n == 1 for n in counted["per_prompt_generations"].values()), counted["per_prompt_generations"]
