"""The operator: parse-time checks, rendering, a thin call into the hook, small JSON to XCom."""

from __future__ import annotations

from datetime import datetime
from unittest import mock

import pytest
from airflow.sdk import DAG

from airflow_provider_imagen.errors import CloudflareRateLimitError, InvalidInputError
from airflow_provider_imagen.operators import ImagenGenerateImageOperator


def make(**kwargs):
    with DAG(dag_id="t", schedule=None, start_date=datetime(2025, 1, 1)):
        return ImagenGenerateImageOperator(task_id="gen", **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": "  "}, "prompt: must not be blank"),
        ({"prompt": "x" * 2001}, "prompt: at most 2000 characters"),
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
        "gateway_options",
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
    imagen_emulator.inject("capacity", times=5)
    op = make(prompt="a cat", max_retries=1)
    op.get_hook = lambda: _fast_hook(op)  # a short backoff keeps the test quick
    with pytest.raises(CloudflareRateLimitError, match=r"code 3040.*after 2 attempts"):
        run(op)
    assert imagen_emulator.api_requests == 2


def _fast_hook(op):
    from airflow_provider_imagen.hooks import CloudflareWorkersAIHook

    return CloudflareWorkersAIHook(op.cloudflare_conn_id, max_retries=op.max_retries, retry_backoff=0.01)


def test_models_that_return_bytes_need_output_path_before_any_request(imagen_emulator):
    with pytest.raises(InvalidInputError, match="returns the image as bytes, not a URL: set output_path"):
        run(make(prompt="a fox", model="@cf/black-forest-labs/flux-1-schnell"))
    assert imagen_emulator.api_requests == 0
