"""Operators: render templates, call the hook, return a small JSON value. The hook does the work."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_imagen.constants import (
    ASPECT_RATIOS,
    DEFAULT_CONN_ID,
    IMAGEN_4,
    MAX_PROMPT_CHARS,
    PERSON_GENERATION,
)
from airflow_provider_imagen.errors import InvalidInputError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context

    from airflow_provider_imagen.hooks import CloudflareWorkersAIHook


def _is_literal(value: object) -> bool:
    """True for a plain string that no template will change (checked at DAG parse time)."""
    return isinstance(value, str) and "{{" not in value and "{%" not in value


def check_literal_inputs(prompt: object, aspect_ratio: object, person_generation: object) -> None:
    """
    Reject plainly wrong literal arguments when the DAG is parsed, long before a run.

    Templated values and XCom references are checked after rendering, in ``execute()``.
    """
    if _is_literal(prompt):
        assert isinstance(prompt, str)
        if not prompt.strip():
            raise InvalidInputError("Invalid Imagen input: prompt: must not be blank")
        if len(prompt.strip()) > MAX_PROMPT_CHARS:
            raise InvalidInputError(
                f"Invalid Imagen input: prompt: at most {MAX_PROMPT_CHARS} characters, got {len(prompt)}"
            )
    for name, value, allowed in (
        ("aspect_ratio", aspect_ratio, ASPECT_RATIOS),
        ("person_generation", person_generation, PERSON_GENERATION),
    ):
        if _is_literal(value) and value not in allowed:
            raise InvalidInputError(
                f"Invalid Imagen input: {name}: must be one of {', '.join(allowed)} (got {value!r})"
            )


class ImagenGenerateImageOperator(BaseOperator):
    """
    Generate an image with Imagen 4 on Cloudflare Workers AI and return its URL.

    The URL is the task's XCom ``return_value``; a JSON summary (model, inputs, size, attempts, timing)
    is pushed under the key ``image``. The returned URL may expire: download what you need to keep.

    .. code-block:: python

        ImagenGenerateImageOperator(
            task_id="puppy",
            prompt="A golden retriever puppy playing in autumn leaves",
            aspect_ratio="16:9",
        )

    :param prompt: what to draw (templated).
    :param aspect_ratio: ``1:1``, ``3:4``, ``4:3``, ``9:16`` or ``16:9`` (templated).
    :param person_generation: ``dont_allow``, ``allow_adult`` or ``allow_all`` (templated).
    :param cloudflare_conn_id: the Cloudflare Workers AI connection.
    :param model: the model id (templated); ``google/imagen-4`` by default.
    :param gateway_options: AI Gateway options (templated dict): ``gateway_id``, ``cache_ttl``,
        ``skip_cache``, ``cache_key``, ``metadata``, ``request_timeout``, ``collect_log``.
    :param timeout: seconds to wait for Cloudflare; the connection's ``timeout`` (default 180) when unset.
    :param max_retries: retries of transient failures; the connection's ``max_retries`` (default 3) when unset.
    """

    template_fields: Sequence[str] = ("prompt", "aspect_ratio", "person_generation", "model", "gateway_options")
    ui_color = "#f6821f"  # Cloudflare orange

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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_literal_inputs(prompt, aspect_ratio, person_generation)
        self.prompt = prompt
        self.aspect_ratio = aspect_ratio
        self.person_generation = person_generation
        self.cloudflare_conn_id = cloudflare_conn_id
        self.model = model
        self.gateway_options = gateway_options
        self.timeout = timeout
        self.max_retries = max_retries

    def get_hook(self) -> CloudflareWorkersAIHook:
        """A fresh hook for this task's connection and limits."""
        from airflow_provider_imagen.hooks import CloudflareWorkersAIHook

        return CloudflareWorkersAIHook(
            cloudflare_conn_id=self.cloudflare_conn_id, timeout=self.timeout, max_retries=self.max_retries
        )

    def execute(self, context: Context) -> str | None:
        with self.get_hook() as hook:
            image = hook.generate_image(
                self.prompt,
                self.aspect_ratio or None,
                self.person_generation or None,
                model=self.model,
                gateway_options=self.gateway_options,
            )
        if image.url is None:
            raise InvalidInputError(
                f"Model {image.model!r} returned the image as bytes, not a URL; this operator returns URLs. "
                "Use google/imagen-4, or call CloudflareWorkersAIHook.generate_image() and store image.data."
            )
        context["ti"].xcom_push(key="image", value=image.to_xcom())
        self.log.info(
            "Generated a %s image with %s in %.1f s (%d attempt(s)): %s",
            image.aspect_ratio or "default-ratio",
            image.model,
            image.elapsed_seconds,
            image.attempts,
            image.url,
        )
        return image.url
