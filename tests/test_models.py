from __future__ import annotations

import pytest

from airflow_provider_imagen.exceptions import InvalidInputError
from airflow_provider_imagen.models import GatewayOptions, GeneratedImage, ImagenInput


def test_valid_input_keeps_only_what_was_set():
    assert ImagenInput.parse(prompt="  a cat  ").to_request() == {"prompt": "a cat"}
    full = ImagenInput.parse(prompt="a cat", aspect_ratio="16:9", person_generation="allow_adult")
    assert full.to_request() == {"prompt": "a cat", "aspect_ratio": "16:9", "person_generation": "allow_adult"}
    assert full.size == (1408, 768)


@pytest.mark.parametrize(
    ("values", "field", "hint"),
    [
        ({"prompt": ""}, "prompt", "must not be blank"),
        ({"prompt": "   \n"}, "prompt", "must not be blank"),
        ({"prompt": "x" * 2001}, "prompt", "at most 2000 characters"),
        ({"prompt": 42}, "prompt", "must be a string (got 42)"),
        ({"prompt": None}, "prompt", "must be a string (got None)"),
        (
            {"prompt": "a", "aspect_ratio": "2:1"},
            "aspect_ratio",
            "must be one of 1:1, 3:4, 4:3, 9:16, 16:9 (got '2:1')",
        ),
        ({"prompt": "a", "aspect_ratio": 1.5}, "aspect_ratio", "must be one of 1:1, 3:4, 4:3, 9:16, 16:9 (got 1.5)"),
        (
            {"prompt": "a", "person_generation": "everyone"},
            "person_generation",
            "must be one of dont_allow, allow_adult, allow_all (got 'everyone')",
        ),
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
        ({"cache_ttl": "sixty"}, "cache_ttl"),
        ({"request_timeout": 0}, "request_timeout"),
        ({"gateway_id": "has space"}, "gateway_id"),
        ({"metadata": {str(i): i for i in range(6)}}, "metadata"),
        ({"skip_cache": "maybe"}, "skip_cache"),
        ({"cache": 10}, "cache"),
    ],
)
def test_bad_gateway_options_are_rejected_by_name(value, field):
    with pytest.raises(InvalidInputError, match=rf"Invalid gateway options: .*{field}"):
        GatewayOptions.parse(value)


def test_rendered_strings_are_taken_where_their_meaning_is_plain():
    # A templated value renders to a string: "3600" is 3600 seconds, "true" is true.
    options = GatewayOptions.parse({"cache_ttl": "3600", "skip_cache": "true", "request_timeout": "5000"})
    assert (options.cache_ttl, options.skip_cache, options.request_timeout) == (3600, True, 5000)


def test_a_literal_and_a_rendered_value_get_the_same_words():
    from airflow_provider_imagen._cloudflare.rules import check_literal_inputs

    with pytest.raises(InvalidInputError) as literal:
        check_literal_inputs("a cat", "2:1", None, None)
    with pytest.raises(InvalidInputError) as rendered:
        ImagenInput.parse(prompt="a cat", aspect_ratio="2:1")
    assert str(literal.value) == str(rendered.value)
    with pytest.raises(InvalidInputError) as blank:
        ImagenInput.parse(prompt="  ")
    assert "Value error" not in str(blank.value)


def test_gateway_options_must_be_a_mapping():
    with pytest.raises(InvalidInputError, match="expected a dict"):
        GatewayOptions.parse("cache_ttl=5")  # type: ignore[arg-type]


def test_generated_image_xcom_summary_is_json_and_never_carries_bytes():
    image = GeneratedImage(model="m", prompt="p", url=None, data=b"\x89PNG....", media_type="image/png")
    summary = image.to_xcom()
    assert "data" not in summary
    assert summary["media_type"] == "image/png"
    assert "PNG" not in repr(image)
