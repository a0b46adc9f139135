"""
Exceptions, and the one place that decides which Cloudflare answers are worth a retry.

The table follows Cloudflare's documented codes (see the README's "Reliability" section):
capacity (3040), wholesale throttling (2021 "Wholesale rate limit exceeded"), 408, 5xx,
connection errors and ``provider_unavailable`` are retried; everything else is final.
"""

from __future__ import annotations

import email.utils
import time

try:  # Airflow >= 3.2 moved the exceptions into the task SDK.
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
except ImportError:  # pragma: no cover - Airflow 3.1
    from airflow.exceptions import AirflowException, AirflowFailException  # type: ignore[no-redef]


class InvalidInputError(AirflowFailException, ValueError):
    """
    A parameter was rejected before any request was sent.

    Derives from ``AirflowFailException`` so a task fails at once instead of burning its retries:
    the same input would be rejected again.
    """


class ConnectionConfigError(AirflowFailException, ValueError):
    """The Airflow connection lacks a field the provider needs, or holds a malformed one."""


class CloudflareWorkersAIError(AirflowException):
    """
    A Cloudflare Workers AI call failed.

    :param message: Cloudflare's message, or what went wrong on the wire.
    :param status_code: the HTTP status, or ``None`` when no response arrived.
    :param code: Cloudflare's error code (e.g. ``3040``) or a failed state's code
        (e.g. ``"provider_unavailable"``).
    :param retryable: whether a new attempt could succeed.
    :param retry_after: seconds the server asked us to wait (``Retry-After``), if it did.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: int | str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        self.message = message
        self.status_code = status_code
        self.code = code
        self.retryable = retryable
        self.retry_after = retry_after
        self.attempts = 1
        self.model: str | None = None
        super().__init__(message)

    def __str__(self) -> str:
        parts = []
        if self.status_code is not None:
            parts.append(f"HTTP {self.status_code}")
        if self.code is not None:
            parts.append(f"code {self.code}")
        where = ", ".join(parts)
        text = f"Cloudflare Workers AI error ({where}): {self.message}" if where else self.message
        context = []
        if self.model:
            context.append(f"model {self.model}")
        if self.attempts > 1:
            context.append(f"after {self.attempts} attempts")
        return f"{text} [{', '.join(context)}]" if context else text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status_code={self.status_code!r}, code={self.code!r}, "
            f"message={self.message!r}, retryable={self.retryable!r})"
        )

    def __reduce__(self):  # type: ignore[no-untyped-def]
        # Keep keyword-only state when pickled (Airflow ships exceptions between processes).
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type[CloudflareWorkersAIError], state: dict[str, object]) -> CloudflareWorkersAIError:
    err = cls.__new__(cls)
    Exception.__init__(err, state.get("message"))
    err.__dict__.update(state)
    return err


class CloudflareAuthenticationError(CloudflareWorkersAIError):
    """The token was rejected (401, 403, codes 10000 and 2009): fix the connection."""


class CloudflareRateLimitError(CloudflareWorkersAIError):
    """Throttled or out of capacity (429, 3040, 3036, 2021 wholesale). ``retryable`` tells which."""


class CloudflareBadRequestError(CloudflareWorkersAIError):
    """Cloudflare refused the request itself (400, 404, 413, unknown model, billing mode): never retried."""


class CloudflareServerError(CloudflareWorkersAIError):
    """A transient failure: 408, 5xx, a dropped connection, a timeout, or a malformed body."""


class ImageGenerationFailedError(CloudflareWorkersAIError):
    """The model answered but produced no image (``state: "Failed"``, an unknown state, no image)."""


class ImageDownloadError(CloudflareWorkersAIError):
    """The generated image could not be fetched from its URL, or is not an acceptable image."""


# Codes from Cloudflare's documentation, grouped by what a caller should do about them.
_CAPACITY = {3040}
_DAILY_LIMIT = {3036}
_AUTH = {10000, 2009}
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


def _as_int(code: int | str | None) -> int | None:
    if isinstance(code, int):
        return code
    if isinstance(code, str) and code.isdigit():
        return int(code)
    return None


def error_to_dict(error: BaseException) -> dict[str, object]:
    """A JSON-safe description of ``error``, for trigger events and batch results."""
    payload: dict[str, object] = {"type": type(error).__name__, "message": getattr(error, "message", str(error))}
    if isinstance(error, CloudflareWorkersAIError):
        payload.update(
            status_code=error.status_code,
            code=error.code,
            retryable=error.retryable,
            attempts=error.attempts,
            model=error.model,
        )
    return payload


def error_from_dict(payload: dict[str, object] | None) -> Exception:
    """Rebuild the typed exception :func:`error_to_dict` described, so a task fails as the sync path would."""
    payload = payload or {}
    cls = _ERROR_TYPES.get(str(payload.get("type")), CloudflareWorkersAIError)
    message = str(payload.get("message") or "unknown error")
    if not issubclass(cls, CloudflareWorkersAIError):
        return cls(message)
    code = payload.get("code")
    status = payload.get("status_code")
    error = cls(
        message,
        status_code=status if isinstance(status, int) else None,
        code=code if isinstance(code, (int, str)) else None,
        retryable=bool(payload.get("retryable")),
    )
    attempts = payload.get("attempts")
    error.attempts = attempts if isinstance(attempts, int) else 1
    model = payload.get("model")
    error.model = model if isinstance(model, str) else None
    return error


_ERROR_TYPES: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (
        CloudflareWorkersAIError,
        CloudflareAuthenticationError,
        CloudflareRateLimitError,
        CloudflareBadRequestError,
        CloudflareServerError,
        ImageGenerationFailedError,
        ImageDownloadError,
        InvalidInputError,
        ConnectionConfigError,
    )
}
