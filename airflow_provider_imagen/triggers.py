"""
The deferrable path: the Cloudflare call made in the triggerer's event loop, never blocking it, and the
events it sends back to the task (errors travel as JSON and are rebuilt as the same typed exception).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowNotFoundException
from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_imagen import errors
from airflow_provider_imagen.constants import DEFAULT_CONN_ID, IMAGEN_4
from airflow_provider_imagen.errors import InvalidInputError
from airflow_provider_imagen.rules import first_bytes_model, model_chain

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


class ImagenGenerateImageTrigger(BaseTrigger):
    """
    Generate one image with the async hook and fire a single event: ``{"status": "success", "image": {...}}``
    or ``{"status": "error", "error": {...}}``.

    The serialized kwargs hold only the connection id and the generation's inputs: the trigger reads the
    connection itself (asynchronously), so no secret is stored with it. All triggers of one triggerer share
    one HTTP connection pool per connection.

    :param cloudflare_conn_id: the Cloudflare Workers AI connection.
    :param prompt: what to draw.
    :param aspect_ratio: ``1:1``, ``3:4``, ``4:3``, ``9:16`` or ``16:9``.
    :param person_generation: ``dont_allow``, ``allow_adult`` or ``allow_all``.
    :param model: the model id.
    :param fallback_models: models to try in turn when the one before is unavailable (``fallback.py``); models
        that answer with a URL only, as an event carries no image bytes.
    :param fallback_follows: the task tries more models on its worker if these are unavailable (models that answer
        with bytes): the last model here is then passed over as the others are, once its retries are spent.
    :param gateway_options: AI Gateway options, as a dict.
    :param timeout: seconds to wait for Cloudflare (the connection's when unset).
    :param max_retries: retries of transient failures (the connection's when unset).
    :param retry_backoff: seconds before the first retry.
    :param max_retry_wait: the longest single wait between attempts.
    :param requests_per_minute: the account's rate limit, if known (the connection's when unset): every trigger
        of the triggerer that calls the account shares one pace (see ``pacing.py``).
    """

    def __init__(
        self,
        *,
        prompt: str,
        aspect_ratio: str | None = None,
        person_generation: str | None = None,
        cloudflare_conn_id: str = DEFAULT_CONN_ID,
        model: str = IMAGEN_4,
        fallback_models: list[str] | None = None,
        fallback_follows: bool = False,
        gateway_options: dict[str, Any] | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        retry_backoff: float = 1.0,
        max_retry_wait: float = 60.0,
        requests_per_minute: float | None = None,
    ) -> None:
        super().__init__()
        # The same rules as the hook's, before the trigger is stored; and no model whose image (bytes) an event
        # could not carry: it would be billed and lost.
        chain = model_chain(model, fallback_models)
        found = first_bytes_model(chain)
        if found is not None:
            index, field = found
            raise InvalidInputError(
                f"Invalid {field} for a trigger: {chain[index]!r} answers with image bytes, which a trigger event "
                "does not carry; generate it in the task (the operator does so when it follows unavailable models)"
            )
        self.prompt = prompt
        self.aspect_ratio = aspect_ratio
        self.person_generation = person_generation
        self.cloudflare_conn_id = cloudflare_conn_id
        self.model = model
        self.fallback_models = list(fallback_models) if fallback_models else None
        self.fallback_follows = fallback_follows
        self.gateway_options = gateway_options
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.max_retry_wait = max_retry_wait
        self.requests_per_minute = requests_per_minute

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "prompt": self.prompt,
                "aspect_ratio": self.aspect_ratio,
                "person_generation": self.person_generation,
                "cloudflare_conn_id": self.cloudflare_conn_id,
                "model": self.model,
                "fallback_models": self.fallback_models,
                "fallback_follows": self.fallback_follows,
                "gateway_options": self.gateway_options,
                "timeout": self.timeout,
                "max_retries": self.max_retries,
                "retry_backoff": self.retry_backoff,
                "max_retry_wait": self.max_retry_wait,
                "requests_per_minute": self.requests_per_minute,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow_provider_imagen.hooks import CloudflareWorkersAIHook

        try:
            async with CloudflareWorkersAIHook(
                self.cloudflare_conn_id,
                timeout=self.timeout,
                max_retries=self.max_retries,
                retry_backoff=self.retry_backoff,
                max_retry_wait=self.max_retry_wait,
                requests_per_minute=self.requests_per_minute,
                share_async_client=True,
            ) as hook:
                image = await hook.agenerate_image(
                    self.prompt,
                    self.aspect_ratio,
                    self.person_generation,
                    model=self.model,
                    fallback_models=self.fallback_models,
                    gateway_options=self.gateway_options,
                    fallback_follows=self.fallback_follows,
                )
        except Exception as err:
            # Every failure, a missing connection included, fails the task through one event, never the
            # triggerer; the message names the connection when the cause is not Cloudflare's answer. The inputs
            # go back too: a task that goes on with models that answer in bytes needs them.
            error = error_to_dict(err, conn_id=self.cloudflare_conn_id)
            inputs = {key: getattr(self, key) for key in ("prompt", "aspect_ratio", "person_generation")}
            yield TriggerEvent({"status": "error", "error": error, "inputs": inputs})
            return
        if image.url is None:  # a model outside the documented ones, that answered with bytes after all
            message = f"model {image.model!r} returned image bytes; deferrable mode needs a model that returns a URL"
            yield TriggerEvent({"status": "error", "error": {"type": "InvalidInputError", "message": message}})
            return
        yield TriggerEvent({"status": "success", "image": image.to_xcom()})


def error_to_dict(error: BaseException, conn_id: str | None = None) -> dict[str, object]:
    """
    A JSON-safe description of ``error``, for trigger events and batch results.

    :param conn_id: named in the message of errors that did not come from Cloudflare's answer.
    """
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    if conn_id and not isinstance(error, errors.CloudflareWorkersAIError) and conn_id not in message:
        message = f"Connection {conn_id!r}: {message}"
    name = type(error).__name__
    payload: dict[str, object] = {"type": name if name in _ERROR_TYPES else "CloudflareWorkersAIError"}
    if name not in _ERROR_TYPES:
        message = f"{name}: {message}"
    payload["message"] = message
    if isinstance(error, errors.CloudflareWorkersAIError):
        payload.update(
            status_code=error.status_code,
            code=error.code,
            retryable=error.retryable,
            attempts=error.attempts,
            model=error.model,
            skipped_models=error.skipped_models,
            maybe_billed=error.maybe_billed,
        )
    return payload


def error_from_dict(payload: dict[str, object] | None) -> Exception:
    """Rebuild the typed exception :func:`error_to_dict` described, so a task fails as the sync path would."""
    payload = payload or {}
    cls = _ERROR_TYPES.get(str(payload.get("type")), errors.CloudflareWorkersAIError)
    message = str(payload.get("message") or "unknown error")
    if not issubclass(cls, errors.CloudflareWorkersAIError):
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
    skipped = payload.get("skipped_models")
    error.skipped_models = [s for s in skipped if isinstance(s, dict)] if isinstance(skipped, list) else []
    error.maybe_billed = error.maybe_billed or payload.get("maybe_billed") is not False
    return error


def _subclasses(cls: type[Exception]) -> list[type[Exception]]:
    return [cls, *(sub for direct in cls.__subclasses__() for sub in _subclasses(direct))]


_ERROR_TYPES: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (
        *_subclasses(errors.CloudflareWorkersAIError),
        errors.InvalidInputError,
        errors.ConnectionConfigError,
        AirflowNotFoundException,
    )
}
