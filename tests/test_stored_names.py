"""Every generated image gets its own stored object: nothing a pipeline paid for is silently overwritten."""

from __future__ import annotations

from datetime import datetime
from unittest import mock

import pytest
from airflow.sdk import DAG

from airflow_provider_imagen._task import storage
from airflow_provider_imagen.exceptions import CloudflareWorkersAIError, InvalidInputError
from airflow_provider_imagen.operators import ImagenGenerateImageOperator, ImagenGenerateImagesOperator


def ti(map_index: int = -1, run_id: str = "manual__1") -> mock.Mock:
    return mock.Mock(dag_id="names", run_id=run_id, task_id="t", map_index=map_index)


def pushed(task_instance) -> dict:
    return {c.kwargs["key"]: c.kwargs["value"] for c in task_instance.xcom_push.call_args_list}


def make(cls, **kwargs):
    with DAG(dag_id="names", schedule=None, start_date=datetime(2025, 1, 1)):
        return cls(task_id="t", **kwargs)


PROMPTS = [
    "A" * 48 + " lighthouse at dawn",  # the same first 48 characters...
    "A" * 48 + " lighthouse at dusk",  # ...differ only after them
    "日本の桜",  # no ASCII letters: both slug to "image"
    "東京の夜",
    "A red fox",  # the same prompt twice in one batch
    "A red fox",
]


def test_a_batch_keeps_one_file_per_image(imagen_emulator, tmp_path):
    task_instance = ti()
    urls = make(ImagenGenerateImagesOperator, prompts=PROMPTS, output_path=f"{tmp_path}/").execute(
        {"ti": task_instance}
    )
    stored = pushed(task_instance)["stored_uri"]
    assert len(set(stored)) == len(PROMPTS) == len(urls)
    assert len(list(tmp_path.iterdir())) == len(PROMPTS)  # "6 of 6 generated" leaves 6 files
    assert imagen_emulator.generations == len(PROMPTS)
    names = [uri.rsplit("/", 1)[1] for uri in stored]
    assert names[0].startswith("a" * 48 + "-") and names[2].startswith("image-")  # still readable


def test_mapped_tasks_writing_to_one_folder_keep_one_file_each(imagen_emulator, tmp_path):
    op = make(ImagenGenerateImageOperator, prompt="A red fox", output_path=f"{tmp_path}/")
    stored = set()
    for map_index in range(5):
        task_instance = ti(map_index)
        op.execute({"ti": task_instance})
        stored.add(pushed(task_instance)["stored_uri"])
    assert len(stored) == 5 and len(list(tmp_path.iterdir())) == 5


def test_a_retry_of_the_same_task_instance_writes_the_same_name(imagen_emulator, tmp_path):
    op = make(ImagenGenerateImageOperator, prompt="A red fox", output_path=f"{tmp_path}/")
    first, again, other_run = ti(), ti(), ti(run_id="manual__2")
    for task_instance in (first, again, other_run):
        op.execute({"ti": task_instance})
    assert pushed(first)["stored_uri"] == pushed(again)["stored_uri"]
    assert pushed(other_run)["stored_uri"] != pushed(first)["stored_uri"]
    assert len(list(tmp_path.iterdir())) == 2


def test_a_batch_needs_a_folder(imagen_emulator, tmp_path):
    with pytest.raises(InvalidInputError, match="must be a folder"):
        make(ImagenGenerateImagesOperator, prompts=["a", "b"], output_path=f"{tmp_path}/one.png").execute({"ti": ti()})
    assert imagen_emulator.api_requests == 0


def test_a_storage_error_is_that_prompts_failure_and_says_what_was_kept(imagen_emulator, tmp_path, monkeypatch):
    real_store = storage.store_image

    def store_image(**kwargs):
        if kwargs["prompt"] == "two":
            raise OSError(28, "No space left on device")
        return real_store(**kwargs)

    monkeypatch.setattr(storage, "store_image", store_image)
    task_instance = ti()
    op = make(ImagenGenerateImagesOperator, prompts=["one", "two", "three"], output_path=f"{tmp_path}/")
    with pytest.raises(CloudflareWorkersAIError, match="1 of 3 images failed") as info:
        op.execute({"ti": task_instance})
    values = pushed(task_instance)  # pushed before failing: what was kept is in XCom
    assert values["stored_uri"][0] and values["stored_uri"][2] and values["stored_uri"][1] is None
    (failure,) = values["failures"]
    assert failure["error"]["type"] == "StorageError"
    assert "No space left on device" in str(info.value) and "the image is still at http" in str(info.value)
    assert len(list(tmp_path.iterdir())) == 2
