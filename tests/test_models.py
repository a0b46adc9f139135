from __future__ import annotations

import pytest

from airflow_provider_imagen.errors import InvalidInputError
from airflow_provider_imagen.models import GatewayOptions, GeneratedImage, ImagenInput


def test_valid_input_keeps_only_what_was_set():
    assert ImagenInput.parse(prompt="  a cat  ").to_request() == {"prompt": "a cat"}
    full = ImagenInput.parse(prompt="a cat", aspect_ratio="16:9", person_generation="allow_adult")
    assert full.to_request() == {"prompt": "a cat", "aspect_ratio": "16:9", "person_generation": "allow_adult"}
    assert full.size == (1408, 768)


@pytest.mark.parametrize(
    ("values", "field", "hint"),
    [
        ({"prompt": ""}, "prompt", "at least 1 character"),
        ({"prompt": "   \n"}, "prompt", "must not be blank"),
        ({"prompt": "x" * 2001}, "prompt", "at most 2000 characters"),
        ({"prompt": 42}, "prompt", "valid string"),
        ({"prompt": None}, "prompt", "valid string"),
        ({"prompt": "a", "aspect_ratio": "2:1"}, "aspect_ratio", "'1:1', '3:4', '4:3', '9:16' or '16:9'"),
        ({"prompt": "a", "aspect_ratio": 1.5}, "aspect_ratio", "'1:1'"),
        ({"prompt": "a", "person_generation": "everyone"}, "person_generation", "'dont_allow', 'allow_adult'"),
        ({"prompt": "a", "seed": 3}, "seed", "unknown field"),
    ],
)
def test_bad_input_names_the_field_and_what_is_allowed(values, field, hint):
    with pytest.raises(InvalidInputError) as info:
        ImagenInput.parse(**values)
    message = str(info.value)
    assert message.startswith("Invalid Imagen input: ")
    assert f"{field}:" in message
    assert hint in message


def test_input_error_fails_the_task_without_retries():
    try:
        from airflow.sdk.exceptions import AirflowFailException
    except ImportError:  # Airflow 3.1
        from airflow.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException):
        ImagenInput.parse(prompt="")


def test_gateway_options_become_cf_aig_headers():
    options = GatewayOptions.parse(
        {
            "gateway_id": "my-gw",
            "cache_ttl": 3600,
            "skip_cache": True,
            "cache_key": "k1",
            "metadata": {"team": "growth", "run": 7},
            "request_timeout": 90000,
            "collect_log": False,
        }
    )
    assert options is not None
    assert options.to_headers() == {
        "cf-aig-gateway-id": "my-gw",
        "cf-aig-cache-ttl": "3600",
        "cf-aig-skip-cache": "true",
        "cf-aig-cache-key": "k1",
        "cf-aig-metadata": '{"team":"growth","run":7}',
        "cf-aig-request-timeout": "90000",
        "cf-aig-collect-log": "false",
    }
    assert GatewayOptions.parse(None) is None


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"cache_ttl": -1}, "cache_ttl"),
        ({"cache_ttl": "60"}, "cache_ttl"),
        ({"request_timeout": 0}, "request_timeout"),
        ({"gateway_id": "has space"}, "gateway_id"),
        ({"metadata": {str(i): i for i in range(6)}}, "metadata"),
        ({"skip_cache": "yes"}, "skip_cache"),
        ({"cache": 10}, "cache"),
    ],
)
def test_bad_gateway_options_are_rejected_by_name(value, field):
    with pytest.raises(InvalidInputError, match=rf"Invalid gateway options: .*{field}"):
        GatewayOptions.parse(value)


def test_gateway_options_must_be_a_mapping():
    with pytest.raises(InvalidInputError, match="expected a dict"):
        GatewayOptions.parse("cache_ttl=5")  # type: ignore[arg-type]


def test_generated_image_xcom_summary_is_json_and_never_carries_bytes():
    image = GeneratedImage(model="m", prompt="p", url=None, data=b"\x89PNG....", media_type="image/png")
    summary = image.to_xcom()
    assert "data" not in summary
    assert summary["media_type"] == "image/png"
    assert "PNG" not in repr(image)
