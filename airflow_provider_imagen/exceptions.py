"""
The exceptions this provider raises: one root, and the tree a caller can branch on.

.. code-block:: text

    ImagenError                          (AirflowException) anything this provider raises
    ├── InvalidInputError                (+ AirflowFailException, ValueError) refused before any request
    ├── ConnectionConfigError            (+ AirflowFailException, ValueError) the connection cannot be used
    └── CloudflareWorkersAIError         a call, a download or a store failed; carries code, status, attempts
        ├── CloudflareAuthenticationError    (+ AirflowFailException) 401, 403, codes 10000, 2009
        ├── CloudflareRateLimitError         429, 3040, 2021 wholesale; ``retryable`` tells which
        │   └── CloudflareQuotaExceededError     (+ AirflowFailException) 3036, the daily allocation
        ├── CloudflareBadRequestError        (+ AirflowFailException) 400, 404, 413, unknown model, billing mode
        ├── CloudflareServerError            408, 5xx, a dropped connection, a malformed body
        │   └── GenerationOutcomeUnknownError    the image may exist and be billed: never re-sent blindly
        ├── ImageGenerationFailedError       the model answered without an image
        │   └── ContentPolicyError               (+ AirflowFailException) the safety filters refused the prompt
        ├── ImageDownloadError               the image could not be fetched from its URL
        ├── StorageError                     the image could not be stored; the message says what was kept
        ├── ImagesRefusedError               (+ AirflowFailException) a batch's failures all final
        └── SpendLimitError                  (+ AirflowFailException) ``max_images`` or ``max_cost_usd`` reached

Errors derived from ``AirflowFailException`` fail a task at once instead of burning its retries: the same
input would be refused (and a refused generation may be billed) again. Which of the others are retried is decided in
:mod:`~airflow_provider_imagen._cloudflare.retry`; which Cloudflare answer becomes which exception, in
:mod:`~airflow_provider_imagen._cloudflare.response`.

Every field is set at construction; :meth:`CloudflareWorkersAIError.replace` makes a copy with more context.
A trigger sends its error to the task as JSON (:func:`error_to_dict`), and the task raises it again as the same
type (:func:`error_from_dict`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException, AirflowNotFoundException

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "CloudflareAuthenticationError",
    "CloudflareBadRequestError",
    "CloudflareQuotaExceededError",
    "CloudflareRateLimitError",
    "CloudflareServerError",
    "CloudflareWorkersAIError",
    "ConnectionConfigError",
    "ContentPolicyError",
    "GenerationOutcomeUnknownError",
    "ImageDownloadError",
    "ImageGenerationFailedError",
    "ImagenError",
    "ImagesRefusedError",
    "InvalidInputError",
    "SpendLimitError",
    "StorageError",
    "error_from_dict",
    "error_to_dict",
]

_E = TypeVar("_E", bound="CloudflareWorkersAIError")


class ImagenError(AirflowException):
    """Anything this provider raises: catch it to handle every failure of an Imagen step."""


class InvalidInputError(AirflowFailException, ImagenError, ValueError):
    """
    A parameter was refused before any request was sent; the message names the field and what is allowed.

    Fails a task at once instead of burning its retries: the same input would be refused again.
    """


class ConnectionConfigError(AirflowFailException, ImagenError, ValueError):
    """The Airflow connection lacks a field the provider needs, or holds a malformed one."""


class CloudflareWorkersAIError(ImagenError):
    """
    A Cloudflare Workers AI call failed.

    :param message: Cloudflare's message, or what went wrong on the wire.
    :param status_code: the HTTP status, or ``None`` when no response arrived.
    :param code: Cloudflare's error code (e.g. ``3040``) or a failed state's code
        (e.g. ``"provider_unavailable"``).
    :param retryable: whether a new attempt could succeed.
    :param retry_after: seconds the server asked us to wait (``Retry-After``), if it did.
    :param model: the model called, once known.
    :param attempts: the requests the call sent, rate-limit refusals included.
    :param skipped_models: the models tried before this one and why each was passed over
        (:mod:`~airflow_provider_imagen._cloudflare.fallback`), as JSON dicts.
    :param maybe_billed: whether an attempt of the call may have made a billed image, so that no other model is
        paid for one; always true for :class:`GenerationOutcomeUnknownError`.
    :param answer_started: whether Cloudflare had begun to answer (so the generation was complete) before the
        answer was lost.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: int | str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        model: str | None = None,
        attempts: int = 1,
        skipped_models: Sequence[Mapping[str, object]] = (),
        maybe_billed: bool = False,
        answer_started: bool = False,
    ) -> None:
        self.message = message
        self.status_code = status_code
        self.code = code
        self.retryable = retryable
        self.retry_after = retry_after
        self.model = model
        self.attempts = attempts
        self.skipped_models: list[dict[str, object]] = [dict(skipped) for skipped in skipped_models]
        self.maybe_billed = maybe_billed or isinstance(self, GenerationOutcomeUnknownError)
        self.answer_started = answer_started
        super().__init__(message)

    def fields(self) -> dict[str, Any]:
        """Return the keyword arguments that build this error again."""
        return {
            "status_code": self.status_code,
            "code": self.code,
            "retryable": self.retryable,
            "retry_after": self.retry_after,
            "model": self.model,
            "attempts": self.attempts,
            "skipped_models": self.skipped_models,
            "maybe_billed": self.maybe_billed,
            "answer_started": self.answer_started,
        }

    def replace(self: _E, **changes: Any) -> _E:
        """
        Return a copy of this error with some fields changed, raised from the same cause with the same traceback.

        :param changes: fields as :class:`CloudflareWorkersAIError` takes them, e.g. ``model``, ``attempts``, and
            ``message``.
        """
        message = changes.pop("message", self.message)
        copy = type(self)(message, **{**self.fields(), **changes})
        copy.__cause__, copy.__suppress_context__ = self.__cause__, True
        copy.__traceback__ = self.__traceback__
        return copy

    def describe(self) -> str:
        """Return the error in words, without the model and attempts ``str()`` adds."""
        parts = []
        if self.status_code is not None:
            parts.append(f"HTTP {self.status_code}")
        if self.code is not None:
            parts.append(f"code {self.code}")
        where = ", ".join(parts)
        return f"Cloudflare Workers AI error ({where}): {self.message}" if where else self.message

    def __str__(self) -> str:
        text = self.describe()
        context = []
        if self.model:
            context.append(f"model {self.model}")
        if self.attempts > 1:
            context.append(f"after {self.attempts} attempts")
        for skipped in self.skipped_models:
            context.append(f"after falling back from {skipped.get('model')}: {skipped.get('reason')}")
        return f"{text} [{', '.join(context)}]" if context else text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status_code={self.status_code!r}, code={self.code!r}, "
            f"message={self.message!r}, retryable={self.retryable!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only fields survive pickling (Airflow ships exceptions between processes).
        return (_rebuild, (type(self), self.message, self.fields()))


def _rebuild(cls: type[CloudflareWorkersAIError], message: str, fields: dict[str, Any]) -> CloudflareWorkersAIError:
    return cls(message, **fields)


class CloudflareAuthenticationError(AirflowFailException, CloudflareWorkersAIError):
    """
    The token was refused (401, 403, codes 10000 and 2009): fix the connection named in the message.

    Fails a task at once: no retry can succeed with the same token.
    """


class CloudflareRateLimitError(CloudflareWorkersAIError):
    """Throttled or out of capacity (429, 3040, 2021 wholesale); ``retryable`` tells which."""


class CloudflareQuotaExceededError(AirflowFailException, CloudflareRateLimitError):
    """
    The account's daily allocation is used up (429, code 3036).

    Fails a task at once: a retry today would be refused again.
    """


class CloudflareBadRequestError(AirflowFailException, CloudflareWorkersAIError):
    """
    Cloudflare refused the request itself (400, 404, 413, unknown model, billing mode).

    Never retried, and fails a task at once: the same request would be refused again.
    """


class CloudflareServerError(CloudflareWorkersAIError):
    """A transient failure: 408, 5xx, a dropped connection, a timeout, or a malformed body."""


class ImageGenerationFailedError(CloudflareWorkersAIError):
    """The model answered but produced no image (``state: "Failed"``, an unknown state, no image)."""


class ContentPolicyError(AirflowFailException, ImageGenerationFailedError):
    """
    The model's safety filters refused the prompt.

    Fails a task at once: the same prompt would be refused (and billed) again.
    """


class ImagesRefusedError(AirflowFailException, CloudflareWorkersAIError):
    """
    Every prompt of a batch that failed was refused in a way no retry can change (input, policy, quota).

    Fails a task at once; the message lists each prompt and its reason.
    """


class ImageDownloadError(CloudflareWorkersAIError):
    """The generated image could not be fetched from its URL, or is not an acceptable image."""


class GenerationOutcomeUnknownError(CloudflareServerError):
    """
    The request may have reached Cloudflare, but no usable answer came back: the image may be billed.

    A read timeout, a connection lost after sending, a malformed success body. Re-sent only when the re-send
    cannot be billed again (:func:`~airflow_provider_imagen._cloudflare.retry.retry_policy`), never blindly.
    """


class StorageError(CloudflareWorkersAIError):
    """A generated image could not be written to ``output_path``; the message says what was kept."""


class SpendLimitError(AirflowFailException, CloudflareWorkersAIError):
    """
    Generating more would exceed the task's ``max_images`` or ``max_cost_usd``; the message says what was spent.

    Fails the task without retries: every try of the task instance counts toward the same limit.
    """


# --- Trigger events ----------------------------------------------------------------------------------------


def error_to_dict(error: BaseException, conn_id: str | None = None) -> dict[str, object]:
    """
    Describe ``error`` as JSON, for trigger events and batch results.

    :param error: any exception; types outside this module travel as :class:`CloudflareWorkersAIError`
        with their type's name in the message.
    :param conn_id: named in the message of errors that did not come from Cloudflare's answer.
    """
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    if conn_id and not isinstance(error, CloudflareWorkersAIError) and conn_id not in message:
        message = f"Connection {conn_id!r}: {message}"
    name = type(error).__name__
    payload: dict[str, object] = {"type": name if name in _ERROR_TYPES else "CloudflareWorkersAIError"}
    if name not in _ERROR_TYPES:
        message = f"{name}: {message}"
    payload["message"] = message
    if isinstance(error, CloudflareWorkersAIError):
        payload.update(
            status_code=error.status_code,
            code=error.code,
            retryable=error.retryable,
            attempts=error.attempts,
            model=error.model,
            skipped_models=error.skipped_models,
            maybe_billed=error.maybe_billed,
            retry_after=error.retry_after,
            answer_started=error.answer_started,
        )
    return payload


def error_from_dict(payload: Mapping[str, object] | None) -> Exception:
    """
    Rebuild the typed exception :func:`error_to_dict` described, so a task fails as the sync path would.

    :param payload: the event's ``error``; anything malformed becomes a :class:`CloudflareWorkersAIError`. An
        error that does not say it was unbilled counts as maybe billed.
    """
    payload = payload or {}
    cls = _ERROR_TYPES.get(str(payload.get("type")), CloudflareWorkersAIError)
    message = str(payload.get("message") or "unknown error")
    if not issubclass(cls, CloudflareWorkersAIError):
        return cls(message)
    code, status, attempts = payload.get("code"), payload.get("status_code"), payload.get("attempts")
    model, skipped, retry_after = payload.get("model"), payload.get("skipped_models"), payload.get("retry_after")
    return cls(
        message,
        status_code=status if isinstance(status, int) else None,
        code=code if isinstance(code, (int, str)) else None,
        retryable=bool(payload.get("retryable")),
        attempts=attempts if isinstance(attempts, int) else 1,
        model=model if isinstance(model, str) else None,
        skipped_models=[s for s in skipped if isinstance(s, dict)] if isinstance(skipped, list) else [],
        maybe_billed=payload.get("maybe_billed") is not False,
        retry_after=retry_after
        if isinstance(retry_after, (int, float)) and not isinstance(retry_after, bool)
        else None,
        answer_started=payload.get("answer_started") is True,
    )


def _subclasses(cls: type[Exception]) -> list[type[Exception]]:
    return [cls, *(sub for direct in cls.__subclasses__() for sub in _subclasses(direct))]


_ERROR_TYPES: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (
        *_subclasses(CloudflareWorkersAIError),
        InvalidInputError,
        ConnectionConfigError,
        AirflowNotFoundException,
    )
}
