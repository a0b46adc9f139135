"""
ImagenRetryPolicy decides between tries: the hook's real exceptions for the emulator's refusals, and a task run.

On Airflow 3.1-3.2 (no retry policies) only the import and the clear refusal to build one are checked.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from types import SimpleNamespace

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_provider_imagen.exceptions import (
    CloudflareRateLimitError,
    CloudflareWorkersAIError,
    ContentPolicyError,
    ImagenError,
    ImagesRefusedError,
    InvalidInputError,
    SpendLimitError,
    error_from_dict,
)
from airflow_provider_imagen.hooks import CloudflareWorkersAIHook
from airflow_provider_imagen.retry_policy import RETRY_POLICIES_SUPPORTED, ImagenRetryPolicy
from tests.conftest import REPO, register_dag

needs_3_3 = pytest.mark.skipif(not RETRY_POLICIES_SUPPORTED, reason="retry policies arrived in Airflow 3.3")


@pytest.mark.skipif(RETRY_POLICIES_SUPPORTED, reason="Airflow 3.3+ has retry policies")
def test_before_airflow_3_3_the_module_imports_and_building_a_policy_says_why_it_cannot():
    with pytest.raises(ImagenError, match=r"needs Airflow 3\.3 or later.*RETRY_POLICIES_SUPPORTED"):
        ImagenRetryPolicy()


# --- Decisions on the hook's real exceptions -----------------------------------------------------------------

FAIL, RETRY, DEFAULT = "fail", "retry", "default"

# emulator preset (and fault fields) -> (decision, seconds waited after try 1)
REFUSALS: dict[str, tuple[dict[str, object], str, float | None]] = {
    "content_policy": ({}, FAIL, None),
    "daily_limit": ({}, FAIL, None),  # 429 with code 3036
    "auth": ({}, FAIL, None),
    "provider_auth": ({}, FAIL, None),
    "invalid_data": ({}, FAIL, None),
    "no_such_model": ({}, FAIL, None),
    "too_large": ({}, FAIL, None),
    "unified_billing_unavailable": ({}, FAIL, None),
    "capacity": ({}, RETRY, 30.0),  # 429 with code 3040
    "capacity+retry-after": ({"retry_after": "45"}, RETRY, 45.0),  # a longer Retry-After wins
    "capacity+short-retry-after": ({"retry_after": "5"}, RETRY, 30.0),  # never less than min_delay
    "wholesale_throttle": ({}, RETRY, 30.0),
    "too_many_requests": ({"status": 429, "message": "Too Many Requests"}, RETRY, 30.0),
    "provider_unavailable": ({}, RETRY, 30.0),
    "unavailable": ({}, RETRY, 30.0),  # 503
    "drop": ({}, RETRY, 30.0),  # the answer was lost: the image may be billed
    "truncated": ({}, RETRY, 30.0),
    "internal": ({}, DEFAULT, None),  # 500: the task's own retry_delay
    "bad_gateway": ({}, DEFAULT, None),
    "unknown_state": ({}, DEFAULT, None),
    "no_image": ({}, DEFAULT, None),
}


def _refusal(imagen_emulator, case: str) -> Exception:
    """Return what the hook raises when the emulator answers ``case``: one request, no re-send."""
    fields, _, _ = REFUSALS[case]
    preset = case.split("+")[0]
    imagen_emulator.inject(None if preset == "too_many_requests" else preset, times=5, **fields)
    # One attempt, and a rate limit's first refusal ends the call: what a try raises once the hook gave up.
    hook = CloudflareWorkersAIHook(max_retries=0, retry_backoff=0.01, max_retry_wait=1, max_rate_limit_wait=0)
    with hook, pytest.raises(CloudflareWorkersAIError) as info:
        hook.generate_image("a cat", gateway_options={"skip_cache": True})  # no cache key: a lost answer stays lost
    assert imagen_emulator.api_requests == 1
    return info.value


@needs_3_3
@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_each_refusal_of_the_emulator_gets_its_decision(imagen_emulator, case):
    from airflow.sdk.definitions.retry_policy import RetryAction

    error = _refusal(imagen_emulator, case)
    _, action, delay = REFUSALS[case]
    decision = ImagenRetryPolicy().evaluate(error, try_number=1, max_tries=3)

    assert decision.action is RetryAction(action)
    assert decision.retry_delay == (timedelta(seconds=delay) if delay is not None else None)
    if action == FAIL:
        # Airflow fails these at once without asking (AirflowFailException); the policy agrees when asked.
        assert isinstance(error, AirflowFailException)
        assert decision.reason.startswith(type(error).__name__)
    if action == RETRY:
        assert decision.reason.endswith(f"retrying in {delay:.0f} s")


@needs_3_3
def test_the_wait_doubles_per_try_up_to_max_delay_and_a_retry_after_is_capped_too():
    policy = ImagenRetryPolicy()
    rate_limited = CloudflareRateLimitError("throttled", status_code=429, code=3040, retryable=True)
    waits = [policy.evaluate(rate_limited, n, max_tries=10).retry_delay.total_seconds() for n in range(1, 8)]
    assert waits == [30, 60, 120, 240, 480, 600, 600]
    assert policy.delay(3, retry_after=45) == 120  # the grown wait is longer than the server asked
    assert policy.delay(1, retry_after=86400) == 600  # a day's Retry-After: at most max_delay
    assert policy.delay(10_000) == 600
    assert ImagenRetryPolicy(min_delay=2, max_delay=5).delay(2) == 4


@needs_3_3
def test_mapped_tasks_refused_together_do_not_retry_together():
    policy = ImagenRetryPolicy()

    def context(map_index: int) -> dict[str, object]:
        ti = SimpleNamespace(dag_id="d", task_id="t", run_id="r", map_index=map_index)
        return {"ti": ti}

    waits = [policy.delay(1, context=context(index)) for index in range(20)]
    assert all(30 <= wait < 37.5 for wait in waits)  # spread by up to a quarter of the wait
    assert len(set(waits)) == 20
    assert policy.delay(1, context=context(3)) == waits[3]  # the same for every evaluation of one try


@needs_3_3
def test_with_no_try_left_the_policy_does_not_announce_a_retry():
    from airflow.sdk.definitions.retry_policy import RetryAction

    rate_limited = CloudflareRateLimitError("throttled", status_code=429, code=3040, retryable=True)
    policy = ImagenRetryPolicy()
    assert policy.evaluate(rate_limited, try_number=3, max_tries=2).action is RetryAction.DEFAULT
    assert policy.evaluate(rate_limited, try_number=1, max_tries=0).action is RetryAction.DEFAULT  # retries=0


@needs_3_3
@pytest.mark.parametrize(
    "error",
    [
        ImagesRefusedError("2 of 2 images failed"),
        SpendLimitError("max_images would be exceeded"),
        InvalidInputError("Invalid prompt"),
        AirflowFailException("stop"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_what_airflow_fails_without_asking_the_policy_fails_too_if_asked(error):
    from airflow.sdk.definitions.retry_policy import RetryAction

    assert ImagenRetryPolicy().evaluate(error, 1, 3).action is RetryAction.FAIL


def _raised_from(outer: Exception, cause: Exception) -> Exception:
    try:
        raise outer from cause
    except Exception as err:
        return err


@needs_3_3
def test_the_cause_of_a_wrapped_error_decides_and_anything_else_is_the_tasks_retries():
    from airflow.sdk.definitions.retry_policy import RetryAction

    policy = ImagenRetryPolicy()
    blocked = ContentPolicyError("blocked", code="content_policy_violation")
    throttled = CloudflareRateLimitError("throttled", status_code=429, retryable=True)
    assert policy.evaluate(_raised_from(RuntimeError("step failed"), blocked), 1, 3).action is RetryAction.FAIL
    assert policy.evaluate(_raised_from(KeyError("x"), throttled), 1, 3).action is RetryAction.RETRY
    assert policy.evaluate(ValueError("not ours"), 1, 3).action is RetryAction.DEFAULT
    # A batch whose failures a retry may fix says so only in words: the task's own retries apply.
    assert policy.evaluate(CloudflareWorkersAIError("1 of 3 images failed"), 1, 3).action is RetryAction.DEFAULT


@needs_3_3
def test_an_error_of_unknown_type_is_judged_by_its_status_and_code():
    from airflow.sdk.definitions.retry_policy import RetryAction

    # A trigger event naming a type this version does not know arrives as the root type, status and code kept.
    quota = error_from_dict({"type": "NewError", "message": "daily allocation", "status_code": 429, "code": 3036})
    capacity = error_from_dict({"type": "NewError", "message": "busy", "status_code": 429, "code": 3040})
    assert type(quota) is type(capacity) is CloudflareWorkersAIError
    policy = ImagenRetryPolicy()
    assert policy.evaluate(quota, 1, 3).action is RetryAction.FAIL
    assert policy.evaluate(capacity, 1, 3).action is RetryAction.RETRY


@needs_3_3
def test_evaluate_never_raises():
    from airflow.sdk.definitions.retry_policy import RetryAction

    broken = CloudflareRateLimitError("throttled", status_code=429, retryable=True, retry_after="soon")  # type: ignore[arg-type]
    assert ImagenRetryPolicy().evaluate(broken, 1, 3).action is RetryAction.DEFAULT


# --- Parameters and serialisation ----------------------------------------------------------------------------


@needs_3_3
def test_serialize_and_deserialize_round_trip_through_json():
    from airflow.sdk.definitions.retry_policy import RetryPolicy

    policy = ImagenRetryPolicy(min_delay=45, max_delay=900)
    data = json.loads(json.dumps(policy.serialize()))
    assert data == {
        "__type": "airflow_provider_imagen.retry_policy.ImagenRetryPolicy",
        "__version": 1,
        "min_delay": 45.0,
        "max_delay": 900.0,
    }
    copy = ImagenRetryPolicy.deserialize(data)
    assert isinstance(copy, RetryPolicy)
    assert (copy.min_delay, copy.max_delay, repr(copy)) == (
        45.0,
        900.0,
        "ImagenRetryPolicy(min_delay=45, max_delay=900)",
    )
    defaults = ImagenRetryPolicy.deserialize({"__type": data["__type"], "__version": 2, "later_field": True})
    assert (defaults.min_delay, defaults.max_delay) == (30.0, 600.0)


@needs_3_3
@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ImagenRetryPolicy(min_delay=0), "Invalid min_delay: must be more than 0"),
        (lambda: ImagenRetryPolicy(max_delay=float("nan")), "Invalid max_delay"),
        (lambda: ImagenRetryPolicy(max_delay=float("inf")), "Invalid max_delay"),
        (lambda: ImagenRetryPolicy(min_delay=True), "Invalid min_delay: must be a number of seconds"),
        (lambda: ImagenRetryPolicy(max_delay=2 * 86400), "at most 86400 seconds"),
        (lambda: ImagenRetryPolicy(min_delay=60, max_delay=30), "Invalid min_delay: must be at most max_delay"),
        (lambda: ImagenRetryPolicy.deserialize({"min_delay": "30"}), "Invalid min_delay"),
        (lambda: ImagenRetryPolicy.deserialize({"__type": "x.Other"}), "expected a airflow_provider_imagen"),
        (lambda: ImagenRetryPolicy.deserialize(["min_delay"]), "got 'list'"),
    ],
)
def test_invalid_delays_are_refused_naming_the_field(build, message):
    with pytest.raises(InvalidInputError, match=message.replace("(", r"\(")):
        build()


# --- In a DAG ------------------------------------------------------------------------------------------------


@needs_3_3
def test_a_dag_with_the_policy_serializes_the_same_every_parse_and_deserializes():
    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import DagSerialization

    from airflow_provider_imagen.operators import ImagenGenerateImageOperator

    def build() -> DAG:
        with DAG(
            dag_id="imagen_retry_policy_serialized",
            schedule=None,
            start_date=datetime(2025, 1, 1),
            default_args={"retries": 2, "retry_policy": ImagenRetryPolicy()},
        ) as dag:
            ImagenGenerateImageOperator(task_id="one", prompt="a cat", retry_policy=ImagenRetryPolicy(min_delay=60))
            ImagenGenerateImageOperator.partial(task_id="mapped").expand(prompt=["a", "b"])
        return dag

    first, second = DagSerialization.to_dict(build()), DagSerialization.to_dict(build())
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)  # no memory address in it
    assert "ImagenRetryPolicy" not in json.dumps(first)  # Airflow 3.3 stores a flag; the worker parses the file
    dag = DagSerialization.from_dict(first)
    assert dag.get_task("one").has_retry_policy
    assert dag.get_task("mapped").has_retry_policy


@needs_3_3
def test_a_rate_limited_task_is_retried_after_the_policys_wait(imagen_emulator, airflow_db, monkeypatch):
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.taskinstancehistory import TaskInstanceHistory
    from airflow.sdk import DAG
    from airflow.utils.session import create_session

    from airflow_provider_imagen._cloudflare import pacing
    from airflow_provider_imagen.operators import ImagenGenerateImageOperator

    # The scheduler's "when may it run again", recorded, then answered "now": the test does not wait 45 s.
    waits: list[float] = []
    next_retry = TaskInstance.next_retry_datetime

    def now_instead(ti: TaskInstance) -> datetime:
        waits.append((next_retry(ti) - ti.end_date).total_seconds())
        pacing.reset()  # the next try runs in this process: cold, as a new task process would be
        return ti.end_date

    monkeypatch.setattr(TaskInstance, "next_retry_datetime", now_instead)
    with DAG(dag_id="imagen_retry_policy_run", schedule=None, start_date=datetime(2025, 1, 1)) as dag:
        ImagenGenerateImageOperator(
            task_id="generate_image",
            prompt="a cat",
            max_rate_limit_wait=0,  # the first refusal ends the try: the policy decides the wait
            retries=2,
            retry_delay=timedelta(seconds=5),
            retry_policy=ImagenRetryPolicy(),
        )
    imagen_emulator.inject("capacity", retry_after="45")

    dag_run = register_dag(dag).test()

    assert dag_run.state == "success"
    assert set(waits) == {45.0}  # the server's Retry-After, longer than the policy's 30 s, not retry_delay's 5 s
    with create_session() as session:
        first_try = (
            session.query(TaskInstanceHistory).filter_by(dag_id=dag.dag_id, run_id=dag_run.run_id, try_number=1).one()
        )
        assert first_try.retry_delay_override == 45.0
        assert first_try.retry_reason == (
            "CloudflareRateLimitError (HTTP 429, code 3040): the model is out of capacity; retrying in 45 s"
        )
    # The refusal was not billed: one image, made by the second try.
    assert (imagen_emulator.api_requests, imagen_emulator.generations) == (2, 1)


def test_the_example_dags_with_retries_use_the_policy_where_airflow_has_it(airflow_db):
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 3.1
        from airflow.models.dagbag import DagBag

    dagbag = DagBag(dag_folder=str(REPO / "dags"))
    assert dagbag.import_errors == {}
    for dag_id in ("imagen_deferrable_mapped", "imagen_taskflow", "imagen_fallback"):
        for task in dagbag.get_dag(dag_id).tasks:
            assert task.retries == 2
            policy = getattr(task, "retry_policy", None)
            assert isinstance(policy, ImagenRetryPolicy) is RETRY_POLICIES_SUPPORTED, f"{dag_id}.{task.task_id}"


def _failed_batch(imagen_emulator, *faults: tuple[str, dict[str, object]]) -> CloudflareWorkersAIError:
    """Run a three-prompt batch whose first prompts meet ``faults``; return the error that fails its task."""
    from unittest import mock

    from airflow.sdk import DAG

    from airflow_provider_imagen.operators import ImagenGenerateImagesOperator

    for preset, fields in faults:
        imagen_emulator.inject(preset, **fields)
    with DAG(dag_id="imagen_batch_policy", schedule=None, start_date=datetime(2025, 1, 1)):
        op = ImagenGenerateImagesOperator(
            task_id="batch", prompts=["one", "two", "three"], max_concurrency=1, max_rate_limit_wait=0, max_retries=0
        )
    with pytest.raises(CloudflareWorkersAIError, match=rf"{len(faults)} of 3 images failed") as info:
        op.execute({"ti": mock.Mock()})
    return info.value


@needs_3_3
def test_a_batch_refused_only_by_rate_limits_waits_their_longest_retry_after(imagen_emulator):
    from airflow.sdk.definitions.retry_policy import RetryAction

    # Short waits: the batch's later prompts are paced after each refusal, and this test should not wait long.
    error = _failed_batch(imagen_emulator, ("capacity", {"retry_after": "3"}), ("capacity", {"retry_after": "2"}))
    decision = ImagenRetryPolicy(min_delay=1).evaluate(error, try_number=1, max_tries=3)

    assert isinstance(error, CloudflareRateLimitError) and error.retry_after == 3
    assert (decision.action, decision.retry_delay) == (RetryAction.RETRY, timedelta(seconds=3))
    assert imagen_emulator.generations == 1  # the third prompt's image; the refusals were not billed


@needs_3_3
def test_a_batch_with_a_final_refusal_and_a_lost_answer_waits_as_for_a_maybe_billed_image(imagen_emulator):
    from airflow.sdk.definitions.retry_policy import RetryAction

    error = _failed_batch(imagen_emulator, ("content_policy", {}), ("drop", {"times": 1}))
    decision = ImagenRetryPolicy().evaluate(error, try_number=1, max_tries=3)

    assert not isinstance(error, AirflowFailException) and error.maybe_billed
    assert (decision.action, decision.retry_delay) == (RetryAction.RETRY, timedelta(seconds=30))


def test_a_batch_refused_only_in_ways_no_retry_changes_fails_at_once(imagen_emulator):
    error = _failed_batch(imagen_emulator, ("content_policy", {}), ("daily_limit", {}))

    assert isinstance(error, ImagesRefusedError) and isinstance(error, AirflowFailException)
