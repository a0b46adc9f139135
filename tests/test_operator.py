"""The operator: parse-time checks, rendering, a thin call into the hook, small JSON to XCom."""

from __future__ import annotations

from datetime import datetime
from unittest import mock

import pytest
from airflow.sdk import DAG

from airflow_provider_imagen.exceptions import CloudflareServerError, CloudflareWorkersAIError, InvalidInputError
from airflow_provider_imagen.operators import ImagenGenerateImageOperator


def make(**kwargs):
    with DAG(dag_id="t", schedule=None, start_date=datetime(2025, 1, 1)):
        return ImagenGenerateImageOperator(task_id="gen", **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": "  "}, "prompt: must not be blank"),
        ({"prompt": "x" * 2001}, "prompt: must be at most 2000 characters"),
        ({"prompt": "a", "aspect_ratio": "2:1"}, "aspect_ratio: must be one of 1:1, 3:4, 4:3, 9:16, 16:9"),
        ({"prompt": "a", "person_generation": "all"}, "person_generation: must be one of dont_allow, allow_adult"),
    ],
)
def test_plainly_wrong_literals_fail_when_the_dag_is_parsed(kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        make(**kwargs)


def test_templated_values_are_left_for_execute():
    op = make(prompt="{{ params.p }}", aspect_ratio="{{ params.r }}")
    assert op.template_fields == (
        "prompt",
        "aspect_ratio",
        "person_generation",
        "model",
        "fallback_models",
        "gateway_options",
        "model_inputs",
        "output_path",
    )
    op.render_template_fields({"params": {"p": "a cat", "r": "16:9"}})
    assert (op.prompt, op.aspect_ratio) == ("a cat", "16:9")


def run(op, ti=None):
    ti = ti or mock.Mock()
    return op.execute({"ti": ti}), ti


def test_execute_returns_the_url_and_pushes_a_json_summary(imagen_emulator):
    url, ti = run(make(prompt="A golden retriever puppy", aspect_ratio="9:16"))
    assert url.startswith(imagen_emulator.url + "/images/")
    ti.xcom_push.assert_called_once()
    key, summary = ti.xcom_push.call_args.kwargs["key"], ti.xcom_push.call_args.kwargs["value"]
    assert key == "image"
    assert summary["url"] == url
    assert (summary["width"], summary["height"], summary["attempts"]) == (768, 1408, 1)
    assert imagen_emulator.token not in repr(summary)


@pytest.mark.parametrize(
    ("field", "rendered", "message"),
    [
        ("aspect_ratio", "2:1", "aspect_ratio"),
        ("person_generation", "nobody", "person_generation"),
        ("prompt", "", "prompt"),
        ("prompt", ["a", "list"], "prompt"),
        ("gateway_options", {"cache_ttl": -5}, "cache_ttl"),
        ("gateway_options", "not-a-dict", "gateway options"),
    ],
)
def test_values_bad_only_after_rendering_fail_before_any_request(imagen_emulator, field, rendered, message):
    op = make(prompt="{{ params.p }}")
    setattr(op, field, rendered)  # what template rendering produced
    with pytest.raises(InvalidInputError, match=message):
        run(op)
    assert imagen_emulator.api_requests == 0


def test_connection_limits_apply_and_errors_name_the_cloudflare_code(imagen_emulator):
    imagen_emulator.inject("internal", times=5)
    op = make(prompt="a cat", max_retries=1)
    op.get_hook = lambda: _fast_hook(op)  # a short backoff keeps the test quick
    with pytest.raises(CloudflareServerError, match=r"code 3043.*after 2 attempts"):
        run(op)
    assert imagen_emulator.api_requests == 2


def _fast_hook(op):
    from airflow_provider_imagen.hooks import CloudflareWorkersAIHook

    return CloudflareWorkersAIHook(op.cloudflare_conn_id, max_retries=op.max_retries, retry_backoff=0.01)


def test_models_that_return_bytes_need_output_path_before_any_request(imagen_emulator):
    with pytest.raises(InvalidInputError, match="returns the image as bytes, not a URL: set output_path"):
        run(make(prompt="a fox", model="@cf/black-forest-labs/flux-1-schnell"))
    assert imagen_emulator.api_requests == 0


def test_deferrable_execute_defers_without_a_secret_and_resumes_with_the_same_xcoms(imagen_emulator):
    import asyncio
    import json

    from tests.conftest import task_deferred_class

    TaskDeferred = task_deferred_class()

    from airflow_provider_imagen.triggers import ImagenGenerateImageTrigger

    op = make(prompt="A lighthouse", aspect_ratio="3:4", deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        run(op)
    assert imagen_emulator.api_requests == 0  # nothing is sent by the worker
    trigger = deferred.value.trigger
    assert isinstance(trigger, ImagenGenerateImageTrigger)
    assert deferred.value.method_name == "execute_complete"
    assert imagen_emulator.token not in json.dumps(trigger.serialize()[1])

    (event,) = asyncio.run(_collect(trigger))
    ti = mock.Mock()
    url = op.execute_complete({"ti": ti}, event.payload)
    assert url == event.payload["image"]["url"]
    summary = ti.xcom_push.call_args.kwargs["value"]
    assert (summary["width"], summary["height"]) == (896, 1280)


async def _collect(trigger):
    return [event async for event in trigger.run()]


def test_trigger_failure_fails_the_task_with_the_typed_message():
    from airflow_provider_imagen.exceptions import CloudflareAuthenticationError

    event = {
        "status": "error",
        "error": {
            "type": "CloudflareAuthenticationError",
            "message": "Authentication error",
            "status_code": 403,
            "code": 10000,
            "retryable": False,
            "attempts": 1,
            "model": "google/imagen-4",
        },
    }
    with pytest.raises(CloudflareAuthenticationError, match=r"HTTP 403, code 10000\): Authentication error"):
        make(prompt="x").execute_complete({"ti": mock.Mock()}, event)


def test_output_path_stores_the_image_and_pushes_stored_uri(imagen_emulator, tmp_path):
    url, ti = run(make(prompt="A lighthouse", output_path=f"{tmp_path}/"))
    pushed = {c.kwargs["key"]: c.kwargs["value"] for c in ti.xcom_push.call_args_list}
    stored = pushed["stored_uri"]
    assert stored.startswith(f"file://{tmp_path}/") and pushed["image"]["stored_uri"] == stored
    # With output_path the task returns the stored copy (what a pipeline keeps); Cloudflare's URL is in the summary.
    assert url == stored and pushed["image"]["url"].startswith("http")


def test_bytes_models_return_the_stored_uri(imagen_emulator, tmp_path):
    result, _ = run(
        make(prompt="a fox", model="@cf/stabilityai/stable-diffusion-xl-base-1.0", output_path=f"{tmp_path}/")
    )
    assert result.startswith(f"file://{tmp_path}/") and result.endswith(".png")


def batch(**kwargs):
    from airflow_provider_imagen.operators import ImagenGenerateImagesOperator

    with DAG(dag_id="b", schedule=None, start_date=datetime(2025, 1, 1)):
        return ImagenGenerateImagesOperator(task_id="batch", **kwargs)


def test_batch_partial_failure_finishes_the_rest_then_fails_listing_each_prompt(imagen_emulator):
    imagen_emulator.inject("daily_limit")
    op = batch(prompts=["one", "two", "three"], max_concurrency=1)
    ti = mock.Mock()
    with pytest.raises(CloudflareWorkersAIError, match=r"1 of 3 images failed") as info:
        op.execute({"ti": ti})
    assert "[0] 'one'" in str(info.value) and "code 3036" in str(info.value)
    pushed = {c.kwargs["key"]: c.kwargs["value"] for c in ti.xcom_push.call_args_list}
    assert pushed["images"][0] is None and pushed["images"][1]["prompt"] == "two"
    assert imagen_emulator.api_requests == 3


def test_batch_can_return_failures_instead(imagen_emulator):
    imagen_emulator.inject("content_policy")
    ti = mock.Mock()
    urls = batch(prompts=["one", "two"], max_concurrency=1, fail_on_error=False).execute({"ti": ti})
    assert urls[0] is None and urls[1].startswith("http")
    pushed = {c.kwargs["key"]: c.kwargs["value"] for c in ti.xcom_push.call_args_list}
    (failure,) = pushed["failures"]
    assert (failure["index"], failure["prompt"], failure["error"]["code"]) == (0, "one", "content_policy_violation")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompts": ["ok", "  "]}, r"prompts\[1\]"),
        ({"prompts": "just one string"}, "non-empty list"),
        ({"prompts": ["ok"], "max_concurrency": 0}, "max_concurrency"),
    ],
)
def test_batch_rejects_bad_input_before_any_request(imagen_emulator, kwargs, message):
    op = batch(prompts=["placeholder"])
    for key, value in kwargs.items():
        setattr(op, key, value)  # as rendered
    with pytest.raises(InvalidInputError, match=message):
        op.execute({"ti": mock.Mock()})
    assert imagen_emulator.api_requests == 0


def test_the_default_durable_path_in_a_real_task_run(airflow_db, imagen_emulator, tmp_path, monkeypatch):
    """A real task run (not a mocked ti): durability is on by default, and names come from the real task instance."""
    from airflow_provider_imagen._task.durable import CONFIG_OPTION, CONFIG_SECTION
    from tests.conftest import register_dag

    cache = tmp_path / "durable-cache"
    monkeypatch.setenv(f"AIRFLOW__{CONFIG_SECTION.upper()}__{CONFIG_OPTION.upper()}", str(cache))  # used before 3.3
    with DAG(dag_id="durable_by_default", schedule=None, start_date=datetime(2025, 1, 1)) as dag:
        ImagenGenerateImageOperator(task_id="gen", prompt="A lighthouse at dawn", output_path=f"{tmp_path}/out/")
    dag_run = register_dag(dag).test()
    assert dag_run.state == "success"
    ti = dag_run.get_task_instance("gen")
    summary = ti.xcom_pull(task_ids="gen", key="image")
    kept_in = summary["billing"]["durable"]  # where a retry would find what this try paid for: never silently nowhere
    assert kept_in == "the task state store" or kept_in.startswith(f"durable_cache_path file://{cache}/")
    stored = summary["stored_uri"]
    assert ti.xcom_pull(task_ids="gen") == stored
    name = stored.rsplit("/", 1)[1]
    assert name.startswith("a-lighthouse-at-dawn-") and "mock" not in name.lower()
    assert imagen_emulator.generations == 1
