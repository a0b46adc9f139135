"""
Never pay twice: a retried task instance reuses the images its earlier tries paid for, counted at the emulator.

Tries are simulated the way Airflow runs them: the same operator, a task instance whose ``try_number`` grows
and whose ``max_tries`` stays (a retry) or moves to ``try_number + retries`` (a clear by a person), and a
context holding Airflow 3.3's task state store or, before 3.3, ``[imagen] durable_cache_path``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from unittest import mock

import pytest
from airflow.sdk import DAG

from airflow_provider_imagen._task.durable import Request
from airflow_provider_imagen.exceptions import (
    CloudflareWorkersAIError,
    GenerationOutcomeUnknownError,
    ImageDownloadError,
    SpendLimitError,
)
from airflow_provider_imagen.operators import ImagenGenerateImageOperator, ImagenGenerateImagesOperator
from tests.conftest import task_deferred_class

RETRIES = 3


class FakeTaskStateStore:
    """Airflow 3.3's ``context["task_state_store"]``: JSON values per key, for one task instance."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return json.loads(self.values[key]) if key in self.values else default

    def set(self, key: str, value: Any, *, retention: Any = None) -> None:
        assert value is not None
        self.values[key] = json.dumps(value)

    def delete(self, key: str) -> None:
        self.values.pop(key, None)

    def clear(self) -> None:
        self.values.clear()


@dataclass
class TaskInstance:
    """The parts of a running task instance the operators read, with Airflow's retry and clear arithmetic."""

    dag_id: str = "durable"
    run_id: str = "manual__2026-01-01T00:00:00+00:00"
    task_id: str = "gen"
    map_index: int = -1
    try_number: int = 1
    max_tries: int = RETRIES
    pushed: dict[str, Any] = field(default_factory=dict)

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value

    def retry(self) -> None:
        self.try_number += 1
        self.pushed = {}

    def clear(self) -> None:
        """What clearing in the UI or REST API does: ``max_tries = try_number + retries``, then the next try."""
        self.max_tries = self.try_number + RETRIES
        self.retry()


@pytest.fixture(params=["task_state_store", "durable_cache_path"])
def backend(request, tmp_path, monkeypatch):
    """Each test runs with Airflow 3.3's task state store, and with the ObjectStorage folder used before 3.3."""
    if request.param == "task_state_store":
        store = FakeTaskStateStore()
        monkeypatch.delenv("AIRFLOW__IMAGEN__DURABLE_CACHE_PATH", raising=False)
        return {"task_state_store": store}, lambda: store.values
    folder = tmp_path / "durable-cache"
    monkeypatch.setenv("AIRFLOW__IMAGEN__DURABLE_CACHE_PATH", str(folder))
    return {}, lambda: {p.name: p.read_text() for p in folder.rglob("*.json")}


@pytest.fixture
def tries(backend):
    """Run an operator as one try of a task instance: ``tries(op, ti)``; records live as long as the fixture."""
    extra, _ = backend

    def run(op, ti: TaskInstance):
        return op.execute({"ti": ti, **extra})

    return run


def single(**kwargs) -> ImagenGenerateImageOperator:
    with DAG(dag_id="durable", schedule=None, start_date=datetime(2025, 1, 1)):
        return ImagenGenerateImageOperator(task_id="gen", retries=RETRIES, **kwargs)


def batch(**kwargs) -> ImagenGenerateImagesOperator:
    with DAG(dag_id="durable", schedule=None, start_date=datetime(2025, 1, 1)):
        return ImagenGenerateImagesOperator(task_id="gen", retries=RETRIES, **kwargs)


def by_prompt(emulator) -> dict[str, int]:
    return dict(emulator.stats()["generations_by_prompt"])


# --- Retry or rerun ------------------------------------------------------------------------------------


def test_a_retry_keeps_the_request_and_a_clear_starts_a_new_one():
    ti = TaskInstance()
    first = Request.of({"ti": ti}, RETRIES)
    ti.retry()
    ti.retry()
    retried = Request.of({"ti": ti}, RETRIES)
    ti.clear()
    cleared = Request.of({"ti": ti}, RETRIES)
    assert (first.first_try, retried.first_try, cleared.first_try) == (1, 1, 4)
    assert first.cache_key("f") == retried.cache_key("f") != cleared.cache_key("f")
    assert first.cache_key("f") != first.cache_key("g") != first.cache_key("f", regeneration=1)
    assert Request.of({"ti": mock.Mock()}, RETRIES) is None  # not a real task run: nothing to key on


# --- Single operator ------------------------------------------------------------------------------------


def test_single_persist_failed_then_the_retry_stores_the_image_it_already_paid_for(
    imagen_emulator, tries, backend, tmp_path, capsys
):
    op = single(prompt="A lighthouse at dawn", output_path=f"{tmp_path}/out/")
    ti = TaskInstance()
    imagen_emulator.inject("image_not_found")  # the download to output_path fails once
    with pytest.raises(ImageDownloadError):
        tries(op, ti)
    assert imagen_emulator.generations == 1

    ti.retry()
    url = tries(op, ti)
    log = capsys.readouterr().out
    assert imagen_emulator.generations == 1  # billed exactly once across both tries
    summary = ti.pushed["image"]
    assert summary["stored_uri"] == url and summary["reused"] is True  # the stored copy is the return value
    assert summary["stored_uri"].startswith(f"file://{tmp_path}/out/") and ti.pushed["stored_uri"]
    assert summary["billing"]["generated"] == 0 and summary["billing"]["reused"] == 1
    assert "Generated 0 images, reused 1 from earlier tries (durable" in log
    _, records = backend
    # Success clears nothing itself: it is not certain until Airflow records it (Airflow's [state_store]
    # clear_on_success or retention removes the records then); a later request ignores them anyway.
    assert records()
    assert imagen_emulator.token not in log


def test_single_cleared_task_generates_again(imagen_emulator, tries, tmp_path):
    op = single(prompt="A lighthouse at dawn", output_path=f"{tmp_path}/")
    ti = TaskInstance()
    imagen_emulator.inject("image_not_found")
    with pytest.raises(ImageDownloadError):
        tries(op, ti)
    ti.clear()  # a person asks for a new image
    tries(op, ti)
    assert imagen_emulator.generations == 2
    assert ti.pushed["image"]["reused"] is False


@pytest.mark.parametrize(
    "change", [{"prompt": "A lighthouse at dusk"}, {"aspect_ratio": "16:9"}, {"person_generation": "dont_allow"}]
)
def test_single_changed_input_generates_again(imagen_emulator, tries, tmp_path, change):
    op = single(prompt="A lighthouse at dawn", output_path=f"{tmp_path}/")
    ti = TaskInstance()
    imagen_emulator.inject("image_not_found")
    with pytest.raises(ImageDownloadError):
        tries(op, ti)
    for name, value in change.items():
        setattr(op, name, value)  # a re-rendered template or an edited DAG
    ti.retry()
    tries(op, ti)
    assert imagen_emulator.generations == 2
    assert ti.pushed["image"]["reused"] is False


def test_single_expired_url_generates_again_and_says_so(imagen_emulator, tries, tmp_path, capsys):
    op = single(prompt="A lighthouse at dawn", output_path=f"{tmp_path}/")
    ti = TaskInstance()
    imagen_emulator.inject("image_not_found", times=2)  # this try's download, then the reused URL's
    with pytest.raises(ImageDownloadError):
        tries(op, ti)
    ti.retry()
    tries(op, ti)
    log = capsys.readouterr().out
    assert imagen_emulator.generations == 2
    assert "has expired (HTTP 404 from its URL): generating it again" in log
    assert ti.pushed["image"]["billing"]["generated"] == 1


def test_without_durable_a_retry_pays_again(imagen_emulator, tries, tmp_path):
    op = single(prompt="A lighthouse at dawn", output_path=f"{tmp_path}/", durable=False)
    ti = TaskInstance()
    imagen_emulator.inject("image_not_found")
    with pytest.raises(ImageDownloadError):
        tries(op, ti)
    ti.retry()
    tries(op, ti)
    assert imagen_emulator.generations == 2


def test_a_worker_killed_mid_call_costs_no_second_generation(imagen_emulator, tries):
    """The request a dead try left behind is answered from AI Gateway's cache when the next try re-sends it."""
    op = single(prompt="A lighthouse at dawn", timeout=1, max_retries=0)
    ti = TaskInstance()
    imagen_emulator.inject("slow", delay=2)  # Cloudflare finishes (and bills) after the client gave up
    with pytest.raises(GenerationOutcomeUnknownError):
        tries(op, ti)
    assert imagen_emulator.wait_for_generations(1) == 1
    ti.retry()
    url = tries(op, ti)
    stats = imagen_emulator.stats()
    assert (stats["generations"], stats["cache_hits"]) == (1, 1)
    assert url.startswith(imagen_emulator.url)
    ti.clear()  # the same inputs, asked for again by a person: a new key, a new image
    tries(op, ti)
    assert imagen_emulator.generations == 2


def test_without_a_place_to_keep_records_the_log_says_retries_pay_again(imagen_emulator, monkeypatch, capsys):
    monkeypatch.delenv("AIRFLOW__IMAGEN__DURABLE_CACHE_PATH", raising=False)
    single(prompt="A lighthouse").execute({"ti": TaskInstance()})
    assert capsys.readouterr().out.count("a retry will generate, and pay for, them again") == 1


def test_a_batch_retry_reuses_stored_copies_without_downloading_again(imagen_emulator, tries, backend, tmp_path):
    """Stored images are reused as they are; one removed since is stored again from its URL, still not generated."""
    op = batch(prompts=PROMPTS[:3], max_concurrency=1, output_path=f"{tmp_path}/out/")
    ti = TaskInstance()
    imagen_emulator.inject("content_policy")
    with pytest.raises(CloudflareWorkersAIError):
        tries(op, ti)
    stored = [s["stored_uri"] for s in ti.pushed["images"] if s]
    _, records = backend
    assert imagen_emulator.token not in json.dumps(records())  # records hold URLs and URIs, never the token
    (tmp_path / "out" / stored[0].rsplit("/", 1)[1]).unlink()  # someone removed one stored copy
    downloads = imagen_emulator.stats()["image_requests"]
    ti.retry()
    tries(op, ti)
    assert imagen_emulator.generations == 3
    assert imagen_emulator.stats()["image_requests"] == downloads + 2  # the new image and the removed copy
    assert ti.pushed["stored_uri"][1:] == stored


def test_a_failing_record_store_never_fails_the_task(imagen_emulator, capsys):
    class Broken(FakeTaskStateStore):
        def set(self, key, value, *, retention=None):
            raise RuntimeError("state store unavailable")

    url = single(prompt="A lighthouse").execute({"ti": TaskInstance(), "task_state_store": Broken()})
    assert url.startswith(imagen_emulator.url)
    assert "Could not write a durable record in the task state store" in capsys.readouterr().out


# --- Deferrable -----------------------------------------------------------------------------------------


def run_trigger(trigger) -> dict[str, Any]:
    import asyncio

    async def collect():
        return [event async for event in trigger.run()]

    (event,) = asyncio.run(collect())
    return dict(event.payload)


def test_deferrable_failure_after_resuming_costs_no_second_generation(imagen_emulator, backend, tmp_path):
    extra, records = backend
    op = single(prompt="A lighthouse at dawn", output_path=f"{tmp_path}/", deferrable=True)
    ti = TaskInstance()
    with pytest.raises(task_deferred_class()) as deferred:
        op.execute({"ti": ti, **extra})
    kwargs = deferred.value.trigger.serialize()[1]
    assert kwargs["gateway_options"]["cache_key"].startswith("airflow-imagen-")  # a re-send is a cache hit
    assert imagen_emulator.token not in json.dumps(kwargs)
    event = run_trigger(deferred.value.trigger)

    imagen_emulator.inject("image_not_found")  # storing fails after the task resumed
    with pytest.raises(ImageDownloadError):
        op.execute_complete({"ti": ti, **extra}, event)
    assert records()  # the trigger's image was recorded before storing failed

    ti.retry()
    url = op.execute({"ti": ti, **extra})  # no second deferral: the image is reused
    assert url == ti.pushed["stored_uri"] and ti.pushed["image"]["url"] == event["image"]["url"]
    assert imagen_emulator.generations == 1
    assert ti.pushed["image"]["reused"] is True


# --- Batch ----------------------------------------------------------------------------------------------

PROMPTS = [f"A lighthouse, study {n}" for n in range(10)]


def test_batch_retry_generates_only_the_prompts_that_failed(imagen_emulator, tries, tmp_path, capsys):
    op = batch(prompts=PROMPTS, max_concurrency=1, output_path=f"{tmp_path}/")
    ti = TaskInstance()
    imagen_emulator.inject("content_policy", times=3)  # the first three prompts fail
    with pytest.raises(CloudflareWorkersAIError, match="3 of 10 images failed"):
        tries(op, ti)
    assert imagen_emulator.generations == 7

    ti.retry()
    urls = tries(op, ti)
    log = capsys.readouterr().out
    assert all(urls)
    assert by_prompt(imagen_emulator) == dict.fromkeys(PROMPTS, 1)  # every image billed exactly once
    assert ti.pushed["billing"]["generated"] == 3 and ti.pushed["billing"]["reused"] == 7
    assert ti.pushed["billing"]["generated_by_all_tries"] == 10
    assert [s["reused"] for s in ti.pushed["images"]] == [False] * 3 + [True] * 7
    assert "Generated 3 images, reused 7 from earlier tries (durable" in log


def test_batch_crash_mid_batch_keeps_what_completed(imagen_emulator, tries, monkeypatch):
    """A try that dies part way (here: the 4th generation kills the worker) leaves the first three recorded."""
    from airflow_provider_imagen.hooks import CloudflareWorkersAIHook

    op = batch(prompts=PROMPTS[:6], max_concurrency=1)
    ti = TaskInstance()
    real = CloudflareWorkersAIHook.agenerate_image
    calls = 0

    async def dies_on_the_fourth(self, *args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 4:
            raise SystemExit("worker killed")
        return await real(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(CloudflareWorkersAIHook, "agenerate_image", dies_on_the_fourth)
        with pytest.raises(SystemExit):
            tries(op, ti)
    assert imagen_emulator.generations == 3
    ti.retry()
    tries(op, ti)
    assert by_prompt(imagen_emulator) == dict.fromkeys(PROMPTS[:6], 1)
    assert ti.pushed["billing"]["reused"] == 3


def test_batch_equal_prompts_are_separate_images(imagen_emulator, tries, tmp_path):
    op = batch(prompts=["twin", "twin"], output_path=f"{tmp_path}/")
    ti = TaskInstance()
    tries(op, ti)
    assert imagen_emulator.generations == 2
    assert len(set(ti.pushed["stored_uri"])) == 2


def test_batch_cleared_and_changed_inputs_generate_again(imagen_emulator, tries):
    op = batch(prompts=PROMPTS[:4], max_concurrency=1)
    ti = TaskInstance()
    imagen_emulator.inject("content_policy")
    with pytest.raises(CloudflareWorkersAIError):
        tries(op, ti)
    assert imagen_emulator.generations == 3
    op.aspect_ratio = "16:9"  # a changed input: nothing recorded fits
    ti.retry()
    imagen_emulator.inject("content_policy")
    with pytest.raises(CloudflareWorkersAIError):
        tries(op, ti)
    assert imagen_emulator.generations == 6
    ti.clear()  # a new request: the records of 16:9 are not reused either
    tries(op, ti)
    assert imagen_emulator.generations == 10


def test_batch_max_images_fails_before_exceeding_it_across_tries(imagen_emulator, tries):
    ti = TaskInstance()
    with pytest.raises(SpendLimitError, match=r"max_images=3: .* generated 0 image\(s\) .* need 5 more"):
        tries(batch(prompts=PROMPTS[:5], max_images=3), ti)
    assert imagen_emulator.api_requests == 0

    op = batch(prompts=PROMPTS[:5], max_images=5, max_concurrency=1)
    imagen_emulator.inject("content_policy", times=2)
    with pytest.raises(CloudflareWorkersAIError):
        tries(op, ti)
    op.prompts = [*PROMPTS[:4], "A new fifth prompt", "and a sixth"]  # 2 of them recorded, 4 to generate
    ti.retry()
    with pytest.raises(SpendLimitError, match=r"generated 3 image\(s\) in its tries so far and would need 4 more"):
        tries(op, ti)
    op.prompts = PROMPTS[:5]
    ti.retry()
    tries(op, ti)  # 3 generated + 2 needed = 5: within the limit
    assert imagen_emulator.generations == 5


def test_batch_max_images_is_checked_at_parse_time():
    from airflow_provider_imagen.exceptions import InvalidInputError

    with pytest.raises(InvalidInputError, match="max_images"):
        batch(prompts=["a"], max_images=0)


def test_threads_recording_generated_images_at_once_share_one_write_of_the_billed_count():
    """Each put returns once the count it added is stored; a thread whose count a later write holds writes none."""
    import threading

    from airflow_provider_imagen._task.durable import KEY_PREFIX, Ledger, Request
    from airflow_provider_imagen.models import GeneratedImage

    first_write_started, first_write_may_end = threading.Event(), threading.Event()
    summaries: list[int] = []

    class SlowStore(FakeTaskStateStore):  # a folder's records: written by several threads at once
        name = "a folder"

        def forget_earlier(self) -> None:
            pass

        def set(self, key: str, value: Any, *, retention: Any = None) -> None:
            if key == f"{KEY_PREFIX}_ledger":
                if not first_write_started.is_set():
                    first_write_started.set()
                    assert first_write_may_end.wait(20)
                summaries.append(value["billed"])
            super().set(key, value)

    store = SlowStore()
    ledger = Ledger(store, Request("dag", "run", "task", -1, 1, 1))
    image = GeneratedImage(model="google/imagen-4", prompt="p", url="https://images.example/a.png")
    threads = [
        threading.Thread(target=ledger.put, args=(f"{n:032x}", 0), kwargs={"image": image, "generated": True})
        for n in range(3)
    ]
    threads[0].start()
    assert first_write_started.wait(20)  # its count (1) taken, its write under way
    for thread in threads[1:]:
        thread.start()
    deadline = time.monotonic() + 20
    while sum(key.startswith(f"{KEY_PREFIX}_image_") for key in list(store.values)) < 3:
        assert time.monotonic() < deadline  # the other two count theirs, write their records, wait for the write
        threading.Event().wait(0.01)
    first_write_may_end.set()
    for thread in threads:
        thread.join(20)
    assert summaries == [1, 3]  # the first write, then one write for the other two
    assert ledger.billed == 3 and store.get(f"{KEY_PREFIX}_ledger")["billed"] == 3
    assert all(store.get(f"{KEY_PREFIX}_image_{n:032x}_0") for n in range(3))  # every image's own record


def test_the_task_state_store_gets_one_call_at_a_time_from_a_batchs_threads():
    """dag.test()'s in-process channel answers one call at a time, and removes itself while it does."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from airflow_provider_imagen._task.record_stores import TaskStateStore

    busy, overlaps = threading.Lock(), []

    class OneAtATime(FakeTaskStateStore):
        def set(self, key: str, value: Any, *, retention: Any = None) -> None:
            if not busy.acquire(blocking=False):
                overlaps.append(key)
                return
            try:
                threading.Event().wait(0.002)  # a call under way: another thread's would find no channel
                super().set(key, value)
            finally:
                busy.release()

    store = OneAtATime()
    records = TaskStateStore(store)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: records.set(f"key-{n}", {"n": n}), range(64)))
    assert overlaps == []
    assert all(records.get(f"key-{n}") == {"n": n} for n in range(64))


def test_durable_cache_path_when_set_wins_over_the_task_state_store(tmp_path, monkeypatch):
    """An admin who set a folder gets it on 3.3 too: it takes many records at once, the store one call at a time."""
    import logging

    from airflow_provider_imagen._task.durable import Ledger

    ti = TaskInstance()
    context = {"ti": ti, "task_state_store": FakeTaskStateStore()}
    monkeypatch.delenv("AIRFLOW__IMAGEN__DURABLE_CACHE_PATH", raising=False)
    assert Ledger.open(context, retries=1, durable=True, log=logging.getLogger()).where == "the task state store"
    monkeypatch.setenv("AIRFLOW__IMAGEN__DURABLE_CACHE_PATH", str(tmp_path / "records"))
    where = Ledger.open(context, retries=1, durable=True, log=logging.getLogger()).where
    assert where is not None and where.startswith(f"durable_cache_path file://{tmp_path}/records/durable/")


def test_a_first_try_generates_a_batchs_prompts_in_order_one_at_a_time(imagen_emulator, monkeypatch):
    """max_concurrency=1 is one prompt after the other, in order: a first try looks up no records on the way."""
    import time as clock

    from airflow_provider_imagen._task.job import ImageJob
    from airflow_provider_imagen.hooks import CloudflareWorkersAIHook

    real_reuse, real_generate = ImageJob.reuse, CloudflareWorkersAIHook.agenerate_image
    order: list[str] = []

    def slow_first_lookup(self: ImageJob, item: Any, *args: Any) -> Any:
        if item.index == 0:
            clock.sleep(0.3)  # a slow store: a lookup would let the second prompt reach the gate first
        return real_reuse(self, item, *args)

    async def noted(self: CloudflareWorkersAIHook, *args: Any, **kwargs: Any) -> Any:
        order.append(kwargs["prompt"])
        return await real_generate(self, *args, **kwargs)

    monkeypatch.setattr(ImageJob, "reuse", slow_first_lookup)
    monkeypatch.setattr(CloudflareWorkersAIHook, "agenerate_image", noted)
    batch(prompts=PROMPTS[:3], max_concurrency=1).execute(
        {"ti": TaskInstance(), "task_state_store": FakeTaskStateStore()}
    )
    assert order == PROMPTS[:3]
