"""
Which failures are retried, how long to wait, and what is never re-sent.

Every Imagen call may be billed, so the rules are:

- Cloudflare's documented transient answers are retried: capacity (3040), wholesale throttling (2021
  "Wholesale rate limit exceeded"), 408, 5xx and ``provider_unavailable``; everything else is final.
- A request that provably never reached Cloudflare (it could not connect, or waited for a pooled
  connection) is retried freely.
- A request that may have reached it may have produced a billed image. It is re-sent only when the re-send
  cannot be billed again: Cloudflare had already answered (the status line arrived, then the body was cut
  or garbled, so the generation was complete) and the request carries an AI Gateway cache key through a
  gateway, so the re-send gets the cached answer. After a read timeout, or a connection closed before any
  answer, the first generation may still be running, and AI Gateway does not merge a re-send with a request
  in flight: the call fails with :class:`GenerationOutcomeUnknownError`, saying the image may be billed.
- Configuration errors (a wrong scheme, a TLS handshake that cannot succeed) fail at once.
- A refusal by a rate limit (429, capacity 3040, wholesale throttling) ran nothing and is not billed: it does
  not count against ``max_retries``. It is re-sent at the pace :mod:`.pacing` learns, for as long as the call's
  rate-limit budget (``max_rate_limit_wait`` seconds from its first refusal) lasts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tenacity import RetryCallState, retry_if_exception, wait_exponential, wait_random

from airflow_provider_imagen import _metrics
from airflow_provider_imagen._cloudflare.response import CAPACITY_CODES, code_number
from airflow_provider_imagen.exceptions import (
    CloudflareAuthenticationError,
    CloudflareBadRequestError,
    CloudflareRateLimitError,
    CloudflareServerError,
    CloudflareWorkersAIError,
    GenerationOutcomeUnknownError,
)

if TYPE_CHECKING:
    from logging import Logger

    import httpx


def is_rate_limited(exc: BaseException | None) -> bool:
    """Whether ``exc`` is a refusal by a rate limit that waiting clears: nothing ran, nothing is billed."""
    return isinstance(exc, CloudflareRateLimitError) and exc.retryable


def is_capacity(exc: BaseException | None) -> bool:
    """Whether ``exc`` says the model is out of capacity (3040), rather than that we send too fast."""
    return isinstance(exc, CloudflareRateLimitError) and code_number(exc.code) in CAPACITY_CODES


def is_unavailable(exc: BaseException | None) -> bool:
    """
    Tell whether ``exc``, raised once a model's retries were spent, says the model cannot serve now.

    If so, another model may serve: out of capacity or throttled past the call's rate-limit budget (3040, 429, wholesale
    2021), ``provider_unavailable``, HTTP 503, or not available via unified billing (2021). Never an input or
    credentials error, nor a daily allocation used up (the account's, whichever model), nor a call any of whose attempts
    may have made a billed image (a read timeout, an answer lost after it started).
    """
    if not isinstance(exc, CloudflareWorkersAIError) or getattr(exc, "maybe_billed", True):
        return False
    if isinstance(exc, CloudflareRateLimitError):
        return exc.retryable
    if isinstance(exc, CloudflareBadRequestError):
        return code_number(exc.code) == 2021
    return exc.code == "provider_unavailable" or (exc.status_code == 503 and isinstance(exc, CloudflareServerError))


@dataclass
class CallRecord:
    """What the attempts of one call met: whether any of them may have made a (billed) image."""

    maybe_billed: bool = False


def annotate(
    err: CloudflareWorkersAIError, model: str, attempts: int, call: CallRecord, conn_id: str
) -> CloudflareWorkersAIError:
    """
    Return ``err`` with the model called, the requests sent (rate-limit refusals included), and what they met.

    :param err: the call's last error.
    :param model: the model called.
    :param attempts: the requests sent.
    :param call: what the attempts met.
    :param conn_id: the connection whose token was used: a refused token's error names it, so it can be fixed.
    """
    changes: dict[str, object] = {}
    if isinstance(err, CloudflareAuthenticationError):
        changes["message"] = (
            f"{err.message}: the token of connection {conn_id!r} was refused; check that it is current and has the "
            "Workers AI and AI Gateway permissions"
        )
    maybe_billed = err.maybe_billed or call.maybe_billed
    return err.replace(model=model, attempts=max(attempts, 1), maybe_billed=maybe_billed, **changes)


def is_idempotent(request: httpx.Request, cloudflare_model: bool) -> bool:
    """
    Tell whether re-sending ``request`` cannot be billed again.

    It cannot when it carries an AI Gateway cache key and goes through a gateway (third-party models always do;
    Cloudflare's own only with ``cf-aig-gateway-id``).
    """
    headers = request.headers
    if "cf-aig-cache-key" not in headers or headers.get("cf-aig-skip-cache") == "true":
        return False
    return not cloudflare_model or "cf-aig-gateway-id" in headers


def backoff_wait(first: float, longest: float) -> Any:
    """Exponential backoff from ``first`` seconds up to ``longest``, plus up to ``first`` of jitter."""
    # Composed from parts every tenacity >= 8.2 has: wait_exponential_jitter's keywords changed in 9.2.
    return wait_exponential(multiplier=first, max=longest) + wait_random(0, first)


# --- The policy --------------------------------------------------------------------------------------


def retry_policy(
    *,
    attempts: int,
    backoff: float,
    max_wait: float,
    rate_limit_wait: float,
    idempotent: bool,
    log: Logger,
    model: str,
    call: CallRecord | None = None,
    capacity_is_attempt: bool = False,
) -> dict[str, Any]:
    """
    Keyword arguments for tenacity's ``Retrying`` / ``AsyncRetrying``.

    :param attempts: attempts in all, the first included.
    :param backoff: seconds before the first retry; doubles each time, with jitter.
    :param max_wait: the longest single wait. A ``Retry-After`` longer than this ends the retries instead, except a
        rate limit's, which is honoured while ``rate_limit_wait`` lasts.
    :param rate_limit_wait: seconds, from a call's first refusal by a rate limit, during which refusals are
        re-sent without counting as attempts.
    :param idempotent: whether the request carries a cache key that makes a re-send of a completed
        generation free (see :func:`is_idempotent`).
    :param log: where each retry is logged, with its attempt, its cause and the wait.
    :param model: the model called, for the log.
    :param call: notes whether an attempt may have made a billed image (see :func:`is_unavailable`).
    :param capacity_is_attempt: count "capacity exceeded" (3040) refusals as attempts: a model another model
        may stand in for is spent when its retries are, not after ``rate_limit_wait``.
    """
    exponential = backoff_wait(backoff, max_wait)
    refused: list[float] = []  # when each refusal by a rate limit came, this call
    call = call if call is not None else CallRecord()

    def paced(exc: BaseException | None) -> bool:
        """Tell whether ``exc`` is a refusal re-sent at the account's pace without counting as an attempt."""
        return is_rate_limited(exc) and not (capacity_is_attempt and is_capacity(exc))

    def log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        sleep = state.next_action.sleep if state.next_action else 0.0
        if paced(exc):
            log.info(
                "Cloudflare Workers AI call to %s was refused by the rate limit (not billed, not counted as an "
                "attempt): %s; retrying in %.1f s, at the account's pace",
                model,
                exc,
                sleep,
            )
            return
        log.warning(
            "Cloudflare Workers AI call to %s failed on attempt %d of %d: %s; retrying in %.1f s",
            model,
            state.attempt_number - len(refused),
            attempts,
            exc,
            sleep,
        )

    def stop(state: RetryCallState) -> bool:
        if paced(state.outcome.exception() if state.outcome else None):
            refused.append(time.monotonic())
            return refused[-1] - refused[0] >= rate_limit_wait
        return state.attempt_number - len(refused) >= attempts

    def should_retry(exc: BaseException) -> bool:
        _metrics.rate_limited(model, exc)  # every failed attempt comes here once
        if isinstance(exc, GenerationOutcomeUnknownError):
            call.maybe_billed = True
            return idempotent and exc.answer_started
        if not isinstance(exc, CloudflareWorkersAIError) or not exc.retryable:
            return False
        if exc.retry_after is None:
            return True
        # A server asking for a longer pause than we allow: stop now rather than hold the slot. A rate limit's
        # pause is allowed for as long as the call's rate-limit budget lasts too.
        if paced(exc):
            spent = time.monotonic() - refused[0] if refused else 0.0
            return exc.retry_after <= max(max_wait, rate_limit_wait - spent)
        return exc.retry_after <= max_wait

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return float(retry_after)
        return float(exponential(state))

    return {
        "stop": stop,
        "wait": wait,
        "retry": retry_if_exception(should_retry),
        "before_sleep": log_retry,
        "reraise": True,
    }
