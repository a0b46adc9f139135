"""
Bad input, generated: every invalid value is rejected before any request reaches the emulator, with a
message naming the field and what is allowed. Includes values that only become invalid after templating.
"""

from __future__ import annotations

import re
from datetime import datetime
from unittest import mock

import pytest
from airflow.sdk import DAG
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_imagen.constants import ASPECT_RATIOS, MAX_PROMPT_CHARS, PERSON_GENERATION
from airflow_provider_imagen.exceptions import InvalidInputError
from airflow_provider_imagen.hooks import CloudflareWorkersAIHook
from airflow_provider_imagen.models import GatewayOptions, ImagenInput
from airflow_provider_imagen.operators import ImagenGenerateImageOperator, ImagenGenerateImagesOperator

FIXTURES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

bad_prompts = st.one_of(
    st.just(""),
    st.text(alphabet=" \t\n\r\u00a0\u2003", min_size=1, max_size=20),  # blank after stripping
    st.text(min_size=MAX_PROMPT_CHARS + 1, max_size=MAX_PROMPT_CHARS + 200).filter(
        lambda t: len(t.strip()) > MAX_PROMPT_CHARS
    ),
    st.integers(),
    st.floats(allow_nan=False),
    st.none(),
    st.lists(st.text(max_size=5), max_size=3),
    st.booleans(),
)
bad_ratios = st.one_of(
    st.text(max_size=10).filter(lambda t: t not in ASPECT_RATIOS and t != ""),
    st.integers(),
    st.floats(allow_nan=False),
    st.lists(st.sampled_from(ASPECT_RATIOS), min_size=1, max_size=2),
)
bad_people = st.one_of(
    st.text(max_size=15).filter(lambda t: t not in PERSON_GENERATION and t != ""),
    st.integers(),
    st.booleans(),
)
good_prompts = st.text(min_size=1, max_size=200).filter(lambda t: t.strip() and len(t.strip()) <= MAX_PROMPT_CHARS)


@given(prompt=bad_prompts)
@FIXTURES
def test_bad_prompts_never_leave_the_machine(imagen_emulator, prompt):
    with pytest.raises(InvalidInputError, match="prompt"):
        CloudflareWorkersAIHook().generate_image(prompt)
    assert imagen_emulator.api_requests == 0


@given(prompt=good_prompts, ratio=bad_ratios)
@FIXTURES
def test_bad_aspect_ratios_name_the_allowed_values(imagen_emulator, prompt, ratio):
    with pytest.raises(InvalidInputError) as info:
        CloudflareWorkersAIHook().generate_image(prompt, aspect_ratio=ratio)
    assert "aspect_ratio" in str(info.value)
    if isinstance(ratio, str):
        assert "must be one of 1:1, 3:4, 4:3, 9:16, 16:9" in str(info.value)
    assert imagen_emulator.api_requests == 0


@given(prompt=good_prompts, people=bad_people)
@FIXTURES
def test_bad_person_generation_names_the_allowed_values(imagen_emulator, prompt, people):
    with pytest.raises(InvalidInputError, match="person_generation") as info:
        CloudflareWorkersAIHook().generate_image(prompt, person_generation=people)
    if isinstance(people, str):
        assert "must be one of dont_allow, allow_adult, allow_all" in str(info.value)
    assert imagen_emulator.api_requests == 0


@given(key=st.text(min_size=1, max_size=20).filter(lambda k: k not in ImagenInput.model_fields))
@settings(max_examples=40, deadline=None)
def test_unknown_input_keys_are_rejected(key):
    with pytest.raises(InvalidInputError, match="unknown field"):
        ImagenInput.parse(prompt="a cat", **{key: "x"})


def _not_digits(text: str) -> bool:
    return not text.strip().isdigit()


bad_gateway = st.one_of(
    st.fixed_dictionaries(
        # A rendered template's digits ("3600") are a valid TTL: only other text is bad.
        {"cache_ttl": st.one_of(st.integers(max_value=-1), st.text(max_size=3).filter(_not_digits), st.floats())}
    ),
    st.fixed_dictionaries({"request_timeout": st.integers(max_value=0)}),
    st.fixed_dictionaries({"skip_cache": st.one_of(st.text(max_size=3), st.integers(min_value=2))}),
    st.fixed_dictionaries(
        # '-' and '_' are allowed in a gateway id (so "-" is a valid one): only other characters make it bad.
        {"gateway_id": st.text(min_size=1, max_size=10).filter(lambda t: not re.fullmatch(r"[A-Za-z0-9_-]+", t))}
    ),
    st.fixed_dictionaries(
        {"metadata": st.dictionaries(st.text(min_size=1, max_size=4), st.integers(), min_size=6, max_size=8)}
    ),
    st.dictionaries(
        st.text(min_size=1, max_size=10).filter(lambda k: k not in GatewayOptions.model_fields),
        st.integers(),
        min_size=1,
        max_size=2,
    ),
    st.one_of(st.text(max_size=5), st.integers(), st.lists(st.integers(), max_size=2)),
)


@given(options=bad_gateway)
@FIXTURES
def test_bad_gateway_options_never_leave_the_machine(imagen_emulator, options):
    with pytest.raises(InvalidInputError, match="gateway options"):
        CloudflareWorkersAIHook().generate_image("a cat", gateway_options=options)
    assert imagen_emulator.api_requests == 0


def _operator(**kwargs):
    with DAG(dag_id="bad", schedule=None, start_date=datetime(2025, 1, 1)):
        return ImagenGenerateImageOperator(task_id="t", prompt="{{ params.prompt }}", **kwargs)


@given(
    field_value=st.one_of(
        st.tuples(st.just("prompt"), bad_prompts),
        st.tuples(st.just("aspect_ratio"), bad_ratios),
        st.tuples(st.just("person_generation"), bad_people),
        st.tuples(st.just("gateway_options"), bad_gateway),
        st.tuples(st.just("output_path"), st.one_of(st.just("   "), st.integers(), st.just("1nvalid://x"))),
    ),
    deferrable=st.booleans(),
)
@FIXTURES
def test_values_invalid_only_after_templating_fail_in_execute_before_any_request(
    imagen_emulator, field_value, deferrable
):
    field, value = field_value
    op = _operator(deferrable=deferrable)
    op.prompt = "a cat"
    setattr(op, field, value)  # what rendering produced
    with pytest.raises(InvalidInputError) as info:
        op.execute({"ti": mock.Mock()})
    assert field.replace("_options", " options") in str(info.value)
    assert imagen_emulator.api_requests == 0


@given(
    prompts=st.lists(st.one_of(good_prompts, bad_prompts), min_size=1, max_size=6).filter(
        lambda ps: any(not (isinstance(p, str) and p.strip() and len(p.strip()) <= MAX_PROMPT_CHARS) for p in ps)
    )
)
@FIXTURES
def test_a_batch_with_any_bad_prompt_sends_nothing(imagen_emulator, prompts):
    with DAG(dag_id="bad_batch", schedule=None, start_date=datetime(2025, 1, 1)):
        op = ImagenGenerateImagesOperator(task_id="t", prompts=["{{ params.p }}"])
    op.prompts = prompts
    with pytest.raises(InvalidInputError, match=r"prompts\[\d+\]"):
        op.execute({"ti": mock.Mock()})
    assert imagen_emulator.api_requests == 0


@pytest.mark.parametrize(
    ("conn", "message"),
    [
        ({"conn_type": "cloudflare_workers_ai", "extra": {"account_id": "a"}}, "the API token is missing"),
        ({"conn_type": "cloudflare_workers_ai", "password": "t"}, "extra 'account_id' is missing"),
        (
            {"conn_type": "cloudflare_workers_ai", "password": "t", "host": "gopher://x", "extra": {"account_id": "a"}},
            "host must be an http(s) URL",
        ),
        (
            {"conn_type": "cloudflare_workers_ai", "password": "t", "extra": {"account_id": "a", "timeout": "-1"}},
            "extra 'timeout'",
        ),
    ],
)
def test_a_missing_or_malformed_connection_sends_nothing(imagen_emulator, monkeypatch, conn, message):
    import json

    from airflow_provider_imagen.exceptions import ConnectionConfigError

    monkeypatch.setenv("AIRFLOW_CONN_BROKEN_CF", json.dumps(conn))
    with pytest.raises(ConnectionConfigError, match=re.escape(message)) as info:
        CloudflareWorkersAIHook("broken_cf").generate_image("a cat")
    assert "Connection 'broken_cf'" in str(info.value)
    assert imagen_emulator.api_requests == 0
