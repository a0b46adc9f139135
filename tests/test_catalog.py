"""The catalog of text-to-image models: each model's own inputs checked, shaped and fitted before any request."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from airflow_provider_imagen._cloudflare import catalog
from airflow_provider_imagen._cloudflare.catalog import TEXT_TO_IMAGE_MODELS, alternatives, body_form, is_cataloged
from airflow_provider_imagen._cloudflare.catalog_inputs import (
    check_model_inputs,
    fit_inputs_for,
    ignored_parameters,
    multipart_fields,
    request_input,
    size_for,
)
from airflow_provider_imagen.constants import IMAGE_SIZES
from airflow_provider_imagen.exceptions import InvalidInputError

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
IMAGEN = "google/imagen-4"
SCHNELL = "@cf/black-forest-labs/flux-1-schnell"
FLUX2 = "@cf/black-forest-labs/flux-2-dev"
KLEIN = "@cf/black-forest-labs/flux-2-klein-4b"
PHOENIX = "@cf/leonardo/phoenix-1.0"
SDXL = "@cf/stabilityai/stable-diffusion-xl-base-1.0"

#: A valid set of each model's own inputs: every cataloged model has one (checked below).
VALID_INPUTS: dict[str, dict[str, object]] = {
    IMAGEN: {},
    "google/nano-banana": {"image_size": "2K", "output_format": "png"},
    "google/nano-banana-2": {"resolution": "1K", "google_search": True, "image_input": ["https://example.com/a.png"]},
    "google/nano-banana-2-lite": {"output_format": "jpg"},
    "google/nano-banana-pro": {"image_size": "4K", "output_format": "webp"},
    SCHNELL: {"steps": 8},
    FLUX2: {"steps": 20, "guidance": 3.5, "seed": 7, "input_image_0": PNG},
    KLEIN: {"seed": 0},
    "@cf/black-forest-labs/flux-2-klein-9b": {"width": 512, "height": 768},
    "@cf/leonardo/lucid-origin": {"guidance": 4.5, "seed": 1, "num_steps": 40},
    PHOENIX: {"negative_prompt": "blur", "num_steps": 25, "guidance": 2},
    SDXL: {"negative_prompt": "text", "num_steps": 20, "strength": 0.5, "seed": -3, "image": [0, 255]},
    "@cf/bytedance/stable-diffusion-xl-lightning": {"num_steps": 4, "guidance": 1.0},
}


def test_the_catalog_covers_the_models_a_pipeline_switches_between():
    required = {
        IMAGEN,
        SCHNELL,
        FLUX2,
        "@cf/leonardo/lucid-origin",
        PHOENIX,
        SDXL,
        "@cf/bytedance/stable-diffusion-xl-lightning",
    }
    assert required <= set(TEXT_TO_IMAGE_MODELS)
    assert {m for m in TEXT_TO_IMAGE_MODELS if m.startswith("google/")} > {IMAGEN}  # Imagen's successors too
    assert set(VALID_INPUTS) == set(TEXT_TO_IMAGE_MODELS)


@pytest.mark.parametrize("model", list(TEXT_TO_IMAGE_MODELS))
def test_every_model_says_where_its_schema_came_from_and_when(model):
    source = TEXT_TO_IMAGE_MODELS[model].source
    assert source.gathered == catalog.GATHERED
    assert source.url or (source.repository and source.path and source.commit)
    if source.commit:
        assert len(source.commit) == 40 and int(source.commit, 16) >= 0


@pytest.mark.parametrize("model", list(TEXT_TO_IMAGE_MODELS))
def test_valid_inputs_are_accepted_and_sent_as_given(model):
    inputs = VALID_INPUTS[model]
    assert check_model_inputs(model, inputs) == inputs
    body = request_input(model, "  a red fox  ", model_inputs=inputs)
    assert body == {"prompt": "a red fox", **inputs}


@pytest.mark.parametrize("model", list(TEXT_TO_IMAGE_MODELS))
def test_aspect_ratio_reaches_each_model_in_the_form_it_takes(model):
    spec = TEXT_TO_IMAGE_MODELS[model]
    body = request_input(model, "fox", "16:9", "allow_adult")
    if spec.sizes == "aspect_ratio":
        assert body["aspect_ratio"] == "16:9" and "width" not in body
    elif spec.sizes == "width_height":
        assert (body["width"], body["height"]) == (1408, 768) and "aspect_ratio" not in body
    else:
        assert "aspect_ratio" not in body and "width" not in body
        assert ignored_parameters(model, aspect_ratio="16:9") == ["aspect_ratio"]
    # Only Imagen 4 takes person_generation; for the others it is dropped, and reported as ignored.
    assert ("person_generation" in body) == (model == IMAGEN)
    assert ("person_generation" in ignored_parameters(model, person_generation="allow_adult")) == (model != IMAGEN)


def test_explicit_sizes_win_over_the_aspect_ratio():
    body = request_input(FLUX2, "fox", "16:9", model_inputs={"width": 512})
    assert (body["width"], body["height"]) == (512, 768)


@pytest.mark.parametrize("model", [m for m, spec in TEXT_TO_IMAGE_MODELS.items() if spec.takes_size])
@pytest.mark.parametrize("ratio", catalog.SIZED_ASPECT_RATIOS)
def test_sizes_are_multiples_of_64_within_the_models_bounds(model, ratio):
    width, height = size_for(model, ratio)
    fields = TEXT_TO_IMAGE_MODELS[model].fields
    for side, field in ((width, fields["width"]), (height, fields["height"])):
        assert side % 64 == 0 and side >= 64
        assert field.maximum is None or side <= field.maximum
        assert field.minimum is None or side >= field.minimum
    across, down = (int(part) for part in ratio.split(":"))
    assert abs(width / height - across / down) < 0.15  # Imagen's own 3:4 is 896x1280 (0.70)
    if ratio in IMAGE_SIZES:
        assert (width, height) == IMAGE_SIZES[ratio]  # a fallback's image matches Imagen's


@pytest.mark.parametrize(
    ("model", "inputs", "words"),
    [
        (SCHNELL, {"steps": 9}, "model_inputs['steps']: 9 is out of range for " + SCHNELL + ": allowed 1-8"),
        (SCHNELL, {"steps": 0}, "allowed 1-8"),
        (SCHNELL, {"steps": "4"}, "model_inputs['steps']: '4' is not a whole number"),
        (SCHNELL, {"steps": True}, "True is not a whole number"),
        (SCHNELL, {"seed": 1}, f"model_inputs['seed']: {SCHNELL} takes no 'seed'; it takes: steps"),
        (IMAGEN, {"seed": 42}, f"model_inputs['seed']: {IMAGEN} takes no 'seed'; it takes nothing beyond prompt"),
        (PHOENIX, {"guidance": 1.5}, "1.5 is out of range for " + PHOENIX + ": allowed 2-10"),
        (PHOENIX, {"guidance": float("nan")}, "nan is not a finite number"),
        (PHOENIX, {"negative_prompt": ""}, "'' is too short"),
        (FLUX2, {"width": 2048}, "2048 is out of range for " + FLUX2 + ": allowed 256-1920"),
        (FLUX2, {"input_image_0": "https://example.com/a.png"}, "is not bytes"),
        (KLEIN, {"steps": 4}, f"{KLEIN} takes no 'steps'"),  # fixed at 4 by Cloudflare
        ("google/nano-banana", {"image_size": "8K"}, "'8K' is not allowed for google/nano-banana: allowed one of"),
        ("google/nano-banana", {"image_input": ["a", "b", "c", "d"]}, "4 items is too many"),
        ("google/nano-banana-2", {"google_search": "yes"}, "'yes' is not true or false"),
        (SDXL, {"image": [0, 256]}, "model_inputs['image']: item 1: 256 is out of range"),
        (SDXL, {"strength": 2}, "allowed 0-1"),
    ],
)
def test_invalid_inputs_are_refused_naming_the_field_and_what_is_allowed(model, inputs, words):
    with pytest.raises(InvalidInputError) as caught:
        check_model_inputs(model, inputs)
    assert words in str(caught.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(InvalidInputError) as caught:
        check_model_inputs(PHOENIX, {"guidance": 11, "seed": -1, "steps": 4}, field="model_inputs[3]")
    message = str(caught.value)
    assert "model_inputs[3]['guidance']" in message and "model_inputs[3]['seed']" in message
    assert f"{PHOENIX} takes no 'steps'; it takes: guidance, seed" in message


@pytest.mark.parametrize("name", ["prompt", "aspect_ratio", "person_generation"])
@pytest.mark.parametrize("model", [IMAGEN, SCHNELL, "acme/unlisted"])
def test_the_providers_own_parameters_are_refused_inside_model_inputs(model, name):
    with pytest.raises(InvalidInputError, match=rf"model_inputs\['{name}'\]: give it as the {name} parameter"):
        check_model_inputs(model, {name: "x"})


@pytest.mark.parametrize("value", [["seed", 1], "seed=1", 42])
def test_model_inputs_must_be_a_mapping(value):
    with pytest.raises(InvalidInputError, match="model_inputs: expected a mapping of the model's own inputs"):
        check_model_inputs(SCHNELL, value)


def test_none_means_not_set():
    assert check_model_inputs(SCHNELL, None) == {}
    assert check_model_inputs(SCHNELL, {"steps": None}) == {}


def test_the_parameters_are_checked_against_the_model_too():
    with pytest.raises(InvalidInputError, match=f"prompt: {SCHNELL} takes at most 2048 characters"):
        request_input(SCHNELL, "x" * 2049)
    with pytest.raises(InvalidInputError, match="aspect_ratio: '2:1' is not one of"):
        request_input(FLUX2, "fox", "2:1")
    with pytest.raises(InvalidInputError, match="person_generation: 'everyone' is not one of"):
        request_input(IMAGEN, "fox", person_generation="everyone")
    with pytest.raises(InvalidInputError, match="prompt: must be a non-blank string"):
        request_input(IMAGEN, "   ")
    # Nano Banana takes wider ratios than Imagen: its own enum decides.
    assert request_input("google/nano-banana", "fox", "21:9")["aspect_ratio"] == "21:9"
    with pytest.raises(InvalidInputError, match="aspect_ratio"):
        request_input(IMAGEN, "fox", "21:9")


def test_a_model_outside_the_catalog_passes_through_unchecked():
    assert not is_cataloged("acme/new-model")
    body = request_input("acme/new-model", "fox", "16:9", "allow_all", {"seed": 1, "anything": [1]})
    assert body == {
        "prompt": "fox",
        "aspect_ratio": "16:9",
        "person_generation": "allow_all",
        "seed": 1,
        "anything": [1],
    }
    assert fit_inputs_for("acme/new-model", {"seed": 1}) == ({"seed": 1}, [])
    assert body_form("acme/new-model") == "json"


def test_a_fallback_chain_drops_what_each_model_does_not_take():
    inputs = {"seed": 7, "negative_prompt": "blur", "num_steps": 20}
    assert fit_inputs_for(PHOENIX, inputs) == (inputs, [])
    assert fit_inputs_for(IMAGEN, inputs) == ({}, ["negative_prompt", "num_steps", "seed"])
    assert fit_inputs_for(FLUX2, inputs) == ({"seed": 7}, ["negative_prompt", "num_steps"])
    # A kept value this model refuses fails before any request, naming the model.
    with pytest.raises(InvalidInputError, match=f"21 is out of range for {SDXL}"):
        fit_inputs_for(SDXL, {"num_steps": 21, "steps": 4})
    with pytest.raises(InvalidInputError, match="give it as the prompt parameter"):
        fit_inputs_for(IMAGEN, {"prompt": "x"})


def test_alternatives_for_a_model_no_longer_served():
    for model in TEXT_TO_IMAGE_MODELS:
        suggested = alternatives(model)
        assert suggested and model not in suggested
        assert all(other in TEXT_TO_IMAGE_MODELS for other in suggested)
    assert alternatives(IMAGEN)[0].startswith("google/")
    retired = alternatives("google/imagen-3")
    assert retired[0].startswith("google/") and IMAGEN in retired
    assert alternatives("@cf/acme/gone") == list(catalog.DEFAULT_ALTERNATIVES)
    assert len({*TEXT_TO_IMAGE_MODELS.values()}) == len(TEXT_TO_IMAGE_MODELS)  # hashable, by id


@pytest.mark.parametrize(
    ("status", "code", "message", "unserved"),
    [
        (400, 5007, "No such model @cf/acme/x", True),
        (404, 3042, "Invalid model ID", True),
        (404, 7003, "Model not found", True),
        (400, 7003, "Input error", False),  # the same code on a 400 is a bad input, not a missing model
        (400, 5004, "Invalid input", False),
        (429, 3040, "Capacity temporarily exceeded", False),
    ],
)
def test_cloudflares_ways_of_saying_a_model_is_not_served(status, code, message, unserved):
    assert catalog.is_unserved(status, code, message) is unserved
    assert catalog.is_unserved(status, str(code), message) is unserved  # a proxied error's code is a string


def test_a_model_no_longer_served_is_explained_in_plain_words_with_alternatives():
    text = catalog.unserved_message(IMAGEN, "No such model google/imagen-4")
    assert text.startswith("Cloudflare does not serve the model 'google/imagen-4', or no longer does (Google lists")
    assert "google/nano-banana-2" in text and text.endswith("Cloudflare said: No such model google/imagen-4")


def test_flux_2_takes_a_multipart_form_that_httpx_encodes():
    assert body_form(FLUX2) == "multipart" and body_form(SCHNELL) == "json"
    body = request_input(FLUX2, "fox", "1:1", model_inputs={"guidance": 2.5, "input_image_0": PNG})
    fields = multipart_fields(FLUX2, body)
    assert dict(fields)["prompt"] == (None, b"fox", None)
    assert dict(fields)["guidance"] == (None, b"2.5", None)
    assert dict(fields)["input_image_0"] == ("input_image_0", PNG, "image/png")
    request = httpx.Request("POST", "http://127.0.0.1/ai/run/" + FLUX2, files=fields)
    content = request.read()
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert b'name="prompt"\r\n\r\nfox' in content and b'filename="input_image_0"' in content
    with pytest.raises(InvalidInputError, match="cannot carry a list"):
        multipart_fields(FLUX2, {"prompt": "x", "tags": ["a"]})


def test_importing_the_catalog_is_cheap():
    code = (
        "import sys, airflow_provider_imagen._cloudflare.catalog as c;"
        "import airflow_provider_imagen._cloudflare.catalog_inputs;"
        "print(len(c.TEXT_TO_IMAGE_MODELS), [m for m in ('httpx', 'pydantic', 'airflow') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split(" ", 1)[1].strip() == "[]"


def test_docs_models_md_is_what_the_catalog_generates():
    from pathlib import Path

    doc = Path(__file__).resolve().parent.parent / "docs" / "models.md"
    script = doc.parent.parent / "scripts" / "models_table.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr + " (run: python scripts/models_table.py)"
