"""
Dataset steps: an image per row stored as ``<key>.<ext>``, reruns that pay only for new or changed rows, a manifest.

Every test counts generations at the emulator: what Cloudflare would bill.
"""

from __future__ import annotations

import csv
import itertools
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import DAG

from airflow_provider_imagen._task.dataset import shard_of
from airflow_provider_imagen.exceptions import InvalidInputError
from airflow_provider_imagen.operators import ImagenDatasetOperator
from tests.test_durable import FakeTaskStateStore, TaskInstance

try:  # the S3 fixtures need moto[server] and s3fs (the dev extra)
    from tests.test_s3_storage import bucket, s3_endpoint  # noqa: F401 - fixtures

    HAS_S3 = True
except pytest.skip.Exception:
    HAS_S3 = False

REPO = Path(__file__).resolve().parent.parent
RUNS = itertools.count(1)


def dataset(**kwargs: Any) -> ImagenDatasetOperator:
    with DAG(dag_id="catalog", schedule=None, start_date=datetime(2025, 1, 1)):
        return ImagenDatasetOperator(task_id="images", retries=3, **kwargs)


def run(op: ImagenDatasetOperator, ti: TaskInstance | None = None, store: Any = None) -> dict[str, Any]:
    """Run one try; ``store={}`` runs it without a task state store (the records go to ``durable_cache_path``)."""
    # Each call without ``ti`` is a new DAG run: its AI Gateway cache keys are new, as a real rerun's are.
    context = {"ti": ti or TaskInstance(dag_id="catalog", task_id="images", run_id=f"manual__{next(RUNS)}")}
    if store != {}:
        context["task_state_store"] = store if store is not None else FakeTaskStateStore()
    return op.execute(context)


def rows(count: int, start: int = 0, prompt: str = "Product photo of item {n}") -> list[dict[str, Any]]:
    return [{"key": f"SKU-{n:04d}", "prompt": prompt.format(n=n)} for n in range(start, start + count)]


def write_jsonl(path: Path, items: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def manifest(summary: dict[str, Any]) -> list[dict[str, Any]]:
    uri = summary["manifest"]
    assert uri.startswith("file://")
    return [json.loads(line) for line in Path(uri[len("file://") :]).read_text().splitlines()]


def images(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".png")


def test_each_item_is_stored_at_its_key_and_listed_in_the_manifest(imagen_emulator, tmp_path):
    items = write_jsonl(tmp_path / "products.jsonl", rows(5))
    summary = run(dataset(items=str(items), output_path=f"{tmp_path}/out/", aspect_ratio="4:3"))

    assert imagen_emulator.generations == 5
    assert summary == {
        "generated": 5,
        "reused": 0,
        "replaced": 0,
        "failed": 0,
        "total": 5,
        "manifest": summary["manifest"],
        "estimated_cost_usd": None,  # Imagen 4 has no published price: no estimate without the connection's prices
    }
    assert images(tmp_path / "out") == [f"SKU-{n:04d}.png" for n in range(5)]
    assert summary["manifest"].startswith(f"file://{tmp_path}/out/manifests/catalog/")
    lines = manifest(summary)
    assert [line["key"] for line in lines] == [f"SKU-{n:04d}" for n in range(5)]
    first = lines[0]
    assert first["status"] == "generated" and first["stored_uri"] == f"file://{tmp_path}/out/SKU-0000.png"
    assert first["prompt"] == "Product photo of item 0" and first["model"] == "google/imagen-4"
    assert first["aspect_ratio"] == "4:3" and first["width"] and first["height"] and "error" not in first


def test_a_rerun_pays_for_nothing_and_reuses_every_image(imagen_emulator, tmp_path):
    items = write_jsonl(tmp_path / "products.jsonl", rows(8))
    op = dataset(items=str(items), output_path=f"{tmp_path}/out/", manifest_path=f"{tmp_path}/m/run1.jsonl")
    run(op)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}

    op = dataset(items=str(items), output_path=f"{tmp_path}/out/", manifest_path=f"{tmp_path}/m/run2.jsonl")
    summary = run(op)
    assert imagen_emulator.generations == 8 and imagen_emulator.api_requests == 8  # the first run's, nothing more
    assert summary["reused"] == 8 and summary["generated"] == summary["replaced"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()} == before  # nothing rewritten
    reused = manifest(summary)
    assert {line["status"] for line in reused} == {"reused"}
    assert reused[0]["width"] and reused[0]["model"] == "google/imagen-4"


def test_five_changed_and_ten_new_rows_bill_fifteen_and_replace_five(imagen_emulator, tmp_path):
    out = f"{tmp_path}/out/"
    run(dataset(items=rows(20), output_path=out))
    old = (tmp_path / "out" / "SKU-0000.png").read_bytes()

    changed = rows(5, prompt="A new photo of item {n}") + rows(15, start=5) + rows(10, start=20)
    summary = run(dataset(items=changed, output_path=out))
    assert imagen_emulator.generations == 20 + 15
    assert (summary["generated"], summary["replaced"], summary["reused"]) == (10, 5, 15)
    assert (tmp_path / "out" / "SKU-0000.png").read_bytes() != old
    statuses = {line["key"]: line["status"] for line in manifest(summary)}
    assert (
        statuses["SKU-0004"] == "replaced" and statuses["SKU-0005"] == "reused" and statuses["SKU-0029"] == "generated"
    )
    assert len(images(tmp_path / "out")) == 30
    assert len(list((tmp_path / "out").glob("SKU-0000.*.json"))) == 1  # one sidecar per key: the old one is gone

    again = run(dataset(items=changed, output_path=out))
    assert imagen_emulator.generations == 35 and again["reused"] == 30


def test_a_csv_with_an_extra_column_carries_it_to_the_manifest(imagen_emulator, tmp_path):
    path = tmp_path / "products.csv"
    with path.open("w", newline="", encoding="utf-8-sig") as out:  # as a spreadsheet exports it: a BOM first
        writer = csv.writer(out)
        writer.writerow(["key", "prompt", "aspect_ratio", "category"])
        writer.writerow(["mug-1", "A blue mug", "", "kitchen"])
        writer.writerow(["lamp-2", "A brass lamp", "9:16", "lighting"])
    summary = run(dataset(items=str(path), output_path=f"{tmp_path}/out/", aspect_ratio="1:1"))
    lines = {line["key"]: line for line in manifest(summary)}
    assert lines["mug-1"]["category"] == "kitchen" and lines["mug-1"]["aspect_ratio"] == "1:1"
    assert lines["lamp-2"]["category"] == "lighting" and lines["lamp-2"]["aspect_ratio"] == "9:16"
    assert lines["lamp-2"]["height"] > lines["lamp-2"]["width"]
    assert imagen_emulator.generations == 2


def test_bad_rows_are_refused_before_any_request_naming_them_by_line(imagen_emulator, tmp_path):
    items = [
        {"key": "ok-1", "prompt": "fine"},
        {"prompt": "no key"},
        {"key": "../etc/passwd", "prompt": "escape"},
        {"key": "ok-1", "prompt": "duplicate"},
        {"key": "no-prompt"},
        {"key": ".hidden", "prompt": "hidden"},
        {"key": "ratio", "prompt": "x", "aspect_ratio": "2:1"},
    ] + [{"key": f"bad key {n}", "prompt": "x"} for n in range(30)]
    path = write_jsonl(tmp_path / "bad.jsonl", items)
    with pytest.raises(InvalidInputError) as refused:
        run(dataset(items=str(path), output_path=f"{tmp_path}/out/"))
    message = str(refused.value)
    assert "36 of 37 rows refused before any request" in message
    assert "line 2: key: missing" in message and "line 3: key: '../etc/passwd' is not a safe file name" in message
    assert "line 4: key: 'ok-1' appears more than once" in message and "line 5: prompt: missing" in message
    assert "line 6:" in message and "line 7: aspect_ratio" in message and "... and 16 more" in message
    assert imagen_emulator.api_requests == 0
    assert not (tmp_path / "out").exists()


def test_four_shards_cover_two_hundred_rows_exactly_once(imagen_emulator, tmp_path):
    items = write_jsonl(tmp_path / "products.jsonl", rows(200))
    seen: list[str] = []
    for shard in range(4):
        ti = TaskInstance(dag_id="catalog", task_id="images", map_index=shard)
        summary = run(
            dataset(
                items=str(items), output_path=f"{tmp_path}/out/", shard_index=shard, shard_count=4, max_concurrency=16
            ),
            ti,
        )
        keys = [line["key"] for line in manifest(summary)]
        assert 0 < len(keys) < 200 and summary["total"] == len(keys)
        assert all(shard_of(key, 4) == shard for key in keys)
        seen += keys
    assert sorted(seen) == [f"SKU-{n:04d}" for n in range(200)]
    assert imagen_emulator.generations == 200
    assert shard_of("SKU-0000", 4) == 2  # stable: the same in every process and Python version


# --- A worker killed mid-run ---------------------------------------------------------------------------------

KILLED_TRY = """
import json, sys
from datetime import datetime
from airflow.sdk import DAG
from airflow_provider_imagen.operators import ImagenDatasetOperator


class TaskInstance:  # the first try of tests.test_durable's (importing tests would unset the connection)
    dag_id, run_id, task_id, map_index = "catalog", "manual__2026-01-01T00:00:00+00:00", "images", -1
    try_number, max_tries = 1, 3

    def xcom_push(self, key, value):
        pass


with DAG(dag_id="catalog", schedule=None, start_date=datetime(2025, 1, 1)):
    op = ImagenDatasetOperator(task_id="images", retries=3, items=sys.argv[1], output_path=sys.argv[2],
                               max_concurrency=4)
op.execute({"ti": TaskInstance()})
"""


def test_a_try_killed_mid_run_is_retried_paying_only_for_rows_not_yet_stored(imagen_emulator, tmp_path, monkeypatch):
    import signal
    import subprocess
    import sys

    # Before Airflow 3.3's task state store, the durable records live in a folder: shared by both processes.
    monkeypatch.setenv("AIRFLOW__IMAGEN__DURABLE_CACHE_PATH", str(tmp_path / "durable"))
    imagen_emulator.configure(latency=0.3)
    items = write_jsonl(tmp_path / "products.jsonl", rows(40))
    out = tmp_path / "out"
    worker = subprocess.Popen([sys.executable, "-c", KILLED_TRY, str(items), f"{out}/"], cwd=REPO)
    try:
        imagen_emulator.wait_for_generations(12, timeout=60)
    finally:
        worker.send_signal(signal.SIGKILL)  # no finally, no manifest: a lost worker
        worker.wait()
    # The dead worker's requests still run at Cloudflare and are billed when they complete; a re-send is a cache
    # hit only once they have (a re-send while one is in flight is not merged with it). Wait for that, not a time.
    deadline = time.monotonic() + 60
    while imagen_emulator.generations < imagen_emulator.api_requests and time.monotonic() < deadline:
        time.sleep(0.05)
    imagen_emulator.configure(latency=0)
    stored_before = len(list(out.glob("*.json")))
    # A slot frees only when a row is stored and sealed: 12 generations at concurrency 4 means 8 rows stored.
    assert stored_before >= 8 and not (out / "manifests").exists()

    ti = TaskInstance(dag_id="catalog", task_id="images")
    ti.retry()
    summary = run(dataset(items=str(items), output_path=f"{out}/"), ti, store={})
    # Rows in flight when the worker died were billed then; the retry's same requests hit the gateway cache.
    assert imagen_emulator.generations == 40
    assert summary["failed"] == 0 and summary["reused"] >= stored_before
    assert summary["generated"] + summary["reused"] == 40
    assert len(images(out)) == 40 and len(list(out.glob("*.json"))) == 40


# --- S3: one listing, not one request per row -----------------------------------------------------------------


@pytest.mark.skipif(not HAS_S3, reason="needs moto[server] and s3fs (the dev extra)")
def test_an_s3_rerun_lists_the_folder_once_instead_of_asking_per_row(imagen_emulator, bucket, monkeypatch):
    import s3fs

    calls: list[str] = []  # the S3 API calls s3fs makes (its uploads go another way, checked by their result)
    original = s3fs.S3FileSystem._call_s3

    async def counted(self: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(f"{method} {kwargs.get('Prefix', '')}".strip())
        return await original(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counted)
    out = f"{bucket.uri}/products/"
    first = run(dataset(items=rows(30), output_path=out, max_concurrency=8))
    assert first["generated"] == 30 and imagen_emulator.generations == 30
    stored = bucket.objects()
    assert {f"products/SKU-{n:04d}.png" for n in range(30)} <= set(stored)

    calls.clear()
    again = run(dataset(items=rows(30), output_path=out))
    assert again["reused"] == 30 and imagen_emulator.generations == 30
    assert calls.count("list_objects_v2 products/") == 1, calls  # the folder, once
    assert len(calls) <= 6, calls  # and the manifest's upload (its folder, its existence): nothing per row
    assert again["manifest"].startswith(f"{bucket.uri}/products/manifests/")
    assert bucket.objects()[again["manifest"].split("@", 1)[1].split("/", 1)[1]].count(b'"reused"') == 30


# --- The example DAG -------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_catalog_dag_run_twice_bills_only_the_first_run(airflow_db, imagen_emulator, tmp_path, monkeypatch):
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 3.1
        from airflow.models.dagbag import DagBag

    monkeypatch.setenv("AIRFLOW_VAR_IMAGEN_OUTPUT_DIR", str(tmp_path))
    with (REPO / "dags" / "data" / "products.csv").open(newline="") as products:
        keys = [row["key"] for row in csv.DictReader(products)]
    dag = DagBag(dag_folder=str(REPO / "dags" / "imagen_catalog.py")).get_dag("imagen_catalog")

    first = dag.test()
    assert first.state == "success"
    assert imagen_emulator.generations == len(keys)
    assert images(tmp_path / "catalog") == sorted(f"{key}.png" for key in keys)

    second = dag.test()
    assert second.state == "success"
    assert imagen_emulator.generations == len(keys)  # the second run bills nothing
    ti = second.get_task_instance("product_images")
    summary = ti.xcom_pull(task_ids="product_images")
    assert summary["reused"] == len(keys) and summary["generated"] == 0
    lines = manifest(summary)
    assert [line["key"] for line in lines] == keys and {line["status"] for line in lines} == {"reused"}
    assert lines[0]["category"] == "kitchen" and lines[0]["price"] == "14.90"


# --- Failures ---------------------------------------------------------------------------------------------------


def test_a_failed_row_is_its_manifest_line_and_the_rerun_pays_only_for_it(imagen_emulator, tmp_path):
    from airflow_provider_imagen.exceptions import CloudflareWorkersAIError

    out, manifest_path = f"{tmp_path}/out/", f"{tmp_path}/manifest.jsonl"
    imagen_emulator.inject("content_policy")  # the first row's request is refused
    with pytest.raises(CloudflareWorkersAIError) as failed:
        run(dataset(items=rows(5), output_path=out, manifest_path=manifest_path, max_concurrency=1))
    assert "1 of 5 items failed" in str(failed.value) and "SKU-0000 (line 1)" in str(failed.value)
    lines = [json.loads(line) for line in Path(manifest_path).read_text().splitlines()]  # written for a failed task
    assert [line["status"] for line in lines] == ["failed"] + ["generated"] * 4
    assert "safety" in lines[0]["error"] and lines[0]["stored_uri"] is None
    assert imagen_emulator.generations == 4

    summary = run(dataset(items=rows(5), output_path=out, fail_on_error=False))
    assert (summary["generated"], summary["reused"], summary["failed"]) == (1, 4, 0)
    assert imagen_emulator.generations == 5


def test_a_datasets_failure_says_what_a_retry_can_expect_as_a_batchs_does(imagen_emulator, tmp_path):
    from airflow.providers.common.compat.sdk import AirflowFailException

    from airflow_provider_imagen.exceptions import CloudflareWorkersAIError, ImagesRefusedError

    imagen_emulator.inject("content_policy")  # no retry can change it: the task fails at once
    with pytest.raises(ImagesRefusedError) as refused:
        run(dataset(items=rows(2), output_path=f"{tmp_path}/a/", max_concurrency=1, max_retries=0))
    assert isinstance(refused.value, AirflowFailException)

    imagen_emulator.inject("drop")  # the answer was lost: maybe billed, and a retry may succeed
    with pytest.raises(CloudflareWorkersAIError) as lost:
        run(dataset(items=rows(2), output_path=f"{tmp_path}/b/", max_concurrency=1, max_retries=0))
    assert not isinstance(lost.value, AirflowFailException) and lost.value.maybe_billed and lost.value.retryable


def test_with_fail_on_error_off_the_task_succeeds_and_counts_the_failures(imagen_emulator, tmp_path):
    imagen_emulator.inject("content_policy")
    summary = run(dataset(items=rows(3), output_path=f"{tmp_path}/out/", max_concurrency=1, fail_on_error=False))
    assert (summary["failed"], summary["generated"]) == (1, 2)
    assert [line["status"] for line in manifest(summary)] == ["failed", "generated", "generated"]


def test_max_images_refuses_before_any_request_what_the_folder_does_not_hold(imagen_emulator, tmp_path):
    from airflow_provider_imagen.exceptions import SpendLimitError

    out = f"{tmp_path}/out/"
    run(dataset(items=rows(5), output_path=out))
    with pytest.raises(SpendLimitError):  # 5 new rows, 3 allowed
        run(dataset(items=rows(10), output_path=out, max_images=3))
    assert imagen_emulator.generations == 5
    assert run(dataset(items=rows(10), output_path=out, max_images=5))["generated"] == 5  # the 5 stored are free


def test_an_image_its_sidecar_does_not_vouch_for_is_never_trusted(imagen_emulator, tmp_path):
    out = tmp_path / "out"
    run(dataset(items=rows(3), output_path=f"{out}/"))
    # What a crash (or a person) can leave: an image without its sidecar, and an image that is not the one its
    # sidecar describes (here: other bytes under the same name).
    next(out.glob("SKU-0000.*.json")).unlink()
    (out / "SKU-0001.png").write_bytes((out / "SKU-0001.png").read_bytes() + b"\0")

    next_run = TaskInstance(dag_id="catalog", task_id="images", run_id="scheduled__2026-01-02T00:00:00+00:00")
    summary = run(dataset(items=rows(3), output_path=f"{out}/"), next_run)
    statuses = {line["key"]: line["status"] for line in manifest(summary)}
    assert statuses == {"SKU-0000": "replaced", "SKU-0001": "replaced", "SKU-0002": "reused"}
    assert imagen_emulator.generations == 5
    assert len(list(out.glob("*.json"))) == 3 and len(images(out)) == 3


def test_model_inputs_reach_every_request_and_a_changed_one_replaces_the_images(imagen_emulator, tmp_path):
    from airflow_provider_imagen.exceptions import InvalidInputError

    schnell = "@cf/black-forest-labs/flux-1-schnell"
    out = f"{tmp_path}/out/"
    first = run(dataset(items=rows(2), output_path=out, model=schnell, model_inputs={"steps": 4}))
    sent = [r["input"] for r in imagen_emulator.stats()["recent"] if r["model"] == schnell]
    assert first["generated"] == 2 and [body["steps"] for body in sent] == [4, 4]

    assert run(dataset(items=rows(2), output_path=out, model=schnell, model_inputs={"steps": 4}))["reused"] == 2
    again = run(dataset(items=rows(2), output_path=out, model=schnell, model_inputs={"steps": 6}))
    assert again["replaced"] == 2 and imagen_emulator.generations == 4  # other inputs, other images

    with pytest.raises(InvalidInputError, match=r"model_inputs\['steps'\]: 99"):
        run(dataset(items=rows(2), output_path=out, model=schnell, model_inputs={"steps": 99}))
    assert imagen_emulator.generations == 4


def test_max_concurrency_bounds_generations_not_rows_storing_their_images(imagen_emulator, tmp_path, monkeypatch):
    """A row writing its image does not hold a generation's place: the next row is generated meanwhile."""
    from airflow_provider_imagen._task import keyed
    from airflow_provider_imagen.hooks import CloudflareWorkersAIHook

    real_write, real_generate = keyed.write_image, CloudflareWorkersAIHook.agenerate_image
    seen_while_storing: list[int] = []
    generating, most = 0, 0

    def slow_first_write(folder: str, name: str, data: bytes, *, replacing: bool) -> None:
        if name.startswith("SKU-0000."):  # hold the first row's write until the second row is generated
            seen_while_storing.append(imagen_emulator.wait_for_generations(2, timeout=20))
        real_write(folder, name, data, replacing=replacing)

    async def counted(self: CloudflareWorkersAIHook, *args: Any, **kwargs: Any) -> Any:
        nonlocal generating, most
        generating += 1
        most = max(most, generating)
        try:
            return await real_generate(self, *args, **kwargs)
        finally:
            generating -= 1

    monkeypatch.setattr(keyed, "write_image", slow_first_write)
    monkeypatch.setattr(CloudflareWorkersAIHook, "agenerate_image", counted)
    summary = run(dataset(items=rows(3), output_path=f"{tmp_path}/images/", max_concurrency=1))
    assert summary["generated"] == 3
    assert seen_while_storing == [2]  # the second row was generated while the first was being stored
    assert most == 1  # and never two generations at once
    assert [line["key"] for line in manifest(summary)] == ["SKU-0000", "SKU-0001", "SKU-0002"]  # the rows' order


def test_a_first_try_reads_no_record_a_row_and_a_retry_does(imagen_emulator, tmp_path, monkeypatch):
    """Each read is a call to the task state store: a request's first try has no earlier records to read."""
    from airflow_provider_imagen._task import keyed

    reads: list[str] = []

    class CountedStore(FakeTaskStateStore):
        def get(self, key: str, default: Any = None) -> Any:
            reads.append(key)
            return super().get(key, default)

    store, ti = CountedStore(), TaskInstance(dag_id="catalog", task_id="images")
    real_write = keyed.write_text
    calls = 0

    def dies_at_the_sixth_sidecar(folder: str, name: str, text: str) -> None:
        nonlocal calls
        calls += 1
        if calls == 6:
            raise SystemExit("worker killed")
        real_write(folder, name, text)

    op = dataset(items=rows(10), output_path=f"{tmp_path}/images/", max_concurrency=1)
    with monkeypatch.context() as patch:
        patch.setattr(keyed, "write_text", dies_at_the_sixth_sidecar)
        with pytest.raises(SystemExit):
            run(op, ti, store)
    assert [key for key in reads if "_image_" in key] == []  # the first try: the summary only
    unsealed = 10 - len(list((tmp_path / "images").glob("SKU-*.json")))  # 5, or 4 if the row in flight sealed
    reads.clear()
    ti.retry()
    summary = run(op, ti, store)
    assert summary["generated"] + summary["reused"] == 10
    assert imagen_emulator.generations == 10  # the sixth row's image, paid for before the crash, is not paid again
    assert len([key for key in reads if "_image_" in key]) == unsealed  # the rows the folder does not vouch for


def test_rows_in_flight_when_reading_the_file_fails_are_finished_and_stored_not_abandoned(
    imagen_emulator, tmp_path, monkeypatch
):
    """A generation in flight is paid for: an error reading the next rows waits for it, never closes it."""
    from airflow_provider_imagen._task import dataset as dataset_module

    real_to_row = dataset_module.to_row

    def fails_in_the_second_chunk(index: int, *args: Any) -> Any:
        if index == 6:  # the second chunk: the first chunk's generations are still running
            raise OSError("the connection to the bucket was reset")
        return real_to_row(index, *args)

    monkeypatch.setattr(dataset_module, "CHUNK_ROWS", 4)
    monkeypatch.setattr(dataset_module, "to_row", fails_in_the_second_chunk)
    imagen_emulator.configure(latency=0.5)
    out = tmp_path / "images"
    with pytest.raises(OSError, match="reset"):
        run(dataset(items=rows(10), output_path=f"{out}/", max_concurrency=2))
    assert imagen_emulator.wait_for_generations(4, timeout=10) == 4
    assert sorted(p.name for p in out.glob("SKU-*.png")) == [f"SKU-000{n}.png" for n in range(4)]  # all stored
    assert len(list(out.glob("SKU-*.json"))) == 4  # and sealed: a rerun reuses them
