"""Every example DAG imports cleanly and runs end to end against the emulator over real HTTP."""

from __future__ import annotations

import struct

import httpx
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.e2e

# dag_id -> (prompt, aspect ratio it asks for or None for the model's default 1:1)
SINGLE_IMAGE_DAGS = {
    "imagen_quickstart": ("A golden retriever puppy playing in autumn leaves", None),
    "imagen_landscape": (
        "A dramatic drone shot of a winding river through an autumn forest, warm golden and red tones",
        "16:9",
    ),
    "imagen_art_deco_portrait": ("An elegant Art Deco poster featuring a jazz singer under a spotlight", "9:16"),
    "imagen_chef": ("A chef preparing sushi in a traditional Japanese kitchen, detailed close-up", None),
    "imagen_product_photo": (
        "A sleek wireless headphone on a minimalist white marble surface with soft studio lighting",
        "1:1",
    ),
}
SIZES = {None: (1024, 1024), "1:1": (1024, 1024), "16:9": (1408, 768), "9:16": (768, 1408), "4:3": (1280, 896)}


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 3.1
        from airflow.models.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_every_dag_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    others = {
        "imagen_mapped",
        "imagen_deferrable_mapped",
        "imagen_persist_asset",
        "imagen_persist_asset_consumer",
        "imagen_batch",
        "imagen_taskflow",
        "imagen_fallback",
        "imagen_human_review",  # waits for a person: run end to end in tests/e2e/test_human_review.py
        "imagen_catalog",  # run twice in tests/test_dataset.py: the second run bills nothing
    }
    assert set(SINGLE_IMAGE_DAGS) | others == set(dagbag.dag_ids)


def _xcom(dag_run, task_id, key="return_value", map_index=-1):
    ti = dag_run.get_task_instance(task_id, map_index=map_index)
    assert ti is not None, f"no task instance {task_id}[{map_index}]"
    value = ti.xcom_pull(task_ids=task_id, key=key, map_indexes=map_index)
    assert value is not None, f"no XCom {key!r} for {task_id}[{map_index}]"
    return value


@pytest.mark.parametrize("dag_id", sorted(SINGLE_IMAGE_DAGS))
def test_example_dag_generates_a_downloadable_png_of_the_right_size(dag_id, dagbag, imagen_emulator):
    prompt, ratio = SINGLE_IMAGE_DAGS[dag_id]
    dag_run = dagbag.get_dag(dag_id).test()

    assert dag_run.state == "success"
    url = _xcom(dag_run, "generate_image")
    assert url.startswith(imagen_emulator.url + "/images/")
    image = httpx.get(url)
    assert image.status_code == 200
    assert png_size(image.content) == SIZES[ratio]

    summary = _xcom(dag_run, "generate_image", key="image")
    assert summary["prompt"] == prompt
    assert summary["aspect_ratio"] == ratio
    assert summary["url"] == url
    # What crossed the wire is exactly the product page's request.
    sent = imagen_emulator.stats()["recent"][-1]
    assert sent["model"] == "google/imagen-4"
    assert sent["input"]["prompt"] == prompt


def test_mapped_dag_generates_one_image_per_prompt_and_collects_them_in_order(dagbag, imagen_emulator):
    from dags.imagen_mapped import PROMPTS

    dag_run = dagbag.get_dag("imagen_mapped").test()

    assert dag_run.state == "success"
    collected = _xcom(dag_run, "collect")
    assert list(collected) == PROMPTS
    assert len(set(collected.values())) == len(PROMPTS)
    for index, prompt in enumerate(PROMPTS):
        url = _xcom(dag_run, "generate_image", map_index=index)
        assert collected[prompt] == url
        assert png_size(httpx.get(url).content) == SIZES["4:3"]
    assert imagen_emulator.api_requests == len(PROMPTS)


def test_deferrable_mapped_dag_runs_through_the_trigger_with_a_link_per_map_index(dagbag, imagen_emulator):
    from dags.imagen_deferrable_mapped import PROMPTS

    task = dagbag.get_dag("imagen_deferrable_mapped").get_task("generate_image")
    assert task.partial_kwargs["deferrable"] is True
    dag_run = dagbag.get_dag("imagen_deferrable_mapped").test()

    assert dag_run.state == "success"
    urls = []
    for index, prompt in enumerate(PROMPTS):
        url = _xcom(dag_run, "generate_image", map_index=index)
        assert _xcom(dag_run, "generate_image", key="image", map_index=index)["prompt"] == prompt
        # The "Generated image" link of each map index points at that index's own image.
        assert _xcom(dag_run, "generate_image", key="_link_GeneratedImageLink", map_index=index) == url
        assert png_size(httpx.get(url).content) == SIZES["16:9"]
        urls.append(url)
    assert len(set(urls)) == len(PROMPTS)
    assert imagen_emulator.api_requests == len(PROMPTS)


def test_persist_dag_stores_the_image_and_feeds_the_consumer_through_the_asset(
    dagbag, imagen_emulator, tmp_path, monkeypatch
):
    monkeypatch.setenv("AIRFLOW_VAR_IMAGEN_OUTPUT_DIR", str(tmp_path))
    producer = dagbag.get_dag("imagen_persist_asset").test()
    assert producer.state == "success"

    stored = _xcom(producer, "generate_and_store", key="stored_uri")
    assert stored.startswith(f"file://{tmp_path}/") and stored.endswith(".png")
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and stored.endswith(files[0])  # the image, and nothing partial beside it
    assert png_size((tmp_path / files[0]).read_bytes()) == SIZES["1:1"]

    consumer = dagbag.get_dag("imagen_persist_asset_consumer").test()
    assert consumer.state == "success"
    (checked,) = _xcom(consumer, "check_images")
    assert checked["stored_uri"] == stored and checked["png"] is True


def test_batch_dag_generates_every_prompt_in_order_into_a_folder(dagbag, imagen_emulator, tmp_path, monkeypatch):
    from dags.imagen_batch import PROMPTS

    monkeypatch.setenv("AIRFLOW_VAR_IMAGEN_OUTPUT_DIR", str(tmp_path))
    dag_run = dagbag.get_dag("imagen_batch").test()

    assert dag_run.state == "success"
    returned = _xcom(dag_run, "generate_images")
    stored = _xcom(dag_run, "generate_images", key="stored_uri")
    summaries = _xcom(dag_run, "generate_images", key="images")
    assert [s["prompt"] for s in summaries] == PROMPTS
    assert returned == stored == [s["stored_uri"] for s in summaries]  # with output_path: the stored copies
    assert all(s["url"].startswith(imagen_emulator.url) for s in summaries)
    assert len(set(stored)) == len(PROMPTS)
    for uri in stored:
        path = uri.removeprefix("file://")
        assert path.startswith(str(tmp_path / "batch"))
        with open(path, "rb") as image:
            assert png_size(image.read()) == SIZES["4:3"]
    assert imagen_emulator.api_requests == len(PROMPTS)


def test_a_successful_task_logs_no_error_and_no_avoidable_warning(dagbag, imagen_emulator, capsys, caplog):
    dag_run = dagbag.get_dag("imagen_quickstart").test()
    assert dag_run.state == "success"
    lines = (capsys.readouterr().out + caplog.text).splitlines()
    problems = [line for line in lines if "[error" in line or "[warning" in line or "ERROR" in line]
    # Airflow itself warns about the '_' in the connection type whenever it caches a connection's URI; the
    # README says so. Everything else a successful task logs is info.
    avoidable = [line for line in problems if "shall not contain '_'" not in line]
    assert avoidable == []


def test_the_asset_consumer_explains_itself_when_triggered_before_any_image(dagbag, capsys):
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:  # as on a new deployment: the producer never ran
        session.query(AssetEvent).delete()
    dag_run = dagbag.get_dag("imagen_persist_asset_consumer").test()
    assert dag_run.state == "success"
    assert "Nothing to check yet: run imagen_persist_asset first" in capsys.readouterr().out


def test_taskflow_dag_draws_what_each_function_returns(dagbag, imagen_emulator):
    from dags.imagen_taskflow import MENU

    dag_run = dagbag.get_dag("imagen_taskflow").test()

    assert dag_run.state == "success"
    hero = _xcom(dag_run, "hero_image", key="image")
    assert hero["prompt"] == "A chef preparing sushi in a traditional Japanese kitchen, detailed close-up"
    assert (hero["width"], hero["height"]) == SIZES["16:9"]
    assert _xcom(dag_run, "hero_image") == hero["url"]
    cards = [_xcom(dag_run, "menu_card", key="image", map_index=i) for i in range(len(MENU))]
    assert [c["prompt"].split(" on ")[0] for c in cards] == [f"A bowl of {dish}" for dish in MENU]
    assert {(c["width"], c["height"]) for c in cards} == {(896, 1280)}  # 3:4, from the returned dict
    assert _xcom(dag_run, "menu") == {dish: card["url"] for dish, card in zip(MENU, cards, strict=True)}
    assert imagen_emulator.api_requests == 1 + len(MENU)


@pytest.mark.parametrize("imagen_down", [False, True], ids=["imagen available", "imagen unavailable"])
def test_fallback_dag_keeps_the_image_of_whichever_model_could_make_it(
    dagbag, imagen_emulator, tmp_path, monkeypatch, fast_backoff, imagen_down
):
    monkeypatch.setenv("AIRFLOW_VAR_IMAGEN_OUTPUT_DIR", str(tmp_path))
    if imagen_down:  # every attempt the deferred task's trigger makes (1 + max_retries)
        imagen_emulator.inject("provider_unavailable", times=4, model="google/imagen-4")
    dag_run = dagbag.get_dag("imagen_fallback").test()

    assert dag_run.state == "success"
    summary = _xcom(dag_run, "generate_image", key="image")
    made_by = "@cf/black-forest-labs/flux-1-schnell" if imagen_down else "google/imagen-4"
    assert summary["model"] == made_by and _xcom(dag_run, "which_model") == made_by
    assert [s["model"] for s in summary["skipped_models"]] == (["google/imagen-4"] if imagen_down else [])
    stored = summary["stored_uri"].removeprefix("file://")
    assert stored.startswith(f"{tmp_path}/fallback/")
    with open(stored, "rb") as image:
        assert image.read(3) == (b"\xff\xd8\xff" if imagen_down else b"\x89PN")  # FLUX's JPEG, or Imagen's PNG
    assert imagen_emulator.generations == 1
