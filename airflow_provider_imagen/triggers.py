"""The deferrable path: the Cloudflare call made in the triggerer's event loop, never blocking it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_imagen.constants import DEFAULT_CONN_ID, IMAGEN_4

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
    :param gateway_options: AI Gateway options, as a dict.
    :param timeout: seconds to wait for Cloudflare (the connection's when unset).
    :param max_retries: retries of transient failures (the connection's when unset).
    :param retry_backoff: seconds before the first retry.
    :param max_retry_wait: the longest single wait between attempts.
    """

    def __init__(
        self,
        *,
        prompt: str,
        aspect_ratio: str | None = None,
        person_generation: str | None = None,
        cloudflare_conn_id: str = DEFAULT_CONN_ID,
        model: str = IMAGEN_4,
        gateway_options: dict[str, Any] | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        retry_backoff: float = 1.0,
        max_retry_wait: float = 60.0,
    ) -> None:
        super().__init__()
        self.prompt = prompt
        self.aspect_ratio = aspect_ratio
        self.person_generation = person_generation
        self.cloudflare_conn_id = cloudflare_conn_id
        self.model = model
        self.gateway_options = gateway_options
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.max_retry_wait = max_retry_wait

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "prompt": self.prompt,
                "aspect_ratio": self.aspect_ratio,
                "person_generation": self.person_generation,
                "cloudflare_conn_id": self.cloudflare_conn_id,
                "model": self.model,
                "gateway_options": self.gateway_options,
                "timeout": self.timeout,
                "max_retries": self.max_retries,
                "retry_backoff": self.retry_backoff,
                "max_retry_wait": self.max_retry_wait,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow_provider_imagen.errors import CloudflareWorkersAIError, error_to_dict
        from airflow_provider_imagen.hooks import CloudflareWorkersAIHook

        hook = CloudflareWorkersAIHook(
            self.cloudflare_conn_id,
            timeout=self.timeout,
            max_retries=self.max_retries,
            retry_backoff=self.retry_backoff,
            max_retry_wait=self.max_retry_wait,
            share_async_client=True,
        )
        try:
            image = await hook.agenerate_image(
                self.prompt,
                self.aspect_ratio,
                self.person_generation,
                model=self.model,
                gateway_options=self.gateway_options,
            )
        except (CloudflareWorkersAIError, ValueError) as err:
            # ValueError covers bad input and a malformed connection: both fail the task, not the triggerer.
            yield TriggerEvent({"status": "error", "error": error_to_dict(err)})
            return
        if image.url is None:
            message = f"model {self.model!r} returned image bytes; deferrable mode needs a model that returns a URL"
            yield TriggerEvent({"status": "error", "error": {"type": "InvalidInputError", "message": message}})
            return
        yield TriggerEvent({"status": "success", "image": image.to_xcom()})
