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
  not count against ``max_retries``. It is re-sent at the pace ``pacing.py`` learns, for as long as the call's
  rate-limit budget (``max_rate_limit_wait`` seconds from its first refusal) lasts.
"""

from __future__ import annotations

import email.utils
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from tenacity import RetryCallState, retry_if_exception, wait_exponential, wait_random

from airflow_provider_imagen.errors import (
    CloudflareAuthenticationError,
    CloudflareBadRequestError,
    CloudflareRateLimitError,
    CloudflareServerError,
    CloudflareWorkersAIError,
    ConnectionConfigError,
    GenerationOutcomeUnknownError,
    ImageGenerationFailedError,
)

if TYPE_CHECKING:
    from logging import Logger

# --- Error answers -----------------------------------------------------------------------------------

# Codes from Cloudflare's documentation, grouped by what a caller should do about them.
_CAPACITY = {3040}
_DAILY_LIMIT = {3036}
_AUTH = {10000, 10001, 2009, 1000}  # 1000: "Invalid API Token"
_BAD_REQUEST = {5004, 3003, 5007, 7003, 3042, 3006}
_TRANSIENT = {3007, 3008}


def classify(
    status_code: int | None,
    code: int | str | None,
    message: str,
    *,
    retry_after: float | None = None,
) -> CloudflareWorkersAIError:
    """
    Build the exception for an error answer, with its retry decision.

    Codes win over statuses: a 429 with code 3036 (daily allocation used up) is final although
    429 alone would be retried.
    """
    numeric = _as_int(code)
    lowered = message.lower()

    def error(cls: type[CloudflareWorkersAIError], retryable: bool) -> CloudflareWorkersAIError:
        return cls(message, status_code=status_code, code=code, retryable=retryable, retry_after=retry_after)

    if numeric == 2021 or "wholesale rate limit" in lowered:
        if "wholesale rate limit" in lowered:
            return error(CloudflareRateLimitError, True)
        # "not available via unified billing": the account must bring its own provider key.
        return error(CloudflareBadRequestError, False)
    if numeric in _DAILY_LIMIT:
        return error(CloudflareRateLimitError, False)
    if numeric in _CAPACITY:
        return error(CloudflareRateLimitError, True)
    if numeric in _AUTH or status_code in (401, 403):
        return error(CloudflareAuthenticationError, False)
    if numeric in _TRANSIENT or status_code == 408:
        return error(CloudflareServerError, True)
    if numeric in _BAD_REQUEST or status_code in (400, 404, 405, 413, 422):
        return error(CloudflareBadRequestError, False)
    if status_code == 429:
        return error(CloudflareRateLimitError, True)
    if code == "provider_unavailable":
        return error(ImageGenerationFailedError, True)
    if status_code is not None and status_code >= 500:
        return error(CloudflareServerError, True)
    if status_code is not None and 200 <= status_code < 300:
        # An error body on a 2xx (``success: false``, ``state: "Failed"``) with a code we do not know.
        return error(ImageGenerationFailedError, False)
    return error(CloudflareWorkersAIError, False)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds, from either form the HTTP spec allows (seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def is_rate_limited(exc: BaseException | None) -> bool:
    """Whether ``exc`` is a refusal by a rate limit that waiting clears: nothing ran, nothing is billed."""
    return isinstance(exc, CloudflareRateLimitError) and exc.retryable


def is_capacity(exc: BaseException | None) -> bool:
    """Whether ``exc`` says the model is out of capacity (3040), rather than that we send too fast."""
    return isinstance(exc, CloudflareRateLimitError) and _as_int(exc.code) in _CAPACITY


def is_unavailable(exc: BaseException | None) -> bool:
    """
    Whether ``exc``, raised once a model's retries were spent, says the model cannot serve now, so that another
    model may: out of capacity or throttled past the call's rate-limit budget (3040, 429, wholesale 2021),
    ``provider_unavailable``, HTTP 503, or not available via unified billing (2021). Never an input or
    credentials error, nor a daily allocation used up (the account's, whichever model), nor a call any of whose
    attempts may have made a billed image (a read timeout, an answer lost after it started).
    """
    if not isinstance(exc, CloudflareWorkersAIError) or getattr(exc, "maybe_billed", True):
        return False
    if isinstance(exc, CloudflareRateLimitError):
        return exc.retryable
    if isinstance(exc, CloudflareBadRequestError):
        return _as_int(exc.code) == 2021
    return exc.code == "provider_unavailable" or (exc.status_code == 503 and isinstance(exc, CloudflareServerError))


@dataclass
class CallRecord:
    """What the attempts of one call met: whether any of them may have made a (billed) image."""

    maybe_billed: bool = False


def annotate(err: CloudflareWorkersAIError, model: str, attempts: int, call: CallRecord) -> None:
    """Note on ``err`` the model called, the requests sent (rate-limit refusals included), and what they met."""
    err.model = model
    err.attempts = max(attempts, 1)
    err.maybe_billed = err.maybe_billed or call.maybe_billed


def _as_int(code: int | str | None) -> int | None:
    if isinstance(code, int):
        return code
    if isinstance(code, str) and code.isdigit():
        return int(code)
    return None


# --- Failures on the wire ----------------------------------------------------------------------------

#: Never sent: no connection was made, so Cloudflare cannot have seen (or billed) the request.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def transport_error(exc: httpx.TransportError, host: str) -> Exception:
    """The error for a request to ``host`` that got no HTTP answer, with its retry decision."""
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, httpx.UnsupportedProtocol):
        return ConnectionConfigError(f"the connection's host {host} is not usable: {detail}")
    if _caused_by_tls(exc):
        # A wrong scheme (https to an http server) or a TLS version or certificate the peer refuses: no retry
        # can mend it.
        return ConnectionConfigError(
            f"the TLS handshake with {host} failed ({detail}): check the scheme (http or https) and the "
            "host of the connection's API base URL"
        )
    if isinstance(exc, _NOT_SENT):
        return CloudflareServerError(f"could not reach {host}: {detail}", retryable=True)
    what = "timed out waiting for" if isinstance(exc, httpx.TimeoutException) else "lost"
    error = GenerationOutcomeUnknownError(
        f"the request to {host} {what} its answer after it may have reached Cloudflare ({detail}); "
        "the image may have been generated and billed",
        retryable=False,
    )
    # h11's words when the status line and headers arrived and the body was then cut short.
    error.answer_started = isinstance(exc, httpx.RemoteProtocolError) and (
        "message body" in str(exc) or "chunked" in str(exc)
    )
    return error


def _caused_by_tls(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(5):  # httpx -> httpcore -> ssl: a short chain
        if seen is None:
            return False
        # A peer hanging up mid-handshake (EOF) can be load, not configuration: that one stays retryable.
        if isinstance(seen, ssl.SSLError) and not isinstance(seen, (ssl.SSLZeroReturnError, ssl.SSLEOFError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def is_idempotent(request: httpx.Request, cloudflare_model: bool) -> bool:
    """
    Whether re-sending ``request`` cannot be billed again: it carries an AI Gateway cache key and goes
    through a gateway (third-party models always do; Cloudflare's own only with ``cf-aig-gateway-id``).
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
    :param max_wait: the longest single wait. A ``Retry-After`` longer than this ends the retries instead.
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
        """A refusal that is re-sent at the account's pace without counting as an attempt."""
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
        if isinstance(exc, GenerationOutcomeUnknownError):
            call.maybe_billed = True
            return idempotent and exc.answer_started
        if not isinstance(exc, CloudflareWorkersAIError) or not exc.retryable:
            return False
        # A server asking for a longer pause than we allow: stop now rather than hold the slot.
        return exc.retry_after is None or exc.retry_after <= max_wait

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
