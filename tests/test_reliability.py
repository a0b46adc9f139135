"""
The fault matrix: every fault the emulator can inject, through every path a user can take.

Each row asserts the outcome (success after retries, or the right exception type), the exact number of
attempts the emulator saw, that the time taken is bounded (and that Retry-After was waited out), that the
message names Cloudflare's code and message, and that nothing partial is left at the output path.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any
from unittest import mock

import pytest
from airflow.sdk import DAG

from airflow_provider_imagen.emulator import PRESETS
from airflow_provider_imagen.exceptions import (
    CloudflareAuthenticationError,
    CloudflareBadRequestError,
    CloudflareRateLimitError,
    CloudflareServerError,
    CloudflareWorkersAIError,
    GenerationOutcomeUnknownError,
    ImageDownloadError,
    ImageGenerationFailedError,
)
from airflow_provider_imagen.hooks import CloudflareWorkersAIHook
from airflow_provider_imagen.operators import ImagenGenerateImageOperator, ImagenGenerateImagesOperator

MAX_RETRIES = 2
ATTEMPTS = MAX_RETRIES + 1
TIMEOUT = 0.5
BOUND_SECONDS = 10.0  # no row may take longer: retries and waits are bounded


def http_date_in(seconds: float) -> str:
    return format_datetime(datetime.now(timezone.utc) + timedelta(seconds=seconds), usegmt=True)


# id -> (faults to queue as (preset, times, fields), outcome type or None, attempts, minimum seconds).
# Every row also counts the generations Cloudflare would bill (GENERATIONS, 0 where not listed).
ROWS: dict[str, tuple[list[tuple[str, int, dict[str, Any]]], type[Exception] | None, int, float]] = {
    "429/3040 Retry-After seconds": ([("capacity", 1, {"retry_after": "1"})], None, 2, 1.0),
    "429/3040 Retry-After HTTP-date": ([("capacity", 1, {"retry_after": "date+2"})], None, 2, 0.5),
    # Refusals by a rate limit are not billed and not counted against max_retries (pacing.py, retry.py).
    "429/3040 without Retry-After": ([("capacity", ATTEMPTS, {})], None, ATTEMPTS + 1, 0),
    "429/3036 daily limit": ([("daily_limit", 1, {})], CloudflareRateLimitError, 1, 0),
    "429/2021 wholesale": ([("wholesale_throttle", ATTEMPTS, {})], None, ATTEMPTS + 1, 0),
    "200/2021 wholesale": ([("wholesale_throttle_200", ATTEMPTS, {})], None, ATTEMPTS + 1, 0),
    "2021 not via unified billing": ([("unified_billing_unavailable", 1, {})], CloudflareBadRequestError, 1, 0),
    "400/5004": ([("invalid_data", 1, {})], CloudflareBadRequestError, 1, 0),
    "401/2009": ([("provider_auth", 1, {})], CloudflareAuthenticationError, 1, 0),
    "403/10000": ([("auth", 1, {})], CloudflareAuthenticationError, 1, 0),
    "404/3042": ([("invalid_model", 1, {})], CloudflareBadRequestError, 1, 0),
    "408/3007": ([("timeout", ATTEMPTS, {})], CloudflareServerError, ATTEMPTS, 0),
    "413/3006": ([("too_large", 1, {})], CloudflareBadRequestError, 1, 0),
    "500": ([("internal", ATTEMPTS, {})], CloudflareServerError, ATTEMPTS, 0),
    "502 HTML page": ([("html_502", ATTEMPTS, {})], CloudflareServerError, ATTEMPTS, 0),
    "503": ([("unavailable", ATTEMPTS, {})], CloudflareServerError, ATTEMPTS, 0),
    "504": ([("gateway_timeout", ATTEMPTS, {})], CloudflareServerError, ATTEMPTS, 0),
    "200 state Failed provider_unavailable": (
        [("provider_unavailable", ATTEMPTS, {})],
        ImageGenerationFailedError,
        ATTEMPTS,
        0,
    ),
    "200 success false": ([("success_false", ATTEMPTS, {})], None, ATTEMPTS + 1, 0),
    "429/3040 then a real failure each time": (
        [("internal", 1, {}), ("capacity", 1, {}), ("internal", 1, {}), ("capacity", 1, {}), ("internal", 1, {})],
        CloudflareServerError,
        ATTEMPTS + 2,
        0,
    ),
    "200 unknown state": ([("unknown_state", 1, {})], ImageGenerationFailedError, 1, 0),
    "200 no image": ([("no_image", 1, {})], ImageGenerationFailedError, 1, 0),
    "empty 502": ([("empty_502", ATTEMPTS, {})], CloudflareServerError, ATTEMPTS, 0),
    # The answer is lost after the image was made (and billed): the re-send carries the same AI Gateway
    # cache key, so it gets the cached answer instead of a second generation.
    "empty 200 body": ([("empty", 1, {})], None, 2, 0),
    "truncated JSON": ([("truncated", 1, {})], None, 2, 0),
    "dropped connection": ([("drop", 1, {})], None, 2, 0),
    # The client gives up while the generation still runs: a re-send would start a second one. Not re-sent.
    "slower than the timeout": ([("slow", 1, {"delay": 1.0})], GenerationOutcomeUnknownError, 1, TIMEOUT),
    "transient then success": ([("internal", 1, {}), ("drop", 1, {})], None, 3, 0),
}
GENERATIONS = {"slower than the timeout": 1}  # a row that succeeds is billed once; a failed one only if listed

# Persisting: the generation succeeds, the download of the image does not.
DOWNLOAD_ROWS = {
    "image 404": ("image_not_found", 1, {}, "HTTP 404"),
    "image over the cap": ("image_huge", 1, {"size": 3 * 1024 * 1024}, "cap"),
    "bytes that are not an image": ("image_not_an_image", 1, {}, "not a PNG, JPEG or WebP"),
    "dropped mid-download": ("image_drop", 3, {}, "RemoteProtocolError"),
}


@pytest.fixture(autouse=True)
def _fast_backoff(fast_backoff):
    """Every row runs with the short backoff of conftest's ``fast_backoff``."""


#: Extra operator arguments for a test (the download rows lower the size cap).
OPERATOR_ARGS: dict[str, Any] = {}


def make_operator(cls, **kwargs):
    with DAG(dag_id="drill", schedule=None, start_date=datetime(2025, 1, 1)):
        return cls(task_id="t", timeout=TIMEOUT, max_retries=MAX_RETRIES, **OPERATOR_ARGS, **kwargs)


async def _trigger_event(trigger):
    (event,) = [event async for event in trigger.run()]  # a trigger fires exactly one event
    return event.payload


def run_sync_hook(output):
    with CloudflareWorkersAIHook(timeout=TIMEOUT, max_retries=MAX_RETRIES) as hook:
        return hook.generate_image("a cat", "16:9")


def run_async_hook(output):
    async def go():
        async with CloudflareWorkersAIHook(timeout=TIMEOUT, max_retries=MAX_RETRIES) as hook:
            return await hook.agenerate_image("a cat", "16:9")

    return asyncio.run(go())


def run_operator(output):
    op = make_operator(ImagenGenerateImageOperator, prompt="a cat", aspect_ratio="16:9", output_path=output)
    return op.execute({"ti": mock.Mock()})


def run_deferred_operator(output):
    from tests.conftest import task_deferred_class

    TaskDeferred = task_deferred_class()

    op = make_operator(
        ImagenGenerateImageOperator, prompt="a cat", aspect_ratio="16:9", output_path=output, deferrable=True
    )
    with pytest.raises(TaskDeferred) as deferred:
        op.execute({"ti": mock.Mock()})
    event = asyncio.run(_trigger_event(deferred.value.trigger))
    return op.execute_complete({"ti": mock.Mock()}, event)


def run_batch_operator(output):
    op = make_operator(ImagenGenerateImagesOperator, prompts=["a cat"], aspect_ratio="16:9", output_path=output)
    ti = mock.Mock()
    try:
        return op.execute({"ti": ti})
    except CloudflareWorkersAIError as err:
        # The batch fails with one line per prompt; re-raise the prompt's own typed error for the row's checks.
        failures = {c.kwargs["key"]: c.kwargs["value"] for c in ti.xcom_push.call_args_list}["failures"]
        from airflow_provider_imagen.exceptions import error_from_dict

        (failure,) = failures
        assert failure["reason"] in str(err)
        raise error_from_dict(failure["error"]) from err


PATHS = {
    "sync hook": run_sync_hook,
    "async hook": run_async_hook,
    "operator": run_operator,
    "deferred operator": run_deferred_operator,
    "batch operator": run_batch_operator,
}
STORING_PATHS = ("operator", "deferred operator", "batch operator")


def queue(emulator, faults):
    for preset, times, fields in faults:
        if fields.get("retry_after") == "date+2":
            fields = {**fields, "retry_after": http_date_in(2)}
        emulator.inject(preset, times=times, **fields)


@pytest.mark.parametrize("row", list(ROWS))
@pytest.mark.parametrize("path", list(PATHS))
def test_fault_matrix(imagen_emulator, tmp_path, path, row):
    faults, outcome, attempts, at_least = ROWS[row]
    queue(imagen_emulator, faults)
    output = f"{tmp_path}/images/" if path in STORING_PATHS else None

    started = time.monotonic()
    if outcome is None:
        PATHS[path](output)
    else:
        with pytest.raises(outcome) as info:
            PATHS[path](output)
        error = info.value
        assert error.attempts == attempts
        preset = PRESETS[faults[0][0]]
        if preset.get("message"):
            assert preset["message"] in str(error)
        if isinstance(preset.get("code"), int):
            assert f"code {preset['code']}" in str(error)
        assert imagen_emulator.token not in str(error) + repr(error)
    elapsed = time.monotonic() - started

    assert imagen_emulator.api_requests == attempts
    assert at_least <= elapsed < BOUND_SECONDS
    billed = 1 if outcome is None else GENERATIONS.get(row, 0)
    assert imagen_emulator.wait_for_generations(billed, timeout=3.0) == billed  # never billed twice
    if output is not None:
        stored = list((tmp_path / "images").glob("*")) if (tmp_path / "images").exists() else []
        assert len(stored) == (1 if outcome is None else 0)  # a whole image, or nothing at all


@pytest.mark.parametrize("row", list(DOWNLOAD_ROWS))
@pytest.mark.parametrize("path", STORING_PATHS)
def test_download_faults_leave_nothing_behind(imagen_emulator, tmp_path, monkeypatch, path, row):
    preset, times, fields, message = DOWNLOAD_ROWS[row]
    monkeypatch.setitem(OPERATOR_ARGS, "max_image_bytes", 1024 * 1024)
    imagen_emulator.inject(preset, times=times, **fields)
    with pytest.raises(ImageDownloadError, match=message):
        PATHS[path](f"{tmp_path}/images/")
    assert not (tmp_path / "images").exists() or list((tmp_path / "images").iterdir()) == []
    assert imagen_emulator.api_requests == 1  # the generation is not repeated for a failed download
