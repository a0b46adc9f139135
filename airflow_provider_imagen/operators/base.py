"""The base class of the Imagen operators: the parameters they share, documented once, and the hook they use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_imagen._cloudflare.prices import check_max_cost
from airflow_provider_imagen._cloudflare.rules import first_bytes_model, model_chain
from airflow_provider_imagen._task.lineage import ImagenLineageMixin
from airflow_provider_imagen.constants import DEFAULT_CONN_ID, IMAGEN_4, MAX_IMAGE_BYTES
from airflow_provider_imagen.exceptions import InvalidInputError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context, ObjectStoragePath

    from airflow_provider_imagen.hooks.cloudflare import CloudflareWorkersAIHook


class ImagenBaseOperator(ImagenLineageMixin, BaseOperator):
    """
    Hold what every Imagen operator takes: the connection, the model chain, the inputs, storage and limits.

    Subclasses add what they generate (one prompt, many) and call :meth:`get_hook`; one try of the task is
    :class:`~airflow_provider_imagen._task.job.ImageJob`'s work.

    :param aspect_ratio: ``1:1``, ``3:4``, ``4:3``, ``9:16`` or ``16:9`` (templated).
    :param person_generation: ``dont_allow``, ``allow_adult`` or ``allow_all`` (templated).
    :param cloudflare_conn_id: the Cloudflare Workers AI connection.
    :param model: the model id (templated); ``google/imagen-4`` by default.
    :param fallback_models: models to try in turn when the one before is unavailable once its retries are
        spent (templated list), e.g. ``["@cf/black-forest-labs/flux-1-schnell"]`` (which needs ``output_path``);
        never after an input or credentials error. XCom ``image`` names the model that made the image and
        ``skipped_models`` why the others were passed over.
    :param gateway_options: AI Gateway options (templated dict): ``gateway_id``, ``cache_ttl``,
        ``skip_cache``, ``cache_key``, ``metadata``, ``request_timeout``, ``collect_log``.
    :param model_inputs: the model's own inputs (templated dict), such as ``{"seed": 42, "steps": 8}`` for FLUX.1
        [schnell] or ``{"image_size": "2K"}`` for Nano Banana: checked against the model's schema in the catalog
        (``docs/models.md``) when the DAG is parsed (literal values) and before any request (rendered ones). A fallback
        model that does not take one of them is sent the others, and the log says which it left out. Bytes (FLUX.2's
        ``input_image_0``) cannot travel to the triggerer: not with ``deferrable=True``.
    :param output_path: where to keep the images (templated): a file or a folder (ending in ``/``) as a local
        path, ``file://``, ``s3://conn_id@bucket/key``, ``gs://...`` or an ``ObjectStoragePath``. Pushes the
        XCom ``stored_uri``. Required for models that return bytes.
    :param max_image_bytes: refuse to store an image larger than this (default 100 MiB).
    :param timeout: seconds to wait for Cloudflare; the connection's ``timeout`` (default 180) when unset.
    :param max_retries: retries of transient failures; the connection's ``max_retries`` (default 3) when unset.
    :param max_retry_wait: the longest single wait between two attempts, in seconds (default 60).
    :param requests_per_minute: never send faster (the connection's ``requests_per_minute`` when unset).
    :param max_rate_limit_wait: seconds a call keeps re-sending after a rate limit refused it (default 600);
        such refusals are not billed and do not count against ``max_retries``.
    :param durable: keep what this task instance paid for until it succeeds, so a retry reuses it instead of
        paying again; a cleared task generates again.
    :param max_cost_usd: the most this task instance may spend (with ``durable``, over all its tries), in
        estimated US dollars from the connection's ``prices`` or the published defaults (``docs/cost.md``): the
        task fails without retries before exceeding it, and refuses a model with no known price.
    """

    template_fields: Sequence[str] = (
        "aspect_ratio",
        "person_generation",
        "model",
        "fallback_models",
        "gateway_options",
        "model_inputs",
        "output_path",
    )
    ui_color = "#f6821f"  # Cloudflare orange

    def __init__(
        self,
        *,
        aspect_ratio: str | None = None,
        person_generation: str | None = None,
        cloudflare_conn_id: str = DEFAULT_CONN_ID,
        model: str = IMAGEN_4,
        fallback_models: list[str] | None = None,
        gateway_options: dict[str, Any] | None = None,
        model_inputs: dict[str, Any] | None = None,
        output_path: str | ObjectStoragePath | None = None,
        max_image_bytes: int = MAX_IMAGE_BYTES,
        timeout: float | None = None,
        max_retries: int | None = None,
        max_retry_wait: float = 60.0,
        requests_per_minute: float | None = None,
        max_rate_limit_wait: float = 600.0,
        durable: bool = True,
        max_cost_usd: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.aspect_ratio = aspect_ratio
        self.person_generation = person_generation
        self.cloudflare_conn_id = cloudflare_conn_id
        self.model = model
        self.fallback_models = fallback_models
        self.gateway_options = gateway_options
        self.model_inputs = model_inputs
        self.output_path = output_path
        self.max_image_bytes = max_image_bytes
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self.requests_per_minute = requests_per_minute
        self.max_rate_limit_wait = max_rate_limit_wait
        self.durable = durable
        check_max_cost(max_cost_usd)
        self.max_cost_usd = max_cost_usd

    def get_hook(self) -> CloudflareWorkersAIHook:
        """Return a fresh hook for this task's connection and limits."""
        from airflow_provider_imagen.hooks.cloudflare import CloudflareWorkersAIHook

        return CloudflareWorkersAIHook(
            self.cloudflare_conn_id,
            timeout=self.timeout,
            max_retries=self.max_retries,
            max_retry_wait=self.max_retry_wait,
            requests_per_minute=self.requests_per_minute,
            max_rate_limit_wait=self.max_rate_limit_wait,
        )

    def check_output(self, *, folder: bool = False) -> tuple[str, ...]:
        """
        Return the models to try, checked with where their images go, before anything is generated.

        :param folder: ``output_path`` must be a folder (a batch keeps many images).
        :raises InvalidInputError: for a file where a folder is needed, or a bytes model without ``output_path``.
        """
        chain = model_chain(self.model, self.fallback_models)
        if self.output_path is not None:
            from airflow_provider_imagen._task.storage import resolve_output_path

            _, is_folder = resolve_output_path(self.output_path)
            if folder and not is_folder:
                raise InvalidInputError(
                    f"Invalid output_path {self.output_path!s}: a batch keeps many images, so it must be a folder "
                    "(end it with '/')"
                )
            return chain
        if (found := first_bytes_model(chain)) is not None:
            index, field = found
            which = f"Model {chain[index]!r}" if index == 0 else f"Fallback model {chain[index]!r} ({field})"
            raise InvalidInputError(f"{which} returns the image as bytes, not a URL: set output_path to store it")
        return chain

    def check_mapped_output(self, context: Context) -> None:
        """
        Refuse one file ``output_path`` shared by every map index of a mapped task, before any request.

        Each map index would pay for its image and overwrite the others' in that one file. A folder, a path
        templated with the map index, or a path given per index through ``expand()`` is fine.

        :raises InvalidInputError: naming the path and the fixes.
        """
        map_index = getattr(context.get("ti"), "map_index", -1)
        if self.output_path is None or not isinstance(map_index, int) or map_index < 0:
            return
        mapped = getattr(context.get("dag"), "task_dict", {}).get(self.task_id)
        shared = getattr(mapped, "partial_kwargs", {}).get("output_path")
        if shared is None or (isinstance(shared, str) and ("{{" in shared or "{%" in shared)):
            return
        from airflow_provider_imagen._task.storage import resolve_output_path

        if not resolve_output_path(self.output_path)[1]:
            raise InvalidInputError(
                f"Invalid output_path {self.output_path!s} for a mapped task: every map index would write (and pay "
                "for) an image at this one file, each overwriting the last. Use a folder (end it with '/'), a path "
                "templated with the map index (e.g. '/data/images/{{ ti.map_index }}.png'), or expand() the paths"
            )

    def check_model_inputs(self, chain: tuple[str, ...], prompts: Sequence[str]) -> None:
        """
        Check the rendered ``aspect_ratio`` and ``model_inputs`` against every model of ``chain``, before any request.

        :raises InvalidInputError: naming the field, the model and what it allows.
        """
        from airflow_provider_imagen._cloudflare.fallback import chain_inputs
        from airflow_provider_imagen._cloudflare.rules import check_aspect_ratio, unset_if_empty

        aspect_ratio, people = unset_if_empty(self.aspect_ratio), unset_if_empty(self.person_generation)
        check_aspect_ratio(aspect_ratio, chain)
        for prompt in prompts:  # a model's own prompt limit may be below the provider's
            chain_inputs(chain, prompt, aspect_ratio, people, unset_if_empty(self.model_inputs))

    def emit_asset_events(self, context: Context, stored: list[dict[str, Any]]) -> None:
        """Attach the stored images' summaries to the task's Asset outlets."""
        from airflow.sdk import Asset

        for outlet in self.outlets or []:
            if isinstance(outlet, Asset):
                context["outlet_events"][outlet].extra.update({"images": stored})
