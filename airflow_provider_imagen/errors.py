"""The exception types: what a caller can branch on. Which of them are retried is decided in ``retry.py``."""

from __future__ import annotations

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException


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
        #: The models tried before this one and why each was passed over (see ``fallback.py``).
        self.skipped_models: list[dict[str, object]] = []
        #: Whether an attempt of the call may have made a billed image: no other model is then paid for one.
        self.maybe_billed = isinstance(self, GenerationOutcomeUnknownError)
        super().__init__(message)

    def describe(self) -> str:
        """The error in words, without the model and attempts ``str()`` adds."""
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
        for skipped in getattr(self, "skipped_models", ()):  # absent from errors pickled by older versions
            context.append(f"after falling back from {skipped.get('model')}: {skipped.get('reason')}")
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


class GenerationOutcomeUnknownError(CloudflareServerError):
    """
    The request may have reached Cloudflare, but no usable answer came back (a read timeout, a connection
    lost after sending, a malformed success body): the image may have been generated and billed.

    Re-sent only when the re-send cannot be billed again (see ``retry.py``), never blindly.
    """

    #: Whether Cloudflare had begun to answer (so the generation was complete) before the answer was lost.
    answer_started = False


class StorageError(CloudflareWorkersAIError):
    """A generated image could not be written to ``output_path``; the message says what was kept."""


class SpendLimitError(AirflowFailException, CloudflareWorkersAIError):
    """
    Generating more would exceed the task's ``max_images``; the message says how many were generated.

    Fails the task without retries: every try of the task instance counts toward the same limit.
    """
