"""
A retry policy for Airflow 3.3's ``retry_policy=``: which Imagen failures fail at once, wait, or use ``retries``.

.. code-block:: text

    FAIL      a refusal no retry can change: content policy, daily allocation used up (3036), a refused token,
              a bad request, a model not available via unified billing; any AirflowFailException
    RETRY     rate limited or out of capacity (429, 3040, 2021 wholesale, provider_unavailable, 503), and a
              call whose image may already be billed (outcome unknown): after min_delay, doubled per try,
              at most max_delay, or longer when the error's Retry-After asks for it
    DEFAULT   anything else: the task's own retries and retry_delay

The hook has already re-sent what it could within one try (:mod:`~airflow_provider_imagen._cloudflare.retry`);
this policy decides between tries. It can fail a task earlier or change the wait, never add tries beyond
``retries``. A retry of an image that may be billed pays nothing again: the next try reuses what the task
instance recorded, or re-sends with the same AI Gateway cache key (see the durable docs), and the wait lets a
generation still running finish into the gateway's cache first.

Retry policies exist from Airflow 3.3 (``airflow.sdk.definitions.retry_policy``). On 3.1 and 3.2 this module
imports, :data:`RETRY_POLICIES_SUPPORTED` is false, and building an :class:`ImagenRetryPolicy` raises an
:class:`~airflow_provider_imagen.exceptions.ImagenError` saying so: those versions' operators take no
``retry_policy``.
"""

from __future__ import annotations

import hashlib
import logging
import math
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_provider_imagen._cloudflare.response import CAPACITY_CODES, classify, code_number
from airflow_provider_imagen.exceptions import (
    CloudflareRateLimitError,
    CloudflareServerError,
    CloudflareWorkersAIError,
    ImagenError,
    InvalidInputError,
)

try:
    from airflow.sdk.definitions.retry_policy import RetryDecision, RetryPolicy
except ImportError:  # Airflow 3.1-3.2: tasks take no retry_policy
    RETRY_POLICIES_SUPPORTED = False
    RetryPolicy = object  # type: ignore[misc,assignment]
else:
    RETRY_POLICIES_SUPPORTED = True

if TYPE_CHECKING:
    from airflow.sdk.definitions.context import Context

__all__ = ["RETRY_POLICIES_SUPPORTED", "ImagenRetryPolicy"]

log = logging.getLogger(__name__)

#: The class path :meth:`ImagenRetryPolicy.serialize` writes: literal, so a move of this class is a visible change.
CLASSPATH = "airflow_provider_imagen.retry_policy.ImagenRetryPolicy"
#: The version of the serialized fields. Fields are only ever added, with defaults, so every version reads.
SERIAL_VERSION = 1
#: Airflow's own cap on a retry delay (``MAX_RETRY_DELAY``, a day).
_LONGEST = 86400.0
#: How many explicit causes (``raise ... from err``) are followed to find the provider's error.
_CAUSE_DEPTH = 5


class ImagenRetryPolicy(RetryPolicy):
    """
    Decide, between tries, whether an Imagen task fails at once, retries after a longer wait, or uses ``retries``.

    Give it to any task that calls Imagen (the operators, ``@task.imagen``, your own hook calls), with
    ``retries`` set: the policy cannot add tries.

    :param min_delay: seconds before the first retry after a rate limit, a capacity refusal or an outcome
        unknown; doubled for each later try. 30 s by default: Cloudflare's limits are per minute.
    :param max_delay: the longest wait, in seconds, a ``Retry-After`` included (default 600, at most a day).
    :raises InvalidInputError: if a delay is not a positive number of seconds, or ``min_delay`` exceeds
        ``max_delay``.
    :raises ImagenError: on Airflow before 3.3, which has no retry policies (see
        :data:`RETRY_POLICIES_SUPPORTED`).
    """

    def __init__(self, *, min_delay: float = 30.0, max_delay: float = 600.0) -> None:
        if not RETRY_POLICIES_SUPPORTED:
            from airflow import __version__

            raise ImagenError(
                f"ImagenRetryPolicy needs Airflow 3.3 or later, where tasks take retry_policy=; this is Airflow "
                f"{__version__}. Build one only when airflow_provider_imagen.retry_policy.RETRY_POLICIES_SUPPORTED "
                "is true."
            )
        self.min_delay = _seconds("min_delay", min_delay)
        self.max_delay = _seconds("max_delay", max_delay)
        if self.min_delay > self.max_delay:
            raise InvalidInputError(
                f"Invalid min_delay: must be at most max_delay ({self.max_delay:g} s), got {self.min_delay:g}"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(min_delay={self.min_delay:g}, max_delay={self.max_delay:g})"

    def evaluate(
        self,
        exception: BaseException,
        try_number: int,
        max_tries: int,
        context: Context | None = None,
    ) -> RetryDecision:
        """
        Return what to do after ``exception`` failed try ``try_number``; never raises (DEFAULT if anything fails).

        :param exception: what the try raised; a provider error it was raised from (``raise ... from err``)
            decides when the exception itself is not one.
        :param try_number: the try that failed, from 1: the wait doubles with it.
        :param max_tries: the task's ``max_tries``: with no try left, DEFAULT (the task fails), not a wait.
        :param context: the task's context: when it has a task instance, the wait is spread by up to a quarter,
            the same for each try of it, so that mapped tasks refused together do not retry together.
        """
        try:
            return self._evaluate(exception, try_number, max_tries, context)
        except Exception:
            log.exception("ImagenRetryPolicy could not evaluate %s; the task's own retries apply", type(exception))
            return RetryDecision.default()

    def _evaluate(
        self, exception: BaseException, try_number: int, max_tries: int, context: Context | None
    ) -> RetryDecision:
        error = _provider_error(exception)
        name = _describe(error)
        if isinstance(exception, AirflowFailException) or isinstance(error, AirflowFailException):
            return RetryDecision.fail(f"{name}: a retry would be refused again; failing without retries")
        if not isinstance(error, CloudflareWorkersAIError):
            return RetryDecision.default()
        why = _why_wait(error)
        if why is None or not (max_tries and try_number <= max_tries):  # Airflow's test for a try left
            return RetryDecision.default()
        delay = self.delay(try_number, error.retry_after, context)
        return RetryDecision.retry(timedelta(seconds=delay), f"{name}: {why}; retrying in {delay:.0f} s")

    def delay(self, try_number: int, retry_after: float | None = None, context: Context | None = None) -> float:
        """
        Return the seconds to wait after try ``try_number``: ``min_delay`` doubled per try, at most ``max_delay``.

        :param try_number: the try that failed, from 1.
        :param retry_after: the server's ``Retry-After``: waited when longer, up to ``max_delay``.
        :param context: spreads the wait by up to a quarter, per task instance and try (see :meth:`evaluate`).
        """
        wait = self.min_delay * 2.0 ** min(max(try_number, 1) - 1, 32)
        wait += wait * _spread(context, try_number) / 4
        if retry_after is not None and math.isfinite(retry_after):
            wait = max(wait, retry_after)
        return min(wait, self.max_delay)

    def serialize(self) -> dict[str, Any]:
        """Return this policy as JSON: its class path, a schema version, and its delays."""
        return {
            "__type": CLASSPATH,
            "__version": SERIAL_VERSION,
            "min_delay": self.min_delay,
            "max_delay": self.max_delay,
        }

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> ImagenRetryPolicy:
        """
        Build the policy :meth:`serialize` described; missing fields take their defaults, unknown ones are ignored.

        :param data: the serialized policy, untrusted: each delay is checked as the constructor checks it.
        :raises InvalidInputError: if ``data`` is not a policy of this class, or holds an invalid delay.
        """
        if not isinstance(data, dict) or data.get("__type", CLASSPATH) != CLASSPATH:
            kind = data.get("__type") if isinstance(data, dict) else type(data).__name__
            raise InvalidInputError(f"Invalid serialized retry policy: expected a {CLASSPATH} dict, got {kind!r}")
        fields = {key: data[key] for key in ("min_delay", "max_delay") if key in data}
        return cls(**fields)


def _seconds(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(f"Invalid {field}: must be a number of seconds, got {value!r}")
    if not (0 < value <= _LONGEST):
        raise InvalidInputError(f"Invalid {field}: must be more than 0 and at most {_LONGEST:g} seconds, got {value}")
    return float(value)


def _provider_error(exception: BaseException) -> BaseException:
    """Return the first provider error among ``exception`` and its explicit causes, else ``exception``."""
    seen: BaseException | None = exception
    for _ in range(_CAUSE_DEPTH):
        if seen is None or isinstance(seen, ImagenError):
            break
        seen = seen.__cause__
    error = seen if isinstance(seen, ImagenError) else exception
    if type(error) is CloudflareWorkersAIError and (error.status_code is not None or error.code is not None):
        # The base type, rebuilt from an unknown trigger event: its status and code say what it is.
        fresh = classify(error.status_code, error.code, error.message, retry_after=error.retry_after)
        return fresh.replace(maybe_billed=error.maybe_billed, model=error.model, attempts=error.attempts)
    return error


def _why_wait(error: CloudflareWorkersAIError) -> str | None:
    """Say why ``error`` is worth a longer wait before the next try, or ``None`` if it is not."""
    if isinstance(error, CloudflareRateLimitError) and error.retryable:
        if code_number(error.code) in CAPACITY_CODES:
            return "the model is out of capacity"
        return "rate limited"
    if error.maybe_billed:
        return "the image may already be billed: a durable retry reuses it rather than paying again"
    if error.code == "provider_unavailable" or (isinstance(error, CloudflareServerError) and error.status_code == 503):
        return "the model cannot serve now"
    return None


def _describe(error: BaseException) -> str:
    if not isinstance(error, CloudflareWorkersAIError):
        return type(error).__name__
    where = ", ".join(
        part
        for part in (
            f"HTTP {error.status_code}" if error.status_code is not None else "",
            f"code {error.code}" if error.code is not None else "",
        )
        if part
    )
    return f"{type(error).__name__} ({where})" if where else type(error).__name__


def _spread(context: Context | None, try_number: int) -> float:
    """Return a fraction in [0, 1) fixed by the task instance and try: no two mapped tasks wait alike."""
    ti = context.get("ti") if context else None
    if ti is None:
        return 0.0
    key = (
        "/".join(str(getattr(ti, name, "")) for name in ("dag_id", "task_id", "run_id", "map_index")) + f"/{try_number}"
    )
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") / 2**32
