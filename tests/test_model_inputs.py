"""
``model_inputs``: each model's own inputs, from the operator to the request body, against the emulator with
``strict_inputs=True`` (it refuses any input the model's published schema does not list, as Cloudflare does).

Every generation is billed, so each test counts what reached the emulator: valid inputs reach the body, invalid
ones are refused before any request.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from unittest import mock

import pytest
from airflow.sdk import DAG

from airflow_provider_imagen._cloudflare import catalog
from airflow_provider_imagen._cloudflare.catalog_inputs import size_for
from airflow_provider_imagen._task.durable import fingerprint
from airflow_provider_imagen.decorators.imagen import imagen_inputs
from airflow_provider_imagen.exceptions import CloudflareBadRequestError, InvalidInputError
from airflow_provider_imagen.hooks import CloudflareWorkersAIHook
from airflow_provider_imagen.operators import ImagenGenerateImageOperator, ImagenGenerateImagesOperator
from airflow_provider_imagen.triggers import ImagenGenerateImageTrigger
from tests.conftest import task_deferred_class
from tests.test_catalog import FLUX2, IMAGEN, PNG, SCHNELL, SDXL, VALID_INPUTS

NANO = "google/nano-banana"
NANO_2 = "google/nano-banana-2"
LUCID = "@cf/leonardo/lucid-origin"
ATTEMPTS = 2
MODELS = list(catalog.TEXT_TO_IMAGE_MODELS)


@pytest.fixture(autouse=True)
def _strict(imagen_emulator, fast_backoff):
    """Cloudflare refuses what a schema does not list: so does the emulator here."""
    imagen_emulator.configure(strict_inputs=True)


def hook() -> CloudflareWorkersAIHook:
    return CloudflareWorkersAIHook(max_retries=ATTEMPTS - 1, retry_backoff=0.01)


def sent(emulator, model: str) -> list[dict]:
    """The ``input`` of every request the emulator received for ``model`` (files shown as ``<N bytes>``)."""
    return [request["input"] for request in emulator.stats()["recent"] if request["model"] == model]


def operator(**kwargs) -> ImagenGenerateImageOperator:
    with DAG(dag_id="mi", schedule=None, start_date=datetime(2025, 1, 1)):
        return ImagenGenerateImageOperator(task_id="gen", **kwargs)


def logged(caplog, capsys) -> str:
    """The log, whether Airflow routed it to logging (caplog) or structlog's stdout."""
    return caplog.text + capsys.readouterr().out


def pushed(ti) -> dict:
    return {c.kwargs["key"]: c.kwargs["value"] for c in ti.xcom_push.call_args_list}


def test_every_cataloged_model_has_valid_inputs_to_test_with():
    assert set(VALID_INPUTS) == set(MODELS)


# --- Valid inputs reach the body ---------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_each_models_valid_inputs_reach_its_request_body(imagen_emulator, model):
    inputs = VALID_INPUTS[model]
    image = hook().generate_image("A lighthouse at dawn", model=model, model_inputs=inputs)

    assert image.model == model and (image.url or image.data)
    (body,) = sent(imagen_emulator, model)
    expected = {key: f"<{len(value)} bytes>" if isinstance(value, bytes) else value for key, value in inputs.items()}
    if catalog.body_form(model) == "multipart":  # a form carries text: the emulator types it by the schema
        assert set(expected) <= set(body)
    else:
        assert {key: body[key] for key in expected} == expected
    assert imagen_emulator.stats()["generations_by_model"] == {model: 1}
    assert imagen_emulator.stats()["ignored_inputs"] == {}


def test_flux_2_gets_a_multipart_form_with_its_reference_image(imagen_emulator, tmp_path):
    image = hook().generate_image("A fox", "16:9", model=FLUX2, model_inputs={"steps": 8, "input_image_0": PNG})
    (body,) = sent(imagen_emulator, FLUX2)
    assert body["prompt"] == "A fox" and body["steps"] == 8 and body["input_image_0"] == f"<{len(PNG)} bytes>"
    assert (body["width"], body["height"]) == size_for(FLUX2, "16:9")
    assert (image.width, image.height) == size_for(FLUX2, "16:9")  # what was sent is the image's size


def test_explicit_sizes_win_and_are_the_images(imagen_emulator):
    image = hook().generate_image("A fox", "16:9", model=SDXL, model_inputs={"width": 512, "height": 768})
    (body,) = sent(imagen_emulator, SDXL)
    assert (body["width"], body["height"]) == (512, 768) == (image.width, image.height)


def test_nano_banana_takes_its_wider_aspect_ratios_imagen_does_not(imagen_emulator):
    image = hook().generate_image("A fox", "21:9", model=NANO)
    assert sent(imagen_emulator, NANO)[0]["aspect_ratio"] == "21:9" and image.aspect_ratio == "21:9"
    with pytest.raises(InvalidInputError, match="aspect_ratio: must be one of 1:1, 3:4, 4:3, 9:16, 16:9"):
        hook().generate_image("A fox", "21:9", model=NANO, fallback_models=[IMAGEN])
    assert imagen_emulator.api_requests == 1


# --- Invalid inputs never reach Cloudflare -----------------------------------------------------------


INVALID = [
    (SCHNELL, {"steps": 99}, r"model_inputs\['steps'\]: 99 is out of range for .*flux-1-schnell: allowed 1-8"),
    (SCHNELL, {"negative_prompt": "blur"}, r"takes no 'negative_prompt'; it takes: steps"),
    (NANO, {"image_size": "8K"}, r"model_inputs\['image_size'\]: '8K' is not allowed"),
    (SDXL, {"num_steps": "many"}, "is not a whole number"),
    (FLUX2, {"input_image_0": "not bytes"}, "is not bytes"),
    (IMAGEN, {"seed": 1}, "google/imagen-4 takes no 'seed'"),
    (LUCID, {"prompt": "x"}, "give it as the prompt parameter"),
]


@pytest.mark.parametrize(("model", "inputs", "words"), INVALID)
def test_invalid_inputs_are_refused_before_any_request(imagen_emulator, model, inputs, words):
    with pytest.raises(InvalidInputError, match=words):
        hook().generate_image("A fox", model=model, model_inputs=inputs)
    assert imagen_emulator.api_requests == 0


@pytest.mark.parametrize(("model", "inputs", "words"), INVALID)
def test_literal_model_inputs_fail_when_the_dag_is_parsed(model, inputs, words):
    with pytest.raises(InvalidInputError, match=words):
        operator(prompt="A fox", model=model, model_inputs=inputs, output_path="/tmp/never/")


def test_templated_model_inputs_are_checked_when_rendered(imagen_emulator, tmp_path):
    op = operator(
        prompt="A fox", model=SCHNELL, model_inputs={"steps": "{{ params.steps }}"}, output_path=f"{tmp_path}/"
    )
    op.model_inputs = {"steps": 42}  # as rendered
    with pytest.raises(InvalidInputError, match=r"model_inputs\['steps'\]: 42 is out of range"):
        op.execute({"ti": mock.Mock()})
    assert imagen_emulator.api_requests == 0


def batch_operator(**kwargs) -> ImagenGenerateImagesOperator:
    with DAG(dag_id="mib", schedule=None, start_date=datetime(2025, 1, 1)):
        return ImagenGenerateImagesOperator(task_id="batch", **kwargs)


def test_a_batch_checks_its_rendered_model_inputs_before_the_first_request(imagen_emulator, tmp_path):
    op = batch_operator(prompts=["A fox", "A hen"], model=SCHNELL, output_path=f"{tmp_path}/")
    op.model_inputs = {"steps": 99}  # as rendered
    with pytest.raises(InvalidInputError, match=r"model_inputs\['steps'\]: 99 is out of range"):
        op.execute({"ti": mock.Mock()})
    assert imagen_emulator.api_requests == 0


def test_a_batch_sends_every_prompt_the_model_inputs_and_logs_a_note_once(imagen_emulator, tmp_path, capsys):
    op = batch_operator(
        prompts=["A fox", "A hen", "A cat"],
        model=NANO,
        fallback_models=[SCHNELL],
        aspect_ratio="21:9",
        model_inputs={"image_size": "2K"},
        output_path=f"{tmp_path}/",
        max_concurrency=1,
    )
    urls = op.execute({"ti": mock.Mock()})
    assert len(urls) == 3 and all(urls)
    bodies = sent(imagen_emulator, NANO)
    assert len(bodies) == 3 and all(b["image_size"] == "2K" and b["aspect_ratio"] == "21:9" for b in bodies)
    assert capsys.readouterr().out.count(f"{SCHNELL} takes no image_size") == 1


# --- Each output form, stored with its extension -----------------------------------------------------

_SIGNATURES = {b"\x89PNG": ".png", b"\xff\xd8\xff": ".jpg", b"RIFF": ".webp"}


@pytest.mark.parametrize("model", MODELS)
def test_each_output_form_is_stored_with_the_right_extension(imagen_emulator, tmp_path, model):
    inputs = {key: value for key, value in VALID_INPUTS[model].items() if key != "output_format"}
    ti = mock.Mock()
    result = operator(prompt="A fox", model=model, model_inputs=inputs, output_path=f"{tmp_path}/").execute({"ti": ti})

    stored = Path(pushed(ti)["stored_uri"].removeprefix("file://"))
    data = stored.read_bytes()
    (extension,) = [ext for signature, ext in _SIGNATURES.items() if data.startswith(signature)]
    assert stored.suffix == extension
    expected = {"png": ".png", "jpeg": ".jpg"}.get(catalog.TEXT_TO_IMAGE_MODELS[model].image_format)
    assert expected is None or extension == expected  # "unknown": whatever the bytes are
    assert result in (pushed(ti)["stored_uri"], pushed(ti)["image"]["url"])
    assert imagen_emulator.generations == 1


@pytest.mark.parametrize(("output_format", "extension"), [("png", ".png"), ("jpg", ".jpg")])
def test_a_chosen_output_format_is_stored_with_its_extension(imagen_emulator, tmp_path, output_format, extension):
    ti = mock.Mock()
    op = operator(prompt="A fox", model=NANO, model_inputs={"output_format": output_format}, output_path=f"{tmp_path}/")
    op.execute({"ti": ti})
    assert pushed(ti)["stored_uri"].endswith(extension)


# --- A fallback chain across families ----------------------------------------------------------------


def test_a_chain_across_families_sends_each_model_what_it_takes_and_logs_the_rest(imagen_emulator, caplog, capsys):
    imagen_emulator.inject("capacity", times=ATTEMPTS, model=NANO)
    with caplog.at_level(logging.INFO):
        image = hook().generate_image(
            "A lighthouse", model=NANO, fallback_models=[SCHNELL], model_inputs={"image_size": "2K", "steps": 4}
        )
    log = logged(caplog, capsys)

    assert image.model == SCHNELL and [s.model for s in image.skipped_models] == [NANO]
    assert all(body.get("image_size") == "2K" and "steps" not in body for body in sent(imagen_emulator, NANO))
    (flux,) = sent(imagen_emulator, SCHNELL)
    assert flux["steps"] == 4 and "image_size" not in flux
    assert f"{NANO} takes no steps: left out of its request" in log
    assert f"{SCHNELL} takes no image_size: left out of its request" in log
    assert imagen_emulator.generations == 1


def test_a_field_no_model_of_the_chain_takes_is_refused_as_a_typo(imagen_emulator):
    with pytest.raises(InvalidInputError, match="takes no 'stepz'"):
        hook().generate_image("A fox", model=NANO, fallback_models=[SCHNELL], model_inputs={"stepz": 4})
    assert imagen_emulator.api_requests == 0


def test_a_value_a_fallback_refuses_fails_before_the_first_model_is_billed(imagen_emulator):
    with pytest.raises(InvalidInputError, match=r"model_inputs\['steps'\]: 20 is out of range for .*schnell"):
        hook().generate_image("A fox", model=LUCID, fallback_models=[SCHNELL], model_inputs={"steps": 20})
    assert imagen_emulator.api_requests == 0


def test_a_model_outside_the_catalog_is_warned_about_once_and_sent_as_given(imagen_emulator, caplog, capsys):
    with caplog.at_level(logging.WARNING), pytest.raises(CloudflareBadRequestError):
        hook().generate_image("A fox", model="@cf/acme/unlisted-1", model_inputs={"anything": 1})
    with caplog.at_level(logging.WARNING), pytest.raises(CloudflareBadRequestError):
        hook().generate_image("A fox", model="@cf/acme/unlisted-1", model_inputs={"anything": 1})
    assert logged(caplog, capsys).count("@cf/acme/unlisted-1 is not in the provider's catalog") == 1
    assert sent(imagen_emulator, "@cf/acme/unlisted-1")[0] == {"prompt": "A fox", "anything": 1}


# --- A model Cloudflare does not serve ---------------------------------------------------------------


@pytest.mark.parametrize("preset", ["no_such_model", "invalid_model"])
def test_an_unserved_model_is_explained_with_alternatives(imagen_emulator, preset):
    imagen_emulator.inject(preset, model=IMAGEN)
    with pytest.raises(CloudflareBadRequestError) as info:
        hook().generate_image("A fox")
    message = str(info.value)
    assert f"Cloudflare does not serve the model {IMAGEN!r}, or no longer does" in message
    assert all(alternative in message for alternative in catalog.alternatives(IMAGEN))
    assert imagen_emulator.api_requests == 1 and imagen_emulator.generations == 0


@pytest.mark.parametrize("preset", ["no_such_model", "invalid_model"])
def test_a_chain_moves_on_after_an_unserved_model(imagen_emulator, preset):
    imagen_emulator.inject(preset, model=IMAGEN)
    image = hook().generate_image("A fox", fallback_models=[SCHNELL], model_inputs={"steps": 2})
    assert image.model == SCHNELL and image.skipped_models[0].model == IMAGEN
    assert "does not serve" in image.skipped_models[0].reason and image.skipped_models[0].attempts == 1
    assert imagen_emulator.generations == 1


def test_an_unknown_model_gets_alternatives_of_its_vendor(imagen_emulator):
    with pytest.raises(CloudflareBadRequestError, match="flux-1-schnell") as info:
        hook().generate_image("A fox", model="@cf/black-forest-labs/flux-0-gone")
    assert "Pass another model" in str(info.value)


# --- Trigger, decorator, durable records -------------------------------------------------------------


def test_the_trigger_carries_model_inputs_in_its_serialized_kwargs(imagen_emulator):
    trigger = ImagenGenerateImageTrigger(prompt="A fox", model=NANO, model_inputs={"image_size": "2K"})
    _, kwargs = trigger.serialize()
    assert kwargs["model_inputs"] == {"image_size": "2K"} and kwargs["schema_version"] == 1
    old = {key: value for key, value in kwargs.items() if key != "model_inputs"}  # stored before the key existed
    assert ImagenGenerateImageTrigger(**old).model_inputs is None
    from tests.test_durable import run_trigger

    event = run_trigger(ImagenGenerateImageTrigger(**kwargs))
    assert event["status"] == "success" and sent(imagen_emulator, NANO)[0]["image_size"] == "2K"


def test_bytes_cannot_travel_to_the_triggerer(imagen_emulator, tmp_path):
    with pytest.raises(InvalidInputError, match=r"model_inputs\['input_image_0'\]: bytes"):
        ImagenGenerateImageTrigger(prompt="A fox", model=NANO, model_inputs={"input_image_0": PNG})
    # A deferred task sends the triggerer's models only what they take: FLUX.2's image stays on the worker.
    op = operator(
        prompt="A fox",
        model=NANO,
        fallback_models=[FLUX2],
        model_inputs={"input_image_0": PNG, "image_size": "2K"},
        output_path=f"{tmp_path}/",
        deferrable=True,
    )
    with pytest.raises(task_deferred_class()) as deferred:
        op.execute({"ti": mock.Mock()})
    assert deferred.value.trigger.serialize()[1]["model_inputs"] == {"image_size": "2K"}
    assert imagen_emulator.api_requests == 0


def test_a_returned_dict_may_hold_model_inputs_laid_over_the_decorators():
    defaults = {"aspect_ratio": "21:9", "person_generation": None, "model_inputs": {"image_size": "1K", "seed": 1}}
    inputs = imagen_inputs({"prompt": "A fox", "model_inputs": {"image_size": "2K"}}, defaults, (NANO,))
    assert inputs == {
        "prompt": "A fox",
        "aspect_ratio": "21:9",
        "person_generation": None,
        "model_inputs": {"image_size": "2K", "seed": 1},
    }


def test_model_inputs_change_the_durable_fingerprint_and_nothing_else_does():
    base = fingerprint(SCHNELL, "A fox", None, None, None)
    assert fingerprint(SCHNELL, "A fox", None, None, None, model_inputs=None) == base  # older records still match
    assert fingerprint(SCHNELL, "A fox", None, None, None, model_inputs={}) == base
    seeded = fingerprint(SCHNELL, "A fox", None, None, None, model_inputs={"seed": 1})
    assert seeded != base != fingerprint(SCHNELL, "A fox", None, None, None, model_inputs={"seed": 2})
    one = fingerprint(FLUX2, "A fox", None, None, None, model_inputs={"input_image_0": PNG})
    other = fingerprint(FLUX2, "A fox", None, None, None, model_inputs={"input_image_0": PNG + b"\x00"})
    assert one != other


def test_deferred_an_unserved_model_hands_over_to_the_workers_models(imagen_emulator, tmp_path):
    from tests.test_durable import TaskInstance, run_trigger, single

    imagen_emulator.inject("no_such_model", model=IMAGEN)
    op = single(prompt="A lighthouse", fallback_models=[SCHNELL], model_inputs={"steps": 2}, output_path=f"{tmp_path}/")
    op.deferrable = True
    ti = TaskInstance()
    with pytest.raises(task_deferred_class()) as deferred:
        op.execute({"ti": ti})
    assert deferred.value.trigger.model_inputs is None  # Imagen takes no steps: they stay for FLUX, on the worker
    event = run_trigger(deferred.value.trigger)
    assert event["status"] == "error" and "does not serve" in event["error"]["message"]

    op.execute_complete({"ti": ti}, event)
    assert ti.pushed["image"]["model"] == SCHNELL and sent(imagen_emulator, SCHNELL)[0]["steps"] == 2
    assert imagen_emulator.generations == 1
