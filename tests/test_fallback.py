"""
Model fallback (``fallback_models``): when a model is unavailable once its retries are spent, the next model of
the chain makes the image; every other error fails at once. Billed generations are counted at the emulator.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import respx
from airflow.sdk import DAG, task

from airflow_provider_imagen._cloudflare.fallback import cache_key_for
from airflow_provider_imagen.exceptions import (
    CloudflareWorkersAIError,
    GenerationOutcomeUnknownError,
    InvalidInputError,
)
from airflow_provider_imagen.hooks import CloudflareWorkersAIHook
from airflow_provider_imagen.models import GatewayOptions
from airflow_provider_imagen.triggers import ImagenGenerateImageTrigger
from tests.conftest import register_dag, task_deferred_class
from tests.test_durable import TaskInstance, batch, run_trigger, single

IMAGEN = "google/imagen-4"
FLUX = "@cf/black-forest-labs/flux-1-schnell"
SDXL = "@cf/stabilityai/stable-diffusion-xl-base-1.0"
ATTEMPTS = 2  # max_retries=1: each model gets two attempts


@pytest.fixture(autouse=True)
def _fast(fast_backoff):
    """Retries back off for milliseconds, so a model is spent in a moment."""


def hook() -> CloudflareWorkersAIHook:
    return CloudflareWorkersAIHook(max_retries=ATTEMPTS - 1, retry_backoff=0.01)


def requests_to(emulator, model: str) -> int:
    return emulator.stats()["by_model"].get(model, 0)


# --- Which errors fall back ---------------------------------------------------------------------------

#: A model that is unavailable, in each way Cloudflare says so, with the code the skipped entry carries: the next
#: model makes the image.
UNAVAILABLE = {
    "provider_unavailable": "provider_unavailable",
    "capacity": 3040,
    "unified_billing_unavailable": 2021,
    "unavailable": None,  # a plain 503
}
#: Everything else is final: the next model would get the same input and token, or pay for an image again.
#: (A model Cloudflare does not serve, ``no_such_model`` and ``invalid_model``, moves on: tests/test_model_inputs.py.)
FINAL = [
    "invalid_data",
    "input_error",
    "too_large",
    "auth",
    "provider_auth",
    "daily_limit",
    "content_policy",
]


@pytest.mark.parametrize("preset", list(UNAVAILABLE))
def test_an_unavailable_model_falls_back_and_only_the_image_made_is_billed(imagen_emulator, tmp_path, preset):
    imagen_emulator.inject(preset, times=ATTEMPTS, model=IMAGEN)
    image = hook().generate_image("A lighthouse at dawn", "16:9", fallback_models=[FLUX])

    assert image.model == FLUX and image.data is not None and image.media_type == "image/jpeg"
    (skipped,) = image.skipped_models
    assert skipped.model == IMAGEN and skipped.attempts == (1 if preset == "unified_billing_unavailable" else ATTEMPTS)
    assert skipped.code == UNAVAILABLE[preset] and skipped.reason.startswith("Cloudflare Workers AI error (HTTP")
    assert imagen_emulator.generations == 1  # the refusals were not billed; the flux image was
    assert requests_to(imagen_emulator, FLUX) == 1


@pytest.mark.parametrize("preset", FINAL)
def test_input_credential_and_quota_errors_never_fall_back(imagen_emulator, preset):
    imagen_emulator.inject(preset, model=IMAGEN)
    with pytest.raises(CloudflareWorkersAIError) as info:
        hook().generate_image("A lighthouse at dawn", fallback_models=[FLUX])
    assert info.value.model == IMAGEN and not info.value.skipped_models
    assert requests_to(imagen_emulator, FLUX) == 0 and imagen_emulator.generations == 0


def test_a_request_that_may_have_been_billed_never_falls_back(imagen_emulator):
    # The answer does not come in time: the image may exist and be billed, so no second model is paid for it.
    imagen_emulator.inject("slow", delay=1.0, model=IMAGEN)
    with pytest.raises(GenerationOutcomeUnknownError):
        CloudflareWorkersAIHook(timeout=0.3).generate_image("A lighthouse at dawn", fallback_models=[FLUX])
    assert requests_to(imagen_emulator, FLUX) == 0
    assert imagen_emulator.wait_for_generations(1) == 1  # Imagen's image, billed once, and nothing else


def test_a_model_refused_for_sending_too_fast_is_paced_and_falls_back_only_once_the_budget_is_spent(
    imagen_emulator,
):
    # Throttling (a plain 429, wholesale 2021) means "slower", not "unavailable": the refusals are re-sent at
    # the pace the account allows, uncounted, and only a budget spent without an answer passes the model over.
    imagen_emulator.inject("wholesale_throttle", times=3, model=IMAGEN)
    image = hook().generate_image("A lighthouse at dawn", fallback_models=[FLUX])
    assert image.model == IMAGEN and requests_to(imagen_emulator, IMAGEN) == 4

    imagen_emulator.inject(kind="error", status=429, times=1000, model=IMAGEN)
    quick = CloudflareWorkersAIHook(max_retries=1, retry_backoff=0.01, max_rate_limit_wait=0.5)
    image = quick.generate_image("A fox at dusk", fallback_models=[FLUX])
    assert image.model == FLUX and image.skipped_models[0].status_code == 429
    assert imagen_emulator.generations == 2


@respx.mock
def test_a_model_that_may_have_billed_an_image_is_not_passed_over_even_if_it_then_fails(monkeypatch):
    # Attempt 1's answer started and was cut (the image exists, billed); its re-send got a 503. Falling back would
    # pay FLUX for a second image.
    conn = {"conn_type": "cloudflare_workers_ai", "password": "t", "extra": {"account_id": "acct"}}
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDFLARE_WORKERS_AI_DEFAULT", json.dumps(conn))
    imagen = respx.post("https://api.cloudflare.com/client/v4/accounts/acct/ai/run").mock(
        side_effect=[httpx.Response(200, content=b'{"state": "Compl'), httpx.Response(503, text="Unavailable")]
    )
    flux = respx.post(f"https://api.cloudflare.com/client/v4/accounts/acct/ai/run/{FLUX}")
    with pytest.raises(CloudflareWorkersAIError) as info:
        hook().generate_image("A lighthouse", fallback_models=[FLUX])
    assert info.value.status_code == 503 and info.value.maybe_billed
    assert imagen.call_count == 2 and flux.call_count == 0


def test_when_every_model_is_unavailable_the_error_says_what_each_did(imagen_emulator):
    imagen_emulator.inject("provider_unavailable", times=ATTEMPTS, model=IMAGEN)
    imagen_emulator.inject("unavailable", times=ATTEMPTS, model=FLUX)
    with pytest.raises(CloudflareWorkersAIError) as info:
        hook().generate_image("A lighthouse at dawn", fallback_models=[FLUX])
    error = info.value
    assert error.model == FLUX and error.status_code == 503
    assert [s["model"] for s in error.skipped_models] == [IMAGEN]
    assert f"after falling back from {IMAGEN}" in str(error) and "provider_unavailable" in str(error)
    assert imagen_emulator.generations == 0


def test_a_model_with_a_fallback_counts_capacity_refusals_as_attempts(imagen_emulator):
    # Alone, Imagen's "capacity exceeded" refusals would be waited out for up to max_rate_limit_wait; with a
    # fallback, its capacity is spent when its retries are.
    imagen_emulator.inject("capacity", times=50, model=IMAGEN)
    image = hook().generate_image("A lighthouse at dawn", fallback_models=[FLUX])
    assert image.model == FLUX and requests_to(imagen_emulator, IMAGEN) == ATTEMPTS


def test_the_image_comes_from_the_first_model_that_is_available(imagen_emulator):
    image = hook().generate_image("A lighthouse at dawn", fallback_models=[FLUX])
    assert image.model == IMAGEN and image.url and image.skipped_models == ()
    assert requests_to(imagen_emulator, FLUX) == 0


# --- The chain is checked before anything is sent ------------------------------------------------------


@pytest.mark.parametrize(
    ("fallback_models", "message"),
    [
        ("@cf/black-forest-labs/flux-1-schnell", "fallback_models: expected a list"),
        (["@cf/../../user/tokens"], "fallback_models\\[0\\]"),
        ([FLUX, IMAGEN], "fallback_models\\[1\\]: 'google/imagen-4' is already in the chain"),
        ([f"@cf/vendor/m{n}" for n in range(5)], "at most 4 fallbacks"),
    ],
)
def test_a_bad_chain_is_refused_before_any_request(imagen_emulator, fallback_models, message):
    with pytest.raises(InvalidInputError, match=message):
        hook().generate_image("A lighthouse", fallback_models=fallback_models)
    with pytest.raises(InvalidInputError, match=message):
        ImagenGenerateImageTrigger(prompt="A lighthouse", fallback_models=fallback_models)
    with pytest.raises(InvalidInputError, match=message):  # a literal list fails when the DAG is parsed
        single(prompt="A lighthouse", fallback_models=fallback_models)
    assert imagen_emulator.api_requests == 0


def test_a_fallback_that_answers_in_bytes_needs_output_path(imagen_emulator):
    op = single(prompt="A lighthouse", fallback_models=[FLUX])
    with pytest.raises(InvalidInputError, match=r"Fallback model .*flux.* \(fallback_models\[0\]\) .* output_path"):
        op.execute({"ti": TaskInstance()})
    assert imagen_emulator.api_requests == 0


def test_a_templated_chain_is_checked_once_rendered(imagen_emulator):
    op = single(prompt="A lighthouse", fallback_models=["{{ params.fallback }}"])
    op.render_template_fields({"params": {"fallback": "@cf/../user/tokens"}})
    with pytest.raises(InvalidInputError, match=r"fallback_models\[0\]"):
        op.execute({"ti": TaskInstance()})
    assert imagen_emulator.api_requests == 0


@respx.mock
def test_each_fallback_gets_its_own_cache_key_so_no_model_gets_anothers_image(monkeypatch):
    conn = {"conn_type": "cloudflare_workers_ai", "password": "t", "extra": {"account_id": "acct"}}
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDFLARE_WORKERS_AI_DEFAULT", json.dumps(conn))
    failed = {"state": "Failed", "error": {"code": "provider_unavailable", "message": "down"}}
    route = respx.post("https://api.cloudflare.com/client/v4/accounts/acct/ai/run").mock(
        return_value=httpx.Response(200, json=failed)
    )
    flux = respx.post(f"https://api.cloudflare.com/client/v4/accounts/acct/ai/run/{FLUX}").mock(
        return_value=httpx.Response(500, json={"success": False, "errors": [{"code": 3043, "message": "x"}]})
    )
    sdxl = respx.post(f"https://api.cloudflare.com/client/v4/accounts/acct/ai/run/{SDXL}").mock(
        return_value=httpx.Response(200, content=b"\x89PNG\r\n\x1a\n" + b"0" * 64)
    )
    flux.side_effect = [httpx.Response(503, text="Service Unavailable")] * ATTEMPTS
    image = hook().generate_image(
        "A lighthouse", fallback_models=[FLUX, SDXL], gateway_options={"cache_key": "k", "gateway_id": "g"}
    )
    assert image.model == SDXL and [s.model for s in image.skipped_models] == [IMAGEN, FLUX]
    keys = [call.request.headers["cf-aig-cache-key"] for call in (route.calls[0], flux.calls[0], sdxl.calls[0])]
    assert keys[0] == "k" and len(set(keys)) == 3 and all(key.startswith("k-") for key in keys[1:])


# --- Operators, the decorator, deferral and retries -----------------------------------------------------


def test_the_operator_stores_the_fallbacks_image_and_says_which_model_made_it(imagen_emulator, tmp_path, capsys):
    imagen_emulator.inject("provider_unavailable", times=ATTEMPTS, model=IMAGEN)
    op = single(prompt="A lighthouse at dawn", fallback_models=[FLUX], output_path=f"{tmp_path}/", max_retries=1)
    ti = TaskInstance()
    returned = op.execute({"ti": ti})
    log = capsys.readouterr().out

    summary = ti.pushed["image"]
    assert summary["model"] == FLUX and summary["url"] is None and returned == summary["stored_uri"]
    (skipped,) = summary["skipped_models"]
    assert (skipped["model"], skipped["code"], skipped["attempts"]) == (IMAGEN, "provider_unavailable", ATTEMPTS)
    assert Path(returned.removeprefix("file://")).read_bytes()[:3] == b"\xff\xd8\xff"  # flux's JPEG
    assert f"{IMAGEN} was passed over for {FLUX}: " in log and "code provider_unavailable" in log
    assert f"{IMAGEN} is unavailable after {ATTEMPTS} attempt(s)" in log and f"Trying fallback model {FLUX}" in log
    assert imagen_emulator.generations == 1


class FailingOnce(TaskInstance):
    """A task instance whose first XCom push fails: the try dies after its image was generated and stored."""

    failed = False

    def xcom_push(self, key, value):
        if not self.failed:
            self.failed = True
            raise RuntimeError("the metadata database went away")
        super().xcom_push(key, value)


def test_a_retry_reuses_the_fallbacks_stored_image_instead_of_paying_again(imagen_emulator, tmp_path, monkeypatch):
    from airflow_provider_imagen._task.durable import CONFIG_OPTION, CONFIG_SECTION

    monkeypatch.setenv(f"AIRFLOW__{CONFIG_SECTION.upper()}__{CONFIG_OPTION.upper()}", str(tmp_path / "records"))
    imagen_emulator.inject("provider_unavailable", times=ATTEMPTS, model=IMAGEN)
    op = single(prompt="A lighthouse at dawn", fallback_models=[FLUX], output_path=f"{tmp_path}/", max_retries=1)
    ti = FailingOnce()
    with pytest.raises(RuntimeError):
        op.execute({"ti": ti})
    ti.retry()  # Imagen is available again, but the image this task instance paid for is kept
    stored = op.execute({"ti": ti})
    summary = ti.pushed["image"]
    assert summary["reused"] is True and summary["model"] == FLUX and stored == summary["stored_uri"]
    assert summary["skipped_models"][0]["model"] == IMAGEN
    assert imagen_emulator.generations == 1


@pytest.mark.parametrize("preset", ["provider_unavailable", "capacity"])
def test_deferred_the_triggerer_tries_url_models_and_the_worker_the_ones_that_answer_in_bytes(
    imagen_emulator, tmp_path, preset
):
    # Capacity refusals too: the trigger's last model is not the chain's, so they count as attempts there.
    imagen_emulator.inject(preset, times=50, model=IMAGEN)
    op = single(
        prompt="A lighthouse at dawn",
        fallback_models=[FLUX],
        output_path=f"{tmp_path}/",
        deferrable=True,
        max_retries=1,
    )
    ti = TaskInstance()
    with pytest.raises(task_deferred_class()) as deferred:
        op.execute({"ti": ti})
    trigger = deferred.value.trigger
    assert trigger.model == IMAGEN and not trigger.fallback_models  # no image bytes through the triggerer
    assert trigger.fallback_follows is True
    event = run_trigger(trigger)
    assert event["status"] == "error" and event["inputs"]["prompt"] == "A lighthouse at dawn"

    stored = op.execute_complete({"ti": ti}, event)
    summary = ti.pushed["image"]
    assert summary["model"] == FLUX and stored == summary["stored_uri"]
    assert [(s["model"], s["attempts"]) for s in summary["skipped_models"]] == [(IMAGEN, ATTEMPTS)]
    assert requests_to(imagen_emulator, IMAGEN) == ATTEMPTS  # not tried again on the worker
    assert imagen_emulator.generations == 1
    # The worker sent FLUX the key the synchronous path would have: a retry's re-send finds the same answer.
    sent = {r["model"]: r["gateway_headers"]["cf-aig-cache-key"] for r in imagen_emulator.stats()["recent"]}
    key = trigger.gateway_options["cache_key"]
    assert sent == {IMAGEN: key, FLUX: cache_key_for(GatewayOptions(cache_key=key), FLUX, first=False).cache_key}


def test_deferred_a_final_error_is_not_taken_further(imagen_emulator, tmp_path):
    imagen_emulator.inject("content_policy", model=IMAGEN)
    op = single(prompt="A lighthouse", fallback_models=[FLUX], output_path=f"{tmp_path}/", deferrable=True)
    ti = TaskInstance()
    with pytest.raises(task_deferred_class()) as deferred:
        op.execute({"ti": ti})
    with pytest.raises(CloudflareWorkersAIError, match="safety filters"):
        op.execute_complete({"ti": ti}, run_trigger(deferred.value.trigger))
    assert requests_to(imagen_emulator, FLUX) == 0


def test_a_batch_passes_over_a_model_once_found_unavailable(imagen_emulator, tmp_path):
    imagen_emulator.inject("provider_unavailable", times=1000, model=IMAGEN)
    prompts = [f"A lighthouse, study {n}" for n in range(6)]
    op = batch(prompts=prompts, fallback_models=[FLUX], output_path=f"{tmp_path}/", max_concurrency=2, max_retries=1)
    ti = TaskInstance()
    op.execute({"ti": ti})

    summaries = ti.pushed["images"]
    assert [s["model"] for s in summaries] == [FLUX] * 6
    # The first two prompts spent Imagen's retries; the other four skipped it without a request.
    assert requests_to(imagen_emulator, IMAGEN) == 2 * ATTEMPTS
    skipped = sorted((s["skipped_models"][0] for s in summaries), key=lambda s: s["attempts"])
    assert [s["attempts"] for s in skipped] == [0, 0, 0, 0, ATTEMPTS, ATTEMPTS]
    assert all(s["reason"].startswith("found unavailable") for s in skipped[:4])
    assert imagen_emulator.generations == 6


def test_the_decorator_falls_back_deferred_through_a_dag_run(airflow_db, imagen_emulator, tmp_path):
    imagen_emulator.inject("provider_unavailable", times=ATTEMPTS, model=IMAGEN)
    with DAG(dag_id="imagen_fallback_decorated", schedule=None, start_date=datetime(2025, 1, 1)) as dag:

        @task.imagen(fallback_models=[FLUX], output_path=f"{tmp_path}/", deferrable=True, max_retries=1)
        def poster(film: str) -> dict[str, str]:
            return {"prompt": f"A minimalist poster for {film}", "aspect_ratio": "3:4"}

        poster("Metropolis")

    dag_run = register_dag(dag).test()
    assert dag_run.state == "success"
    ti = next(ti for ti in dag_run.get_task_instances() if ti.task_id == "poster")
    summary = ti.xcom_pull(task_ids="poster", key="image")
    assert summary["model"] == FLUX and summary["prompt"] == "A minimalist poster for Metropolis"
    assert summary["aspect_ratio"] == "3:4" and summary["skipped_models"][0]["model"] == IMAGEN
    assert imagen_emulator.generations == 1


@pytest.mark.parametrize(
    ("kwargs", "field"), [({"model": SDXL}, "model"), ({"fallback_models": [FLUX]}, r"fallback_models\[0\]")]
)
def test_a_trigger_refuses_models_whose_image_bytes_an_event_cannot_carry(kwargs, field):
    # Generated in the triggerer, such an image would be billed and then lost.
    with pytest.raises(InvalidInputError, match=f"Invalid {field} for a trigger: .* answers with image bytes"):
        ImagenGenerateImageTrigger(prompt="A lighthouse", **kwargs)


def test_a_triggers_fallbacks_survive_serialization(imagen_emulator):
    original = ImagenGenerateImageTrigger(prompt="A lighthouse", fallback_models=["google/imagen-4-fast"])
    classpath, kwargs = original.serialize()
    assert kwargs["fallback_models"] == ["google/imagen-4-fast"]
    assert ImagenGenerateImageTrigger(**json.loads(json.dumps(kwargs))).serialize() == (classpath, kwargs)


def test_a_fallbacks_bytes_outlive_a_failed_store_and_the_retry_stores_them(imagen_emulator, tmp_path, monkeypatch):
    # FLUX's image has no URL to fetch again: until it is stored, its bytes wait on the machine, and the error
    # says where; the retry stores them instead of paying for another image.
    from airflow_provider_imagen._task import storage
    from airflow_provider_imagen._task.durable import CONFIG_OPTION, CONFIG_SECTION
    from airflow_provider_imagen.exceptions import StorageError

    monkeypatch.setenv(f"AIRFLOW__{CONFIG_SECTION.upper()}__{CONFIG_OPTION.upper()}", str(tmp_path / "records"))
    monkeypatch.setattr(storage, "KEPT_FOLDER", str(tmp_path / "kept"))
    real_store, calls = storage.store_image, []

    def store_failing_once(**kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return real_store(**kwargs)

    monkeypatch.setattr(storage, "store_image", store_failing_once)
    imagen_emulator.inject("provider_unavailable", times=ATTEMPTS, model=IMAGEN)
    op = single(prompt="A lighthouse at dawn", fallback_models=[FLUX], output_path=f"{tmp_path}/out/", max_retries=1)
    ti = TaskInstance()
    with pytest.raises(StorageError, match=r"the image bytes are kept at .*/kept/airflow-imagen-\w+\.jpg on ") as info:
        op.execute({"ti": ti})
    kept = Path(str(info.value).split("kept at ")[1].split(" on ")[0])
    assert kept.read_bytes()[:3] == b"\xff\xd8\xff"

    ti.retry()
    stored = op.execute({"ti": ti})
    assert ti.pushed["image"]["reused"] is True and ti.pushed["image"]["model"] == FLUX
    assert Path(stored.removeprefix("file://")).read_bytes() == calls[0]["data"]
    assert not kept.exists()  # stored: nothing left behind
    assert imagen_emulator.generations == 1


def test_bytes_stored_at_once_leave_nothing_behind(imagen_emulator, tmp_path, monkeypatch):
    from airflow_provider_imagen._task import storage

    monkeypatch.setattr(storage, "KEPT_FOLDER", str(tmp_path / "kept"))
    op = batch(prompts=["A fox", "An owl"], model=SDXL, output_path=f"{tmp_path}/out/")
    op.execute({"ti": TaskInstance()})
    assert len(list((tmp_path / "out").iterdir())) == 2
    assert list((tmp_path / "kept").iterdir()) == []
