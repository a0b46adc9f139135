"""
A stored image is reused, not paid for again: a file ``output_path`` of the single-image operator and ``@task.imagen``,
and a batch's keyed items, follow the dataset's rule. Every test counts generations at the emulator.
"""

from __future__ import annotations

import itertools
import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pytest
from airflow.sdk import DAG, task

from airflow_provider_imagen.exceptions import InvalidInputError
from airflow_provider_imagen.operators import (
    ImagenDatasetOperator,
    ImagenGenerateImageOperator,
    ImagenGenerateImagesOperator,
)
from tests.conftest import task_deferred_class
from tests.test_durable import FakeTaskStateStore, TaskInstance, run_trigger

if TYPE_CHECKING:
    from pathlib import Path

try:  # the S3 fixtures need moto[server] and s3fs (the dev extra)
    from tests.test_s3_storage import bucket, s3_endpoint  # noqa: F401 - fixtures

    HAS_S3 = True
except pytest.skip.Exception:
    HAS_S3 = False

RUNS = itertools.count(1)


def single(**kwargs: Any) -> ImagenGenerateImageOperator:
    with DAG(dag_id="reuse", schedule=None, start_date=datetime(2025, 1, 1)):
        return ImagenGenerateImageOperator(task_id="gen", retries=3, **kwargs)


def new_run(task_id: str = "gen") -> dict[str, Any]:
    """The context of a new DAG run's first try (a rerun, not a retry), with its own task state store."""
    ti = TaskInstance(dag_id="reuse", task_id=task_id, run_id=f"manual__{next(RUNS)}")
    return {"ti": ti, "task_state_store": FakeTaskStateStore(), "params": {}}


def sidecars(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.json"))


# --- The single-image operator, a file output_path -----------------------------------------------------------


def test_a_second_run_with_the_same_inputs_pays_nothing_and_returns_the_same_uri(imagen_emulator, tmp_path, capsys):
    path = tmp_path / "out" / "SKU-0001.png"
    first = new_run()
    uri = single(prompt="A blue mug", aspect_ratio="4:3", output_path=str(path)).execute(first)
    assert imagen_emulator.generations == 1 and uri == f"file://{path}"
    assert first["ti"].pushed["image"]["status"] == "generated"
    written = path.stat().st_mtime_ns
    assert len(sidecars(path.parent)) == 1  # what made it: SKU-0001.<marker>.<model>.<w>x<h>.json

    again = new_run()
    capsys.readouterr()
    assert single(prompt="A blue mug", aspect_ratio="4:3", output_path=str(path)).execute(again) == uri
    assert imagen_emulator.generations == 1 and imagen_emulator.api_requests == 1  # no request at all
    summary = again["ti"].pushed["image"]
    assert summary["reused"] is True and summary["reused_from"] == "stored_file" and summary["status"] == "reused"
    assert summary["stored_uri"] == uri == again["ti"].pushed["stored_uri"]
    assert (summary["width"], summary["height"]) == (1280, 896) and summary["model"] == "google/imagen-4"
    assert f"Reused {uri}: it was made from the same inputs" in capsys.readouterr().out
    assert path.stat().st_mtime_ns == written  # not rewritten


@pytest.mark.parametrize("form", ["path", "file_uri", "object_storage_path"])
def test_every_form_of_a_local_file_is_reused(imagen_emulator, tmp_path, form):
    from airflow.sdk import ObjectStoragePath

    path = tmp_path / "SKU-0001.png"
    target = {
        "path": str(path),
        "file_uri": f"file://{path}",
        "object_storage_path": ObjectStoragePath(f"file://{path}"),
    }
    for _ in range(2):
        assert single(prompt="A blue mug", output_path=target[form]).execute(new_run()) == f"file://{path}"
    assert imagen_emulator.generations == 1


@pytest.mark.parametrize(
    "changed",
    [{"prompt": "A red mug"}, {"aspect_ratio": "1:1"}, {"fallback_models": ["@cf/black-forest-labs/flux-1-schnell"]}],
)
def test_changed_inputs_pay_once_and_replace_the_file(imagen_emulator, tmp_path, capsys, changed):
    path = tmp_path / "SKU-0001.png"
    inputs = {"prompt": "A blue mug", "aspect_ratio": "4:3", "output_path": str(path)}
    single(**inputs).execute(new_run())
    before = path.read_bytes()

    context = new_run()
    capsys.readouterr()
    single(**{**inputs, **changed}).execute(context)
    assert imagen_emulator.generations == 2
    assert context["ti"].pushed["image"]["status"] == "replaced" and context["ti"].pushed["image"]["reused"] is False
    assert f"Replacing file://{path}: it was made from other inputs" in capsys.readouterr().out
    if "fallback_models" not in changed:  # the same model and size answer the same image for the same prompt
        assert path.read_bytes() != before
    assert len(sidecars(tmp_path)) == 1  # the old record is gone with the old image

    single(**{**inputs, **changed}).execute(new_run())  # and the new image is what the next run reuses
    assert imagen_emulator.generations == 2


def test_regenerate_pays_for_a_new_image_even_with_the_same_inputs(imagen_emulator, tmp_path):
    path = tmp_path / "cover.png"
    single(prompt="A lighthouse", output_path=str(path)).execute(new_run())
    context = new_run()
    single(prompt="A lighthouse", output_path=str(path), regenerate=True).execute(context)
    assert imagen_emulator.generations == 2 and context["ti"].pushed["image"]["status"] == "replaced"
    assert len(sidecars(tmp_path)) == 1


def test_a_file_the_provider_did_not_make_is_refused_before_any_request(imagen_emulator, tmp_path):
    path = tmp_path / "SKU-0001.png"
    path.write_bytes(b"the user's own photo")
    with pytest.raises(InvalidInputError) as refused:
        single(prompt="A blue mug", output_path=str(path)).execute(new_run())
    assert f"output_path file://{path}: a file is already there" in str(refused.value)
    assert "regenerate=True" in str(refused.value)
    assert imagen_emulator.api_requests == 0 and path.read_bytes() == b"the user's own photo"

    context = new_run()
    single(prompt="A blue mug", output_path=str(path), regenerate=True).execute(context)
    assert imagen_emulator.generations == 1 and path.read_bytes()[:4] == b"\x89PNG"
    single(prompt="A blue mug", output_path=str(path)).execute(new_run())  # now it is the provider's: reused
    assert imagen_emulator.generations == 1


def test_a_file_changed_since_the_provider_made_it_is_not_overwritten(imagen_emulator, tmp_path):
    path = tmp_path / "SKU-0001.png"
    single(prompt="A blue mug", output_path=str(path)).execute(new_run())
    path.write_bytes(b"retouched by hand")  # its sidecar no longer vouches for it: another size
    with pytest.raises(InvalidInputError, match="regenerate=True"):
        single(prompt="A blue mug", output_path=str(path)).execute(new_run())
    with pytest.raises(InvalidInputError, match="regenerate=True"):
        single(prompt="Another mug", output_path=str(path)).execute(new_run())
    assert imagen_emulator.api_requests == 1 and path.read_bytes() == b"retouched by hand"


def test_a_retry_after_a_crash_between_the_image_and_its_record_pays_nothing(imagen_emulator, tmp_path, monkeypatch):
    from airflow_provider_imagen._task.stored_file import StoredFile

    path = tmp_path / "SKU-0001.png"
    single(prompt="An old mug", output_path=str(path)).execute(new_run())  # a file the next run replaces
    seal = StoredFile.seal

    def crash(self: StoredFile, outcome: Any) -> Any:
        raise OSError("the worker died")

    monkeypatch.setattr(StoredFile, "seal", crash)
    context = new_run()
    op = single(prompt="A blue mug", output_path=str(path))
    with pytest.raises(OSError, match="the worker died"):
        op.execute(context)
    assert imagen_emulator.generations == 2 and sidecars(tmp_path) == []  # the new image, and no record of it

    monkeypatch.setattr(StoredFile, "seal", seal)
    context["ti"].retry()  # the durable records say this request stored it there: its own file, not a stranger's
    assert op.execute(context) == f"file://{path}"
    assert imagen_emulator.generations == 2 and context["ti"].pushed["image"]["reused_from"] == "earlier_try"
    assert len(sidecars(tmp_path)) == 1
    single(prompt="A blue mug", output_path=str(path)).execute(new_run())
    assert imagen_emulator.generations == 2


def test_the_deferrable_operator_reuses_without_deferring(imagen_emulator, tmp_path):
    path = tmp_path / "SKU-0001.png"
    context = new_run()
    op = single(prompt="A blue mug", output_path=str(path), deferrable=True)
    with pytest.raises(task_deferred_class()) as deferred:
        op.execute(context)
    uri = op.execute_complete(context, run_trigger(deferred.value.trigger))
    assert imagen_emulator.generations == 1 and len(sidecars(tmp_path)) == 1  # sealed on resuming

    again = new_run()
    assert single(prompt="A blue mug", output_path=str(path), deferrable=True).execute(again) == uri  # no deferral
    assert imagen_emulator.api_requests == 1 and again["ti"].pushed["image"]["reused_from"] == "stored_file"


def test_a_foreign_file_is_refused_before_deferring(imagen_emulator, tmp_path):
    path = tmp_path / "SKU-0001.png"
    path.write_bytes(b"mine")
    with pytest.raises(InvalidInputError, match="regenerate=True"):
        single(prompt="A blue mug", output_path=str(path), deferrable=True).execute(new_run())
    assert imagen_emulator.api_requests == 0


def test_task_imagen_reuses_the_stored_file(imagen_emulator, tmp_path):
    calls: list[str] = []
    with DAG(dag_id="reuse", schedule=None, start_date=datetime(2025, 1, 1)):

        @task.imagen(output_path=f"{tmp_path}/{{{{ params.sku }}}}.png")
        def photo(product: str) -> dict[str, str]:
            calls.append(product)
            return {"prompt": f"A studio photo of {product}", "aspect_ratio": "1:1"}

        op = photo("a blue mug").operator
    for _ in range(2):
        context = new_run(op.task_id)
        op.render_template_fields({"params": {"sku": "SKU-0001"}})
        assert op.execute(context) == f"file://{tmp_path}/SKU-0001.png"
    assert calls == ["a blue mug", "a blue mug"] and imagen_emulator.generations == 1
    assert context["ti"].pushed["image"]["reused_from"] == "stored_file"

    with DAG(dag_id="reuse", schedule=None, start_date=datetime(2025, 1, 1)):

        @task.imagen(output_path=f"{tmp_path}/SKU-0001.png", regenerate=True)
        def again() -> str:
            return "A studio photo of a blue mug"

        forced = again().operator
    forced.execute(new_run(forced.task_id))
    assert imagen_emulator.generations == 2


def test_a_single_image_and_a_dataset_item_follow_one_rule(imagen_emulator, tmp_path):
    single(prompt="A blue mug", output_path=f"{tmp_path}/SKU-0001.png").execute(new_run())
    with DAG(dag_id="reuse", schedule=None, start_date=datetime(2025, 1, 1)):
        dataset = ImagenDatasetOperator(
            task_id="images", items=[{"key": "SKU-0001", "prompt": "A blue mug"}], output_path=f"{tmp_path}/"
        )
    assert dataset.execute(new_run("images"))["reused"] == 1
    assert imagen_emulator.generations == 1


def test_regenerate_must_be_a_bool():
    with pytest.raises(InvalidInputError, match="Invalid regenerate: must be True or False"):
        single(prompt="A blue mug", regenerate="yes")


@pytest.mark.skipif(not HAS_S3, reason="needs moto[server] and s3fs (the dev extra)")
def test_an_s3_file_is_reused_and_a_foreign_object_refused(imagen_emulator, bucket):
    target = f"{bucket.uri}/images/SKU-0001.png"
    assert single(prompt="A blue mug", output_path=target).execute(new_run()) == target
    context = new_run()
    assert single(prompt="A blue mug", output_path=target).execute(context) == target
    assert imagen_emulator.generations == 1 and context["ti"].pushed["image"]["reused_from"] == "stored_file"
    assert [key for key in bucket.objects() if key.endswith(".json")] != []

    foreign = f"{bucket.uri}/images/SKU-0002.png"
    from airflow.sdk import ObjectStoragePath

    ObjectStoragePath(foreign).write_bytes(b"uploaded by someone")
    with pytest.raises(InvalidInputError, match="regenerate=True"):
        single(prompt="A blue mug", output_path=foreign).execute(new_run())
    assert imagen_emulator.api_requests == 1 and bucket.objects()["images/SKU-0002.png"] == b"uploaded by someone"


def test_the_sidecar_is_readable(imagen_emulator, tmp_path):
    single(prompt="A blue mug", output_path=f"{tmp_path}/SKU-0001.png").execute(new_run())
    (sidecar,) = sidecars(tmp_path)
    record = json.loads((tmp_path / sidecar).read_text())
    assert record["image"] == "SKU-0001.png" and record["prompt"] == "A blue mug"
    assert record["model"] == "google/imagen-4" and record["bytes"] == (tmp_path / "SKU-0001.png").stat().st_size


# --- The batch operator, keyed items -----------------------------------------------------------------------


def batch(**kwargs: Any) -> ImagenGenerateImagesOperator:
    with DAG(dag_id="reuse", schedule=None, start_date=datetime(2025, 1, 1)):
        return ImagenGenerateImagesOperator(task_id="gen", retries=3, **kwargs)


ITEMS = [
    {"key": "SKU-0001", "prompt": "A blue mug"},
    {"key": "SKU-0002", "prompt": "A brass lamp", "aspect_ratio": "9:16"},
    {"key": "SKU-0003", "prompt": "A wool scarf", "person_generation": "dont_allow", "colour": "red"},
]


def test_a_keyed_batch_stores_each_key_and_a_rerun_pays_nothing(imagen_emulator, tmp_path):
    out = tmp_path / "out"
    context = new_run()
    returned = batch(items=ITEMS, output_path=f"{out}/", max_concurrency=2).execute(context)
    assert returned == {item["key"]: f"file://{out}/{item['key']}.png" for item in ITEMS}
    assert sorted(p.name for p in out.glob("*.png")) == ["SKU-0001.png", "SKU-0002.png", "SKU-0003.png"]
    assert imagen_emulator.generations == 3
    pushed = context["ti"].pushed
    assert pushed["stored_uri"] == returned and pushed["failures"] == []
    lamp = pushed["images"]["SKU-0002"]
    assert lamp["status"] == "generated" and lamp["key"] == "SKU-0002" and lamp["height"] > lamp["width"]

    # The same items from a file: the same inputs, so nothing is generated (one listing of the folder).
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(item) + "\n" for item in ITEMS))
    again = new_run()
    assert batch(items=str(items), output_path=f"{out}/").execute(again) == returned
    assert imagen_emulator.generations == 3 and imagen_emulator.api_requests == 3
    summaries = again["ti"].pushed["images"]
    assert {s["status"] for s in summaries.values()} == {"reused"} and summaries["SKU-0002"]["height"] == 1408
    assert again["ti"].pushed["billing"]["generated"] == 0

    changed = [{**ITEMS[0], "prompt": "A green mug"}, *ITEMS[1:]]
    third = new_run()
    batch(items=changed, output_path=f"{out}/").execute(third)
    assert imagen_emulator.generations == 4
    assert [s["status"] for s in third["ti"].pushed["images"].values()] == ["replaced", "reused", "reused"]


def test_bad_keyed_items_are_refused_before_any_request(imagen_emulator, tmp_path):
    items = [{"key": "ok", "prompt": "fine"}, {"prompt": "no key"}, {"key": "../up", "prompt": "x"}, {"key": "ok"}]
    with pytest.raises(InvalidInputError) as refused:
        batch(items=items, output_path=f"{tmp_path}/out/").execute(new_run())
    message = str(refused.value)
    assert "3 of 4 rows refused before any request" in message and "line 2: key: missing" in message
    assert "line 3: key: '../up' is not a safe file name" in message
    assert "line 4: key: 'ok' appears more than once" in message
    assert imagen_emulator.api_requests == 0 and not (tmp_path / "out").exists()
    with pytest.raises(InvalidInputError, match="holds no item"):
        batch(items=[], output_path=f"{tmp_path}/out/").execute(new_run())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "give exactly one, prompts= .* got neither"),
        ({"prompts": ["a"], "items": ITEMS, "output_path": "/tmp/out/"}, "got both"),
        ({"items": ITEMS}, "items= stores each image at <output_path>/<key>.<ext>"),
    ],
)
def test_a_batch_takes_prompts_or_items_not_both(kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        batch(**kwargs)


def test_keyed_items_need_a_folder(imagen_emulator, tmp_path):
    with pytest.raises(InvalidInputError, match="must be a folder"):
        batch(items=ITEMS, output_path=f"{tmp_path}/one.png").execute(new_run())
    assert imagen_emulator.api_requests == 0


def test_max_images_counts_only_what_a_keyed_batch_must_generate(imagen_emulator, tmp_path):
    from airflow_provider_imagen.exceptions import SpendLimitError

    batch(items=ITEMS[:2], output_path=f"{tmp_path}/").execute(new_run())
    batch(items=ITEMS, output_path=f"{tmp_path}/", max_images=1).execute(new_run())  # two reused, one new
    assert imagen_emulator.generations == 3
    more = [*ITEMS, {"key": "SKU-0004", "prompt": "A desk"}, {"key": "SKU-0005", "prompt": "A chair"}]
    with pytest.raises(SpendLimitError, match="max_images=1"):
        batch(items=more, output_path=f"{tmp_path}/", max_images=1).execute(new_run())
    assert imagen_emulator.generations == 3
