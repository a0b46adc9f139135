"""
What images cost: ``estimated_cost_usd`` in every summary, the connection's ``prices`` over the published defaults,
and ``max_cost_usd``, a hard stop counted over every try. Generations are counted at the emulator.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException
from airflow.sdk import DAG

from airflow_provider_imagen._cloudflare.catalog import TEXT_TO_IMAGE_MODELS
from airflow_provider_imagen.exceptions import ConnectionConfigError, InvalidInputError, SpendLimitError
from airflow_provider_imagen.operators import (
    ImagenDatasetOperator,
    ImagenGenerateImageOperator,
    ImagenGenerateImagesOperator,
)
from tests.conftest import task_deferred_class
from tests.test_durable import FakeTaskStateStore, TaskInstance, run_trigger

IMAGEN = "google/imagen-4"
FLUX = "@cf/black-forest-labs/flux-1-schnell"
FLUX_DEFAULT = 0.0006336  # the catalog's default: 4 tiles and 4 steps at Cloudflare's published unit prices
PROMPTS = [f"A watercolour of lighthouse number {n}" for n in range(5)]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def prices(imagen_emulator, monkeypatch):
    """Give the default connection a ``prices`` extra: ``prices({...})``."""

    def set_prices(value: Any) -> None:
        conn = json.loads(imagen_emulator.server.connection_json())
        conn["extra"]["prices"] = value
        monkeypatch.setenv("AIRFLOW_CONN_CLOUDFLARE_WORKERS_AI_DEFAULT", json.dumps(conn))

    return set_prices


def operator(cls: type, **kwargs: Any) -> Any:
    with DAG(dag_id="cost", schedule=None, start_date=datetime(2025, 1, 1)):
        return cls(task_id="gen", retries=3, **kwargs)


def run(op: Any, ti: TaskInstance, store: FakeTaskStateStore) -> Any:
    """Run one try of ``op`` for ``ti``, its durable records in ``store``."""
    return op.execute({"ti": ti, "task_state_store": store})


def manifest(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(summary["manifest"][len("file://") :]).read_text().splitlines()]


# --- What each image cost -------------------------------------------------------------------------------


def test_a_single_image_costs_its_connection_price_and_nothing_when_a_retry_reuses_it(imagen_emulator, prices):
    prices({IMAGEN: 0.04})
    ti, store = TaskInstance(), FakeTaskStateStore()
    op = operator(ImagenGenerateImageOperator, prompt=PROMPTS[0])
    run(op, ti, store)
    image = ti.pushed["image"]
    assert image["estimated_cost_usd"] == 0.04 and image["reused"] is False
    assert image["billing"]["estimated_cost_usd"] == 0.04
    assert image["billing"]["estimated_cost_usd_by_all_tries"] == 0.04

    ti.retry()  # the same request: the image is reused, not paid for again
    run(op, ti, store)
    image = ti.pushed["image"]
    assert image["reused"] is True and image["estimated_cost_usd"] == 0
    assert image["billing"]["estimated_cost_usd"] == 0  # this try paid nothing...
    assert image["billing"]["estimated_cost_usd_by_all_tries"] == 0.04  # ...all tries, the one image
    assert imagen_emulator.generations == 1


def test_a_model_without_a_published_price_has_no_estimate_never_zero(imagen_emulator):
    ti = TaskInstance()
    run(operator(ImagenGenerateImageOperator, prompt=PROMPTS[0]), ti, FakeTaskStateStore())
    assert ti.pushed["image"]["estimated_cost_usd"] is None
    assert ti.pushed["image"]["billing"]["estimated_cost_usd"] is None
    assert TEXT_TO_IMAGE_MODELS[IMAGEN].price is None


def test_a_batch_at_the_default_price_carries_each_images_cost_and_the_total(imagen_emulator, tmp_path):
    ti = TaskInstance()
    op = operator(ImagenGenerateImagesOperator, prompts=PROMPTS[:3], model=FLUX, output_path=f"{tmp_path}/out/")
    run(op, ti, FakeTaskStateStore())
    assert [image["estimated_cost_usd"] for image in ti.pushed["images"]] == [FLUX_DEFAULT] * 3
    assert ti.pushed["estimated_cost_usd"] == pytest.approx(3 * FLUX_DEFAULT)
    assert ti.pushed["billing"]["estimated_cost_usd"] == ti.pushed["estimated_cost_usd"]


def test_a_fallback_models_image_costs_that_models_price(imagen_emulator, prices, tmp_path):
    prices({IMAGEN: 0.04, FLUX: 0.003})
    imagen_emulator.inject("unified_billing_unavailable", model=IMAGEN)
    ti = TaskInstance()
    op = operator(
        ImagenGenerateImagesOperator,
        prompts=PROMPTS[:2],
        fallback_models=[FLUX],
        max_concurrency=1,
        output_path=f"{tmp_path}/out/",
    )
    run(op, ti, FakeTaskStateStore())
    # Imagen refused the first; the second passed it over, as found unavailable: FLUX made both, at its price.
    made = [(image["model"], image["estimated_cost_usd"]) for image in ti.pushed["images"]]
    assert made == [(FLUX, 0.003), (FLUX, 0.003)]
    assert ti.pushed["estimated_cost_usd"] == 0.006


def test_a_datasets_manifest_lines_and_summary_carry_the_cost_and_a_rerun_costs_nothing(
    imagen_emulator, prices, tmp_path
):
    prices(json.dumps({IMAGEN: 0.04}))  # as the connection form saves it: JSON text
    rows = [{"key": f"SKU-{n}", "prompt": prompt} for n, prompt in enumerate(PROMPTS[:3])]
    out = f"{tmp_path}/out/"
    summary = run(operator(ImagenDatasetOperator, items=rows, output_path=out), TaskInstance(), FakeTaskStateStore())
    assert summary["generated"] == 3 and summary["estimated_cost_usd"] == pytest.approx(0.12)
    assert [line["estimated_cost_usd"] for line in manifest(summary)] == [0.04] * 3

    rows.append({"key": "SKU-new", "prompt": "A new product"})
    again = TaskInstance(run_id="manual__2026-01-02T00:00:00+00:00")
    summary = run(operator(ImagenDatasetOperator, items=rows, output_path=out), again, FakeTaskStateStore())
    assert summary["reused"] == 3 and summary["estimated_cost_usd"] == 0.04
    costs = {line["key"]: line["estimated_cost_usd"] for line in manifest(summary)}
    assert costs == {"SKU-0": 0, "SKU-1": 0, "SKU-2": 0, "SKU-new": 0.04}
    assert imagen_emulator.generations == 4


# --- max_cost_usd -------------------------------------------------------------------------------------


def test_max_cost_usd_refuses_a_batch_whose_known_need_exceeds_it_before_any_request(imagen_emulator, prices):
    prices({IMAGEN: 0.04})
    op = operator(ImagenGenerateImagesOperator, prompts=PROMPTS, max_cost_usd=0.1)
    with pytest.raises(SpendLimitError) as refused:
        run(op, TaskInstance(), FakeTaskStateStore())
    assert isinstance(refused.value, AirflowFailException)  # fails at once: a retry would be refused the same
    message = str(refused.value)
    assert "max_cost_usd=0.1" in message and "spent an estimated $0.0" in message
    assert "5 more image(s) at $0.04 each would need $0.2" in message
    assert imagen_emulator.api_requests == 0


def test_a_keyed_batch_carries_each_images_cost_and_max_cost_usd_refuses_it_before_any_request(
    imagen_emulator, prices, tmp_path
):
    prices({IMAGEN: 0.04})
    items = [{"key": f"SKU-{n}", "prompt": prompt} for n, prompt in enumerate(PROMPTS)]
    over = operator(ImagenGenerateImagesOperator, items=items, output_path=f"{tmp_path}/", max_cost_usd=0.1)
    with pytest.raises(SpendLimitError, match=r"5 more image\(s\) at \$0.04 each would need \$0.2"):
        run(over, TaskInstance(), FakeTaskStateStore())
    assert imagen_emulator.api_requests == 0

    ti = TaskInstance()
    within = operator(ImagenGenerateImagesOperator, items=items[:2], output_path=f"{tmp_path}/", max_cost_usd=0.1)
    run(within, ti, FakeTaskStateStore())
    images = ti.pushed["images"]
    assert [images[key]["estimated_cost_usd"] for key in ("SKU-0", "SKU-1")] == [0.04, 0.04]
    assert ti.pushed["estimated_cost_usd"] == pytest.approx(0.08) and imagen_emulator.generations == 2


def test_max_cost_usd_stops_mid_run_without_overshooting_and_counts_every_try(imagen_emulator, prices, tmp_path):
    # The known need fits (4 images at Imagen's $0.01), but Imagen is unavailable and each image is made by the
    # $0.05 fallback: each generation in flight holds $0.05, so however many run at once, two fit in $0.10.
    prices({IMAGEN: 0.01, FLUX: 0.05})
    imagen_emulator.inject("unified_billing_unavailable", model=IMAGEN, times=4)
    ti, store = TaskInstance(), FakeTaskStateStore()
    op = operator(
        ImagenGenerateImagesOperator,
        prompts=PROMPTS[:4],
        fallback_models=[FLUX],
        max_concurrency=4,
        max_cost_usd=0.1,
        output_path=f"{tmp_path}/out/",
    )
    with pytest.raises(SpendLimitError, match=r"max_cost_usd=0\.1: .* at up to \$0\.05 each"):
        run(op, ti, store)
    by_model = imagen_emulator.stats()["generations_by_model"]
    assert by_model == {FLUX: 2} and imagen_emulator.generations == 2  # $0.10: the limit, not a cent over

    ti.retry()  # the next try knows what the earlier one spent: the two left would take it over
    requests = imagen_emulator.api_requests
    with pytest.raises(SpendLimitError, match=r"spent an estimated \$0\.1; 2 more image\(s\) at \$0\.01"):
        run(op, ti, store)
    assert imagen_emulator.api_requests == requests and imagen_emulator.generations == 2


def test_max_cost_usd_with_a_model_that_has_no_price_is_refused_before_any_request(imagen_emulator, prices):
    prices({"google/nano-banana": 0.039})  # Imagen 4 has no published price, and the connection gives it none
    op = operator(
        ImagenGenerateImageOperator, prompt=PROMPTS[0], fallback_models=["google/nano-banana"], max_cost_usd=5
    )
    with pytest.raises(SpendLimitError, match=r"no price is known for 'google/imagen-4'.*\"prices\" extra"):
        run(op, TaskInstance(), FakeTaskStateStore())
    assert imagen_emulator.api_requests == 0


def test_a_deferred_image_over_max_cost_usd_is_refused_before_deferring_and_one_within_it_is_priced(
    imagen_emulator, prices
):
    prices({IMAGEN: 0.04})
    op = operator(ImagenGenerateImageOperator, prompt=PROMPTS[0], deferrable=True, max_cost_usd=0.03)
    with pytest.raises(SpendLimitError, match=r"max_cost_usd=0\.03"):
        run(op, TaskInstance(), FakeTaskStateStore())
    assert imagen_emulator.api_requests == 0

    op.max_cost_usd = 0.04  # it fits: deferred, generated in the triggerer, its cost recorded on resuming
    ti, store = TaskInstance(), FakeTaskStateStore()
    with pytest.raises(task_deferred_class()) as deferred:
        run(op, ti, store)
    op.execute_complete({"ti": ti, "task_state_store": store}, run_trigger(deferred.value.trigger))
    assert ti.pushed["image"]["estimated_cost_usd"] == 0.04
    assert ti.pushed["image"]["billing"]["estimated_cost_usd_by_all_tries"] == 0.04


@pytest.mark.parametrize("limit", [0, -1, math.nan, math.inf, True, "1"])
def test_max_cost_usd_must_be_a_positive_number_of_dollars(limit):
    with pytest.raises(InvalidInputError, match="Invalid max_cost_usd: must be a number of US dollars above 0"):
        operator(ImagenGenerateImagesOperator, prompts=["a"], max_cost_usd=limit)


# --- The prices extra, untrusted ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ('{"google/imagen-4": 0.04', "must be a JSON object of model id to USD per image"),
        ([0.04], "must be a JSON object of model id to USD per image"),
        ({"../../accounts": 0.04}, "key '../../accounts': Invalid model id"),
        ({IMAGEN: -0.01}, "'google/imagen-4': the price must be from 0 to 100"),
        ({IMAGEN: 1e9}, "the price must be from 0 to 100"),
        ({IMAGEN: "0.04"}, "the price must be a number of US dollars per image, got '0.04'"),
        ({IMAGEN: True}, "the price must be a number"),
        ('{"google/imagen-4": NaN}', "the price must be a number"),
        ({IMAGEN: None}, "the price must be a number"),
    ],
)
def test_a_bad_prices_extra_is_refused_naming_the_field_before_any_request(imagen_emulator, prices, value, problem):
    prices(value)
    with pytest.raises(ConnectionConfigError, match="extra 'prices' ") as refused:
        run(operator(ImagenGenerateImageOperator, prompt=PROMPTS[0]), TaskInstance(), FakeTaskStateStore())
    assert "'cloudflare_workers_ai_default'" in str(refused.value) and problem in str(refused.value)
    assert imagen_emulator.api_requests == 0


def test_the_connection_form_offers_the_prices_field():
    from airflow_provider_imagen._cloudflare.connection_form import CONN_FIELDS, UI_FIELD_BEHAVIOUR

    assert CONN_FIELDS["prices"]["label"] == "Prices (USD per image)"
    assert json.loads(UI_FIELD_BEHAVIOUR["placeholders"]["prices"]) == {
        IMAGEN: 0.04,
        "@cf/leonardo/phoenix-1.0": 0.0058,
    }


def test_every_default_price_is_in_the_docs_table_with_its_source():
    table = (REPO / "docs" / "cost.md").read_text()
    priced = {model.id: model.price for model in TEXT_TO_IMAGE_MODELS.values() if model.price is not None}
    assert FLUX in priced and priced[FLUX].usd_per_image == FLUX_DEFAULT
    for model in TEXT_TO_IMAGE_MODELS.values():
        row = next(line for line in table.splitlines() if line.startswith(f"| `{model.id}` |"))
        if model.price is None:
            assert "| none |" in row, model.id
        else:
            assert f"| ${model.price.usd_per_image:g} |" in row and model.price.gathered in row, model.id


# --- The Images view ----------------------------------------------------------------------------------------

GALLERY_DAG = "imagen_cost_gallery"


@pytest.mark.e2e
def test_the_images_view_shows_the_runs_and_each_task_instances_estimated_cost(airflow_db, imagen_emulator, prices):
    import secrets

    from airflow.api_fastapi.app import create_app, purge_cached_app
    from fastapi.testclient import TestClient

    from tests.conftest import register_dag
    from tests.test_gallery import bearer, figures

    prices({IMAGEN: 0.04})
    with DAG(GALLERY_DAG, schedule=None, start_date=datetime(2025, 1, 1), catchup=False) as dag:
        ImagenGenerateImageOperator(task_id="single", prompt=PROMPTS[0])
        ImagenGenerateImagesOperator(task_id="batch", prompts=PROMPTS[1:3])
    register_dag(dag)
    dag_run = dag.test()
    assert dag_run.state == "success" and imagen_emulator.generations == 3

    with pytest.MonkeyPatch.context() as patch:
        manager = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        patch.setenv("AIRFLOW__CORE__AUTH_MANAGER", manager)
        patch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", secrets.token_hex(32))
        purge_cached_app()
        try:
            api = TestClient(create_app(), base_url="http://127.0.0.1")
            base = f"/imagen/dags/{GALLERY_DAG}/runs/{dag_run.run_id}/gallery"
            run_page = api.get(base, headers=bearer()).text
            single_page = api.get(f"{base}?task_id=single&map_index=-1", headers=bearer()).text
        finally:
            purge_cached_app()

    assert "estimated cost $0.12</span>" in run_page  # 3 images at $0.04
    assert 'batch</a> <span class="muted">(2 · $0.08)' in run_page
    assert 'single</a> <span class="muted">(1 · $0.04)' in run_page
    assert all("· $0.04</span>" in card for card in figures(run_page))
    assert "Images of single" in single_page and "estimated cost $0.04</span>" in single_page


def test_the_images_view_reads_a_cost_only_if_it_is_an_amount_and_counts_unpriced_images_apart():
    from airflow_provider_imagen.plugins.images import CostTotal, parse_summary

    def image(cost: Any) -> Any:
        return parse_summary("t", -1, 0, {"url": "https://x/y.png", "estimated_cost_usd": cost})

    # An XCom can be written by any task: only a finite amount from 0 up is shown as a cost.
    assert [image(c).estimated_cost_usd for c in (0.04, 0, -1, math.nan, math.inf, "0.04", True)] == [
        0.04,
        0,
        None,
        None,
        None,
        None,
        None,
    ]
    assert CostTotal.of([image(0.04), image(0.0006336), image(None)]).text == "$0.0406336 (+ 1 image without a price)"
    assert CostTotal.of([image(None)]).text.startswith("unknown")
    assert CostTotal.of([image(0.5)]).text == "$0.50"
