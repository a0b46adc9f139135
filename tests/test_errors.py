from __future__ import annotations

import pickle
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_provider_imagen._cloudflare.response import classify, parse_retry_after
from airflow_provider_imagen.exceptions import (
    CloudflareAuthenticationError,
    CloudflareBadRequestError,
    CloudflareQuotaExceededError,
    CloudflareRateLimitError,
    CloudflareServerError,
    CloudflareWorkersAIError,
    ContentPolicyError,
    ImageGenerationFailedError,
)

# The retry table of Cloudflare's documentation, row by row: (status, code, message) -> (type, retry?)
TABLE = [
    (429, 3040, "Capacity temporarily exceeded, please try again.", CloudflareRateLimitError, True),
    (429, 3036, "daily free allocation used up", CloudflareQuotaExceededError, False),
    (429, 2021, "Wholesale rate limit exceeded", CloudflareRateLimitError, True),
    (402, 2021, "Wholesale rate limit exceeded", CloudflareRateLimitError, True),
    (200, 2021, "Wholesale rate limit exceeded", CloudflareRateLimitError, True),
    (400, 2021, "This model is not available via unified billing", CloudflareBadRequestError, False),
    (400, 5004, "Invalid data", CloudflareBadRequestError, False),
    (400, 3003, "Incomplete request", CloudflareBadRequestError, False),
    (400, 5007, "No such model", CloudflareBadRequestError, False),
    (400, 7003, "Input error", CloudflareBadRequestError, False),
    (401, 2009, "Provider credentials rejected", CloudflareAuthenticationError, False),
    (403, 10000, "Authentication error", CloudflareAuthenticationError, False),
    (404, 3042, "Invalid model ID", CloudflareBadRequestError, False),
    (404, 7003, "Model not found", CloudflareBadRequestError, False),
    (408, 3007, "Request timeout", CloudflareServerError, True),
    (408, 3008, "Request aborted", CloudflareServerError, True),
    (413, 3006, "Request is too large", CloudflareBadRequestError, False),
    (500, None, "Internal Server Error", CloudflareServerError, True),
    (502, None, "Bad Gateway", CloudflareServerError, True),
    (503, None, "Service Unavailable", CloudflareServerError, True),
    (504, None, "Gateway Timeout", CloudflareServerError, True),
    (429, None, "Too Many Requests", CloudflareRateLimitError, True),
    (200, "provider_unavailable", "upstream down", ImageGenerationFailedError, True),
    (200, "content_policy_violation", "blocked", ContentPolicyError, False),
]


@pytest.mark.parametrize(("status", "code", "message", "error_type", "retryable"), TABLE)
def test_every_documented_answer_gets_its_type_and_retry_decision(status, code, message, error_type, retryable):
    error = classify(status, code, message)
    assert type(error) is error_type
    assert error.retryable is retryable
    assert isinstance(error, CloudflareWorkersAIError)
    assert (error.status_code, error.code, error.message) == (status, code, message)


#: Answers a task retry cannot change: they fail the task at once, on every supported Airflow, instead of
#: burning its retries (and paying for each refused generation again).
FINAL_TYPES = (
    CloudflareAuthenticationError,
    CloudflareBadRequestError,
    CloudflareQuotaExceededError,
    ContentPolicyError,
)


@pytest.mark.parametrize(("status", "code", "message", "error_type", "retryable"), TABLE)
def test_answers_that_cannot_succeed_fail_the_task_without_retries(status, code, message, error_type, retryable):
    error = classify(status, code, message)
    assert isinstance(error, AirflowFailException) is (error_type in FINAL_TYPES)
    if isinstance(error, AirflowFailException):
        assert not retryable


def test_message_names_status_code_and_cloudflare_message():
    error = classify(429, 3040, "Capacity temporarily exceeded")
    error.model, error.attempts = "google/imagen-4", 4
    assert str(error) == (
        "Cloudflare Workers AI error (HTTP 429, code 3040): Capacity temporarily exceeded "
        "[model google/imagen-4, after 4 attempts]"
    )


def test_errors_survive_pickling_with_their_fields():
    error = classify(503, None, "down", retry_after=3.0)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is CloudflareServerError
    assert (copy.status_code, copy.retryable, copy.retry_after, str(copy)) == (503, True, 3.0, str(error))


def test_retry_after_in_seconds_and_as_http_date():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("0.5") == 0.5
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(later, now=now.timestamp()) == pytest.approx(30.0)
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now=now.timestamp()) == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
