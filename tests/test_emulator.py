"""The emulator over real HTTP: Cloudflare's routes, bodies and faults, and the hook against each fault."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from airflow_provider_imagen.emulator import PRESETS, images
from airflow_provider_imagen.exceptions import (
    CloudflareAuthenticationError,
    CloudflareBadRequestError,
    CloudflareRateLimitError,
    CloudflareServerError,
    GenerationOutcomeUnknownError,
    ImageGenerationFailedError,
    InvalidInputError,
)
from airflow_provider_imagen.hooks import CloudflareWorkersAIHook


@pytest.fixture
def api(imagen_emulator):
    headers = {"Authorization": f"Bearer {imagen_emulator.token}"}
    with httpx.Client(base_url=f"{imagen_emulator.api_base}/accounts/acc", headers=headers) as client:
        yield client


def test_missing_and_wrong_tokens_get_cloudflares_error_bodies(imagen_emulator, api):
    body = {"model": "google/imagen-4", "input": {"prompt": "x"}}
    missing = httpx.post(f"{imagen_emulator.api_base}/accounts/acc/ai/run", json=body)
    assert missing.status_code == 401
    assert missing.json()["success"] is False and missing.json()["errors"][0]["code"] == 10001
    wrong = httpx.post(
        f"{imagen_emulator.api_base}/accounts/acc/ai/run", json=body, headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status_code == 403
    assert wrong.json()["errors"][0] == {"code": 10000, "message": "Authentication error"}
    assert imagen_emulator.api_requests == 2  # refused requests are attempts too


@pytest.mark.parametrize(
    ("inputs", "problem"),
    [
        ({}, "required properties at '/' are 'prompt'"),
        ({"prompt": " "}, "non-empty string"),
        ({"prompt": "x", "aspect_ratio": "2:1"}, "aspect_ratio"),
        ({"prompt": "x", "person_generation": "all"}, "person_generation"),
        ({"prompt": "x", "seed": 1}, "additional properties"),
    ],
)
def test_imagen_schema_is_enforced_with_the_400_envelope(api, inputs, problem):
    response = api.post("/ai/run", json={"model": "google/imagen-4", "input": inputs})
    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert error["code"] == 5004 and problem in error["message"]


def test_proxied_success_shape_and_deterministic_urls(api):
    body = {"model": "google/imagen-4", "input": {"prompt": "same", "aspect_ratio": "3:4"}}
    first, second = api.post("/ai/run", json=body).json(), api.post("/ai/run", json=body).json()
    assert first["state"] == "Completed" and first["gatewayMetadata"] == {"keySource": "Unified"}
    assert first["result"]["image"] == second["result"]["image"]
    png = httpx.get(first["result"]["image"]).content
    assert png == httpx.get(second["result"]["image"]).content
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_images_are_rendered_on_download_not_on_generation(api):
    images.render.cache_clear()
    url = api.post("/ai/run", json={"model": "google/imagen-4", "input": {"prompt": "lazy"}}).json()["result"]["image"]
    assert images.render.cache_info().currsize == 0
    httpx.get(url)
    httpx.get(url)
    info = images.render.cache_info()
    assert (info.misses, info.hits) == (1, 1)


def test_unknown_image_is_a_404(imagen_emulator):
    assert httpx.get(f"{imagen_emulator.url}/images/{'0' * 32}.png").status_code == 404


def test_cloudflare_models_answer_in_their_own_shapes(api):
    flux = api.post("/ai/run/@cf/black-forest-labs/flux-1-schnell", json={"prompt": "fox"})
    assert flux.json()["success"] is True
    assert base64.b64decode(flux.json()["result"]["image"])[:3] == b"\xff\xd8\xff"
    sdxl = api.post("/ai/run/@cf/stabilityai/stable-diffusion-xl-base-1.0", json={"prompt": "fox"})
    assert sdxl.content[:8] == b"\x89PNG\r\n\x1a\n"
    in_body = api.post("/ai/run", json={"model": "@cf/black-forest-labs/flux-1-schnell", "input": {"prompt": "f"}})
    assert in_body.json()["success"] is True
    imagen_in_path = api.post("/ai/run/google/imagen-4", json={"prompt": "x"})
    assert imagen_in_path.json()["result"]["image"].endswith(".png")
    unknown = api.post("/ai/run", json={"model": "acme/nothing", "input": {"prompt": "x"}})
    assert (unknown.status_code, unknown.json()["errors"][0]["code"]) == (400, 5007)


def test_control_routes_queue_count_and_reset(imagen_emulator, api):
    imagen_emulator.inject("capacity", times=2, retry_after="3")
    body = {"model": "google/imagen-4", "input": {"prompt": "x"}}
    first = api.post("/ai/run", json=body)
    assert (first.status_code, first.headers["retry-after"], first.json()["errors"][0]["code"]) == (429, "3", 3040)
    stats = imagen_emulator.stats()
    assert (stats["api_requests"], stats["faults_served"], stats["faults_pending"]) == (1, 1, 1)
    imagen_emulator.reset()
    assert api.post("/ai/run", json=body).status_code == 200
    assert imagen_emulator.stats()["faults_pending"] == 0
    bad = httpx.post(f"{imagen_emulator.url}/__emulator__/faults", json={"preset": "nonsense"})
    assert bad.status_code == 422 and "unknown fault preset" in bad.json()["error"]


def _hook(**kwargs):
    return CloudflareWorkersAIHook(max_retries=2, retry_backoff=0.01, max_retry_wait=2, **kwargs)


# preset -> (error type, whether the hook retries it)
EXPECTED = {
    "capacity": (CloudflareRateLimitError, True),
    "daily_limit": (CloudflareRateLimitError, False),
    "wholesale_throttle": (CloudflareRateLimitError, True),
    "wholesale_throttle_402": (CloudflareRateLimitError, True),
    "wholesale_throttle_200": (CloudflareRateLimitError, True),
    "unified_billing_unavailable": (CloudflareBadRequestError, False),
    "invalid_data": (CloudflareBadRequestError, False),
    "incomplete_request": (CloudflareBadRequestError, False),
    "no_such_model": (CloudflareBadRequestError, False),
    "input_error": (CloudflareBadRequestError, False),
    "provider_auth": (CloudflareAuthenticationError, False),
    "auth": (CloudflareAuthenticationError, False),
    "invalid_model": (CloudflareBadRequestError, False),
    "model_not_found": (CloudflareBadRequestError, False),
    "timeout": (CloudflareServerError, True),
    "aborted": (CloudflareServerError, True),
    "too_large": (CloudflareBadRequestError, False),
    "internal": (CloudflareServerError, True),
    "bad_gateway": (CloudflareServerError, True),
    "unavailable": (CloudflareServerError, True),
    "gateway_timeout": (CloudflareServerError, True),
    "provider_unavailable": (ImageGenerationFailedError, True),
    "content_policy": (ImageGenerationFailedError, False),
    "success_false": (CloudflareRateLimitError, True),
    "unknown_state": (ImageGenerationFailedError, False),
    "no_image": (ImageGenerationFailedError, False),
    "html_502": (CloudflareServerError, True),
    "empty_502": (CloudflareServerError, True),
    # The answer is lost after the image was made and billed: not retried blindly (see LOST_ANSWERS).
    "empty": (GenerationOutcomeUnknownError, False),
    "truncated": (GenerationOutcomeUnknownError, False),
    "drop": (GenerationOutcomeUnknownError, False),
}
LOST_ANSWERS = ("empty", "truncated", "drop")


def test_every_preset_has_an_expectation():
    api_presets = {name for name, fault in PRESETS.items() if fault.get("target", "api") == "api"}
    assert set(EXPECTED) | {"slow"} == api_presets


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_hook_against_each_fault_until_retries_run_out(imagen_emulator, preset):
    error_type, retryable = EXPECTED[preset]
    # Refusals by a rate limit are not counted against max_retries: they are re-sent until a budget runs out.
    rate_limited = error_type is CloudflareRateLimitError and retryable
    imagen_emulator.inject(preset, times=1000 if rate_limited else 3)
    # skip_cache: no AI Gateway cache key, so nothing can make a re-send of a lost answer free.
    with _hook() as hook, pytest.raises(error_type) as info:
        hook.max_rate_limit_wait = 0.3
        hook.generate_image("a cat", gateway_options={"skip_cache": True})
    attempts = 3 if retryable else 1
    if rate_limited:
        attempts = info.value.attempts
        assert attempts > 3
    assert info.value.attempts == attempts
    assert imagen_emulator.api_requests == attempts
    fault = PRESETS[preset]
    if fault.get("message"):
        assert fault["message"] in str(info.value)
    if isinstance(fault.get("code"), int):
        assert f"code {fault['code']}" in str(info.value)


@pytest.mark.parametrize("preset", sorted(p for p, (_, retry) in EXPECTED.items() if retry))
def test_hook_recovers_from_one_transient_fault(imagen_emulator, preset):
    imagen_emulator.inject(preset)
    with _hook() as hook:
        image = hook.generate_image("a cat")
    assert image.attempts == 2
    assert httpx.get(image.url).status_code == 200


@pytest.mark.parametrize("preset", LOST_ANSWERS)
def test_a_lost_answer_is_re_sent_with_its_cache_key_and_billed_once(imagen_emulator, preset):
    imagen_emulator.inject(preset, times=3)
    with _hook() as hook:
        image = hook.generate_image("a cat")
    stats = imagen_emulator.stats()
    assert (image.attempts, stats["api_requests"]) == (2, 2)
    assert (stats["generations"], stats["cache_hits"]) == (1, 1)  # the re-send got the cached answer
    keys = {r["gateway_headers"]["cf-aig-cache-key"] for r in stats["recent"]}
    assert len(keys) == 1  # one key for both attempts


def test_a_response_slower_than_the_timeout_is_not_re_sent_and_billed_once(imagen_emulator):
    imagen_emulator.inject("slow", delay=1.5)
    started = time.monotonic()
    with _hook(timeout=0.5) as hook, pytest.raises(GenerationOutcomeUnknownError) as info:
        hook.generate_image("a cat")
    assert time.monotonic() - started < 1.5  # the client gave up on the slow answer, it did not wait it out
    assert "may have been generated and billed" in str(info.value)
    assert info.value.attempts == 1
    # Cloudflare finishes (and bills) the generation anyway: one, not one per attempt.
    assert imagen_emulator.wait_for_generations(1) == 1
    assert imagen_emulator.api_requests == 1


def test_async_hook_against_faults(imagen_emulator):
    import asyncio

    imagen_emulator.inject("capacity")
    imagen_emulator.inject("drop")

    async def generate():
        async with _hook() as hook:
            return await hook.agenerate_image("a cat", "16:9")

    image = asyncio.run(generate())
    assert (image.attempts, image.width) == (3, 1408)


def test_random_failure_rate_is_absorbed_by_retries(imagen_emulator):
    imagen_emulator.configure(failure_rate=0.3, seed=7)
    with CloudflareWorkersAIHook(max_retries=6, retry_backoff=0.001, max_retry_wait=1) as hook:
        results = [hook.generate_image(f"prompt {i}") for i in range(30)]
    stats = imagen_emulator.stats()
    assert len({r.url for r in results}) == 30
    assert stats["faults_served"] > 0
    assert stats["api_requests"] == 30 + stats["faults_served"]


def test_test_connection_through_the_emulator(imagen_emulator):
    assert _hook().test_connection()[0] is True
    imagen_emulator.configure(token_status="expired")
    ok, message = _hook().test_connection()
    assert not ok and "expired" in message


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serves_on_loopback_with_its_flags():
    port = _free_port()
    command = [sys.executable, "-m", "airflow_provider_imagen.emulator.cli", "--port", str(port)]
    command += ["--token", "cli-token", "--fault", "capacity", "--log-level", "warning", "--strict-inputs"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
    try:
        url = f"http://127.0.0.1:{port}/client/v4/accounts/a/ai/run"
        body = {"model": "google/imagen-4", "input": {"prompt": "cli"}}
        deadline = time.monotonic() + 20
        while True:
            try:
                first = httpx.post(url, json=body, headers={"Authorization": "Bearer cli-token"})
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline, "the emulator CLI did not start"
                time.sleep(0.1)
        assert first.status_code == 429  # the --fault queued at start
        second = httpx.post(url, json=body, headers={"Authorization": "Bearer cli-token"})
        assert second.json()["state"] == "Completed"
        seeded = {"model": "@cf/black-forest-labs/flux-1-schnell", "input": {"prompt": "cli", "seed": 1}}
        strict = httpx.post(url, json=seeded, headers={"Authorization": "Bearer cli-token"})
        assert strict.status_code == 400 and "seed" in strict.json()["errors"][0]["message"]
    finally:
        process.terminate()
        process.wait(10)
    assert b"cli-token" not in process.stderr.read()  # the token is never logged


def test_the_pytest_plugin_imports_nothing_heavy_until_a_fixture_is_used():
    # pytest loads the plugin in every session of every project that installs the provider.
    code = (
        "import sys, airflow_provider_imagen.emulator.pytest_plugin as p;"
        "print([m for m in ('fastapi', 'starlette', 'uvicorn', 'httpx') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_faults_route_takes_times(imagen_emulator):
    route = f"{imagen_emulator.url}/__emulator__/faults"
    assert httpx.post(route, json={"preset": "capacity", "times": 3}).json() == {"queued": 3, "pending": 3}
    assert httpx.post(route, json={"status": 503, "times": 2}).json() == {"queued": 2, "pending": 5}
    assert httpx.post(route, json={"status": 503, "times": 0}).status_code == 422
    assert imagen_emulator.stats()["faults_pending"] == 5


def test_the_docs_page_works_offline(imagen_emulator):
    page = httpx.get(f"{imagen_emulator.url}/__emulator__/docs")
    assert page.status_code == 200 and "/client/v4/accounts/{account_id}/ai/run" in page.text
    assert "cdn" not in page.text.lower() and "<script" not in page.text.lower()
    assert httpx.get(f"{imagen_emulator.url}/__emulator__/openapi.json").json()["info"]["title"]


@pytest.mark.parametrize(
    ("settings", "ok", "words"),
    [
        ({"token_kind": "user"}, True, "an active user API token that reaches Workers AI"),
        ({"token_kind": "account"}, True, "an active account-owned API token that reaches Workers AI"),
        ({"token_kind": "user", "token_status": "expired"}, False, "a user token, and it is expired"),
        ({"token_kind": "account", "workers_ai_access": False}, False, "cannot reach Workers AI"),
    ],
)
def test_the_test_button_against_each_kind_of_token(imagen_emulator, settings, ok, words):
    imagen_emulator.configure(**settings)
    result, message = CloudflareWorkersAIHook().test_connection()
    assert (result, words in message) == (ok, True), message
    assert imagen_emulator.token not in message
    assert imagen_emulator.stats()["generations"] == 0  # free calls only


# --- Every catalog model, with its schema ------------------------------------------------------------------

_SIGNATURES = {"PNG": b"\x89PNG\r\n\x1a\n", "JPEG": b"\xff\xd8\xff", "WEBP": b"RIFF"}


def _sniff(data: bytes) -> str | None:
    return next((name for name, head in _SIGNATURES.items() if data.startswith(head)), None)


def _run(api, model: str, body: dict):
    """POST ``body`` to ``model`` the way the catalog says it takes it: in the body, in the path, or as a form."""
    from airflow_provider_imagen._cloudflare import catalog, catalog_inputs

    spec = catalog.TEXT_TO_IMAGE_MODELS[model]
    if spec.body == "multipart":
        return api.post(f"/ai/run/{model}", files=catalog_inputs.multipart_fields(model, body))
    if spec.route == "proxied":
        return api.post("/ai/run", json={"model": model, "input": body})
    return api.post(f"/ai/run/{model}", json=body)


def _image(response, output: str) -> bytes:
    if output == "url":
        assert response.json()["state"] == "Completed"
        return httpx.get(response.json()["result"]["image"]).content
    if output == "base64":
        assert response.json()["success"] is True
        return base64.b64decode(response.json()["result"]["image"])
    return response.content


# model -> (inputs beyond the prompt, expected size, expected format sniffed from the bytes)
_ANSWERS = {
    "google/imagen-4": ({"aspect_ratio": "9:16", "person_generation": "allow_adult"}, (768, 1408), "PNG"),
    "google/nano-banana": ({"aspect_ratio": "16:9", "output_format": "jpg"}, (1408, 768), "JPEG"),
    "google/nano-banana-2": ({"aspect_ratio": "21:9", "google_search": True}, (1536, 640), "PNG"),
    "google/nano-banana-2-lite": ({"output_format": "png"}, (1024, 1024), "PNG"),
    "google/nano-banana-pro": ({"aspect_ratio": "1:1", "output_format": "webp"}, (1024, 1024), "WEBP"),
    "@cf/black-forest-labs/flux-1-schnell": ({"steps": 4}, (1024, 1024), "JPEG"),
    "@cf/black-forest-labs/flux-2-dev": ({"width": 512, "height": 384, "steps": 8, "seed": 1}, (512, 384), "PNG"),
    "@cf/black-forest-labs/flux-2-klein-4b": ({"width": 640, "height": 256}, (640, 256), "PNG"),
    "@cf/black-forest-labs/flux-2-klein-9b": ({}, (1024, 1024), "PNG"),
    "@cf/leonardo/lucid-origin": ({"guidance": 5, "seed": 3}, (1120, 1120), "PNG"),
    "@cf/leonardo/phoenix-1.0": ({"width": 768, "height": 512, "negative_prompt": "blur"}, (768, 512), "JPEG"),
    "@cf/stabilityai/stable-diffusion-xl-base-1.0": ({"width": 512, "height": 512, "num_steps": 10}, (512, 512), "PNG"),
    "@cf/bytedance/stable-diffusion-xl-lightning": ({"height": 768, "width": 256}, (256, 768), "JPEG"),
}


def test_every_catalog_model_is_served():
    from airflow_provider_imagen._cloudflare.catalog import TEXT_TO_IMAGE_MODELS

    assert set(_ANSWERS) == set(TEXT_TO_IMAGE_MODELS)


@pytest.mark.parametrize("model", list(_ANSWERS))
def test_each_model_answers_in_its_own_form_size_and_format(imagen_emulator, api, model):
    from PIL import Image

    from airflow_provider_imagen._cloudflare.catalog import TEXT_TO_IMAGE_MODELS

    inputs, size, fmt = _ANSWERS[model]
    response = _run(api, model, {"prompt": "a red fox", **inputs})
    assert response.status_code == 200, response.text
    data = _image(response, TEXT_TO_IMAGE_MODELS[model].output)
    assert _sniff(data) == fmt
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == size
    stats = imagen_emulator.stats()
    assert stats["generations_by_model"] == {model: 1}  # billed once, to this model


def test_raw_bytes_come_with_the_content_type_cloudflare_sends_not_the_images(api):
    lightning = api.post("/ai/run/@cf/bytedance/stable-diffusion-xl-lightning", json={"prompt": "x"})
    assert lightning.headers["content-type"] == "image/png" and _sniff(lightning.content) == "JPEG"
    phoenix = api.post("/ai/run/@cf/leonardo/phoenix-1.0", json={"prompt": "x"})
    assert phoenix.headers["content-type"] == "image/jpeg" and _sniff(phoenix.content) == "JPEG"


@pytest.mark.parametrize(
    ("model", "inputs", "words"),
    [
        ("@cf/black-forest-labs/flux-1-schnell", {"steps": 9}, "'/steps' must be <= 8"),
        ("@cf/black-forest-labs/flux-1-schnell", {"seed": 1}, "additional properties not allowed at '/': seed"),
        ("@cf/black-forest-labs/flux-1-schnell", {"prompt": "x" * 2049}, "'/prompt' must NOT have more than 2048"),
        ("@cf/leonardo/phoenix-1.0", {"guidance": "high"}, "Type mismatch of '/guidance', 'number' expected"),
        ("@cf/leonardo/lucid-origin", {"width": 2501}, "'/width' must be <= 2500"),
        ("@cf/stabilityai/stable-diffusion-xl-base-1.0", {"height": 128}, "'/height' must be >= 256"),
        ("@cf/black-forest-labs/flux-2-dev", {"steps": "many"}, "Type mismatch of '/steps', 'integer' expected"),
        ("@cf/black-forest-labs/flux-2-dev", {"height": 2000}, "'/height' must be <= 1920"),
        ("@cf/black-forest-labs/flux-2-klein-9b", {"steps": 8}, "additional properties not allowed at '/': steps"),
        ("google/nano-banana", {"image_size": "8K"}, "'/image_size' must be one of 1K, 2K, 4K"),
        ("google/imagen-4", {"seed": 1}, "additional properties not allowed at '/': seed"),
    ],
)
def test_each_model_refuses_what_its_schema_refuses(imagen_emulator, api, model, inputs, words):
    imagen_emulator.configure(strict_inputs=True)
    response = _run(api, model, {"prompt": "fox", **inputs})
    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert error["code"] == 5004 and words in error["message"], error
    assert imagen_emulator.stats()["generations"] == 0


def test_unlisted_inputs_of_cloudflares_own_models_are_ignored_and_counted_unless_strict(imagen_emulator, api):
    # Lenient by default, as the emulator always was for @cf/ models: a test can see what a model ignored.
    body = {"prompt": "fox", "aspect_ratio": "16:9", "steps": 4}
    assert api.post("/ai/run/@cf/black-forest-labs/flux-1-schnell", json=body).status_code == 200
    assert imagen_emulator.stats()["ignored_inputs"] == {"@cf/black-forest-labs/flux-1-schnell": {"aspect_ratio": 1}}
    imagen_emulator.configure(strict_inputs=True)
    refused = api.post("/ai/run/@cf/black-forest-labs/flux-1-schnell", json=body)
    assert refused.status_code == 400 and "aspect_ratio" in refused.json()["errors"][0]["message"]
    assert imagen_emulator.stats()["generations"] == 1


def test_flux_2_takes_a_multipart_form_only(imagen_emulator, api):
    as_json = api.post("/ai/run/@cf/black-forest-labs/flux-2-dev", json={"prompt": "fox"})
    assert as_json.status_code == 400 and "'multipart'" in as_json.json()["errors"][0]["message"]
    in_body = api.post("/ai/run", json={"model": "@cf/black-forest-labs/flux-2-dev", "input": {"prompt": "fox"}})
    assert in_body.status_code == 400 and "multipart" in in_body.json()["errors"][0]["message"]
    form_to_json_model = api.post("/ai/run/@cf/black-forest-labs/flux-1-schnell", files={"prompt": (None, b"fox")})
    assert form_to_json_model.status_code == 400
    reference = images.render("ref", 64, 64)
    with_image = api.post(
        "/ai/run/@cf/black-forest-labs/flux-2-dev",
        files={"prompt": (None, b"fox"), "input_image_0": ("ref.png", reference, "image/png")},
    )
    assert with_image.status_code == 200
    recorded = imagen_emulator.stats()["recent"][-1]["input"]
    assert recorded == {"prompt": "fox", "input_image_0": f"<{len(reference)} bytes>"}
    assert imagen_emulator.stats()["generations"] == 1


@pytest.mark.parametrize("route", ["path", "body"])
def test_an_unknown_model_gets_cloudflares_no_such_model_error(imagen_emulator, api, route):
    if route == "path":
        response = api.post("/ai/run/@cf/acme/retired-model", json={"prompt": "x"})
    else:
        response = api.post("/ai/run", json={"model": "google/imagen-3", "input": {"prompt": "x"}})
    assert response.status_code == 400
    assert response.json()["success"] is False
    error = response.json()["errors"][0]
    assert error["code"] == 5007 and "No such model" in error["message"]
    assert imagen_emulator.stats()["generations"] == 0


@pytest.mark.parametrize(
    ("model", "inputs"),
    [
        ("@cf/black-forest-labs/flux-1-schnell", {"steps": 8}),
        ("@cf/black-forest-labs/flux-1-schnell", {"steps": 9}),
        ("@cf/black-forest-labs/flux-1-schnell", {"seed": 1}),
        ("@cf/leonardo/phoenix-1.0", {"guidance": 2, "num_steps": 50}),
        ("@cf/leonardo/phoenix-1.0", {"guidance": 1.9}),
        ("@cf/stabilityai/stable-diffusion-xl-base-1.0", {"width": 2048, "height": 256}),
        ("@cf/stabilityai/stable-diffusion-xl-base-1.0", {"width": 2049}),
        ("@cf/black-forest-labs/flux-2-dev", {"seed": 5, "guidance": 4.5}),
        ("@cf/black-forest-labs/flux-2-dev", {"width": 255}),
        ("google/nano-banana-2", {"resolution": "2K"}),
        ("google/nano-banana-2", {"image_size": "2K"}),
        ("google/imagen-4", {}),
        ("google/imagen-4", {"negative_prompt": "x"}),
    ],
)
def test_the_catalog_and_the_emulator_agree_on_what_a_model_takes(imagen_emulator, api, model, inputs):
    # Two readings of the same published schema, by separate code: each checks the other.
    from airflow_provider_imagen._cloudflare.catalog_inputs import check_model_inputs

    imagen_emulator.configure(strict_inputs=True)
    try:
        check_model_inputs(model, inputs)
        accepted = True
    except InvalidInputError:
        accepted = False
    response = _run(api, model, {"prompt": "fox", **inputs})
    assert (response.status_code == 200) == accepted, response.text


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"faults": ["capacity"]}, "faults[0] is 'capacity', not an object"),
        ({"faults": "capacity"}, "faults must be a non-empty list"),
        ({"faults": []}, "faults must be a non-empty list"),
        (["capacity"], "faults[0] is 'capacity', not an object"),
    ],
)
def test_a_malformed_fault_list_is_a_422_naming_the_expected_shape(imagen_emulator, body, words):
    response = httpx.post(f"{imagen_emulator.url}/__emulator__/faults", json=body)
    assert response.status_code == 422
    message = response.json()["error"]
    assert words in message and '{"faults": [{"preset": "capacity"}' in message
    not_json = httpx.post(f"{imagen_emulator.url}/__emulator__/faults", content=b"capacity")
    assert not_json.status_code == 422 and "not JSON" in not_json.json()["error"]
    assert imagen_emulator.stats()["faults_pending"] == 0
