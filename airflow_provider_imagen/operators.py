"""Operators: render templates, call the hook, return a small JSON value. The hook does the work."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import conf
from airflow.sdk import BaseOperator

from airflow_provider_imagen.constants import DEFAULT_CONN_ID, DEFER_TIMEOUT_SECONDS, IMAGEN_4, MAX_IMAGE_BYTES
from airflow_provider_imagen.errors import CloudflareWorkersAIError, InvalidInputError
from airflow_provider_imagen.lineage import ImagenLineageMixin
from airflow_provider_imagen.links import GeneratedImageLink
from airflow_provider_imagen.rules import (
    check_literal_inputs,
    check_max_images,
    first_bytes_model,
    model_chain,
    returns_bytes,
    unset_if_empty,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context, ObjectStoragePath

    from airflow_provider_imagen.generation import ImageJob, Outcome
    from airflow_provider_imagen.hooks import CloudflareWorkersAIHook


class _ImagenOperatorMixin(ImagenLineageMixin):
    """What both operators share: the hook, persisting, and the XComs and Asset events of an image."""

    cloudflare_conn_id: str
    model: str
    fallback_models: list[str] | None
    timeout: float | None
    max_retries: int | None
    requests_per_minute: float | None
    output_path: str | ObjectStoragePath | None
    max_image_bytes: int
    aspect_ratio: str | None
    person_generation: str | None
    gateway_options: dict[str, Any] | None
    durable: bool
    retries: int | None
    outlets: Any
    log: Any

    def get_hook(self) -> CloudflareWorkersAIHook:
        """A fresh hook for this task's connection and limits."""
        from airflow_provider_imagen.hooks import CloudflareWorkersAIHook

        return CloudflareWorkersAIHook(
            self.cloudflare_conn_id,
            timeout=self.timeout,
            max_retries=self.max_retries,
            requests_per_minute=self.requests_per_minute,
        )

    def _check_output(self, *, folder: bool = False) -> tuple[str, ...]:
        """The models to try, checked, with where their images go: before anything is generated."""
        chain = model_chain(self.model, self.fallback_models)
        if self.output_path is not None:
            from airflow_provider_imagen.storage import resolve_output_path

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

    def _emit_asset_events(self, context: Context, stored: list[dict[str, Any]]) -> None:
        from airflow.sdk import Asset

        for outlet in self.outlets or []:
            if isinstance(outlet, Asset):
                context["outlet_events"][outlet].extra.update({"images": stored})


class ImagenGenerateImageOperator(_ImagenOperatorMixin, BaseOperator):
    """
    Generate an image with Imagen 4 on Cloudflare Workers AI and return its URL.

    The URL is the task's XCom ``return_value``; a JSON summary (model, inputs, size, attempts, timing)
    is pushed under the key ``image``. The returned URL may expire: set ``output_path`` to keep the image.

    .. code-block:: python

        ImagenGenerateImageOperator(
            task_id="puppy",
            prompt="A golden retriever puppy playing in autumn leaves",
            aspect_ratio="16:9",
            output_path="/data/images/",  # optional: keep a copy
            deferrable=True,  # optional: free the worker slot while Cloudflare works
        )

    :param prompt: what to draw (templated).
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
    :param output_path: where to keep the image (templated): a file or a folder (ending in ``/``) as a local
        path, ``file://``, ``s3://conn_id@bucket/key``, ``gs://...`` or an ``ObjectStoragePath``. Pushes the
        XCom ``stored_uri``. Required for models that return bytes, whose stored URI is then the return value.
    :param max_image_bytes: refuse to store an image larger than this (default 100 MiB).
    :param deferrable: wait for Cloudflare in the triggerer instead of a worker slot; defaults to
        ``[operators] default_deferrable``.
    :param timeout: seconds to wait for Cloudflare; the connection's ``timeout`` (default 180) when unset.
    :param max_retries: retries of transient failures; the connection's ``max_retries`` (default 3) when unset.
    :param requests_per_minute: never send faster (the connection's ``requests_per_minute`` when unset).
    :param durable: keep the image this task instance paid for until it succeeds, so a retry reuses it
        instead of paying again (see ``docs/durable.md``); a cleared task generates again.
    """

    template_fields: Sequence[str] = (
        "prompt",
        "aspect_ratio",
        "person_generation",
        "model",
        "fallback_models",
        "gateway_options",
        "output_path",
    )
    operator_extra_links = (GeneratedImageLink(),)
    ui_color = "#f6821f"  # Cloudflare orange

    def __init__(
        self,
        *,
        prompt: str,
        aspect_ratio: str | None = None,
        person_generation: str | None = None,
        cloudflare_conn_id: str = DEFAULT_CONN_ID,
        model: str = IMAGEN_4,
        fallback_models: list[str] | None = None,
        gateway_options: dict[str, Any] | None = None,
        output_path: str | ObjectStoragePath | None = None,
        max_image_bytes: int = MAX_IMAGE_BYTES,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        timeout: float | None = None,
        max_retries: int | None = None,
        requests_per_minute: float | None = None,
        durable: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_literal_inputs(prompt, aspect_ratio, person_generation, model, fallback_models)
        self.prompt = prompt
        self.aspect_ratio = aspect_ratio
        self.person_generation = person_generation
        self.cloudflare_conn_id = cloudflare_conn_id
        self.model, self.fallback_models = model, fallback_models
        self.gateway_options = gateway_options
        self.output_path = output_path
        self.max_image_bytes = max_image_bytes
        self.deferrable = deferrable
        self.timeout, self.max_retries, self.requests_per_minute = timeout, max_retries, requests_per_minute
        self.durable = durable

    def execute(self, context: Context) -> str | None:
        from airflow_provider_imagen.fallback import split_for_triggerer
        from airflow_provider_imagen.generation import job_for
        from airflow_provider_imagen.models import GatewayOptions, ImagenInput

        # Rendered templates are checked here, before anything is sent or deferred.
        ImagenInput.parse(
            prompt=self.prompt,
            aspect_ratio=unset_if_empty(self.aspect_ratio),
            person_generation=unset_if_empty(self.person_generation),
        )
        GatewayOptions.parse(self.gateway_options)
        chain = self._check_output()
        if self.deferrable and returns_bytes(self.model):
            raise InvalidInputError(f"deferrable=True needs a model that returns a URL; {self.model!r} returns bytes")

        job = job_for(self, context)
        (item,) = job.items([self.prompt])
        reused, regenerations = job.reuse(item, single=True)
        if reused is not None:  # an earlier try paid for it
            return self._finish(context, job, reused)

        if self.deferrable:
            from airflow_provider_imagen.triggers import ImagenGenerateImageTrigger

            in_triggerer, on_worker = split_for_triggerer(chain)
            self._imagen_deferring = True  # the link computed as this try ends has no image to read yet
            self.defer(
                trigger=ImagenGenerateImageTrigger(
                    prompt=self.prompt,
                    aspect_ratio=unset_if_empty(self.aspect_ratio),
                    person_generation=unset_if_empty(self.person_generation),
                    cloudflare_conn_id=self.cloudflare_conn_id,
                    model=self.model,
                    fallback_models=list(in_triggerer[1:]),
                    fallback_follows=bool(on_worker),
                    gateway_options=job.options_for(item, regenerations, as_dict=True),
                    timeout=self.timeout,
                    max_retries=self.max_retries,
                    requests_per_minute=self.requests_per_minute,
                ),
                method_name="execute_complete",
                timeout=timedelta(seconds=DEFER_TIMEOUT_SECONDS),
            )

        with self.get_hook() as hook:
            return self._finish(context, job, job.generate_one(hook, item, regenerations))

    def execute_complete(self, context: Context, event: dict[str, Any]) -> str | None:
        """Resume after the trigger: its image, or its error (models that answer in bytes may follow, here)."""
        from airflow_provider_imagen.generation import job_for
        from airflow_provider_imagen.triggers import error_from_dict

        if not isinstance(event, dict) or event.get("status") != "success":
            error = error_from_dict(event.get("error") if isinstance(event, dict) else None)
            return self._after_triggerer(context, error)
        job = job_for(self, context)
        # The trigger's image is recorded first, so a failure from here on costs no second generation.
        return self._finish(context, job, job.resume(job.items([self.prompt])[0], event["image"]))

    def _after_triggerer(self, context: Context, error: Exception) -> str | None:
        from airflow_provider_imagen.fallback import passed_over, split_for_triggerer
        from airflow_provider_imagen.generation import job_for
        from airflow_provider_imagen.retry import is_unavailable

        on_worker = split_for_triggerer(model_chain(self.model, self.fallback_models))[1]
        if not on_worker or not isinstance(error, CloudflareWorkersAIError) or not is_unavailable(error):
            raise error
        job = job_for(self, context)
        (item,) = job.items([self.prompt])
        reused, regenerations = job.reuse(item, single=True)
        if reused is not None:
            return self._finish(context, job, reused)
        self.log.warning("The triggerer's models were unavailable (%s): trying %s on this worker", error, on_worker)
        with self.get_hook() as hook:
            outcome = job.generate_one(hook, item, regenerations, skipped=passed_over(error))
        return self._finish(context, job, outcome)

    def _finish(self, context: Context, job: ImageJob, outcome: Outcome) -> str | None:
        image, stored = outcome.image, outcome.stored
        assert image is not None
        summary = {**image.to_xcom(), "stored_uri": stored, "reused": outcome.reused, "billing": job.billing()}
        context["ti"].xcom_push(key="image", value=summary)
        if stored is not None:
            context["ti"].xcom_push(key="stored_uri", value=stored)
            self._emit_asset_events(context, [summary])
        self.log.info(
            "%s a %s image with %s in %.1f s (%d attempt(s)): %s%s",
            "Reused" if outcome.reused else "Generated",
            image.aspect_ratio or "default-ratio",
            image.model,
            image.elapsed_seconds,
            image.attempts,
            image.url or "(bytes)",
            f", stored at {stored}" if stored else "",
        )
        for skipped in image.skipped_models:
            self.log.warning("%s was passed over for %s: %s", skipped.model, image.model, skipped.reason)
        self.log.info("%s", job.describe())
        job.ledger.clear()  # success: the next run of this task instance is a new request
        return image.url or stored


class ImagenGenerateImagesOperator(_ImagenOperatorMixin, BaseOperator):
    """
    Generate many images in one task, concurrently over one connection pool, results in prompt order.

    Returns the list of image URLs (the stored URIs for models that return bytes). With ``output_path``
    (a folder) each image is kept there and ``stored_uri`` holds the list of stored URIs. XCom ``images``
    holds one JSON summary per prompt.

    Partial failure: by default every prompt that can finish does, then the task fails with one line per
    failed prompt and its reason. With ``fail_on_error=False`` the task succeeds, failed prompts get ``None``
    in the returned list, and XCom ``failures`` lists them.

    :param prompts: what to draw, one image each (templated).
    :param aspect_ratio: shared by every image (templated).
    :param person_generation: shared by every image (templated).
    :param max_concurrency: how many generations run at once (1..1000, default 8).
    :param fail_on_error: fail the task after the batch if any prompt failed (default) or return the failures.
    :param output_path: a folder to keep every image in (templated), as for ``ImagenGenerateImageOperator``.
    :param cloudflare_conn_id: the Cloudflare Workers AI connection.
    :param model: the model id (templated).
    :param fallback_models: models to try in turn when the one before is unavailable, per prompt (templated
        list); a model found unavailable is passed over by the other prompts for a minute.
    :param gateway_options: AI Gateway options (templated dict).
    :param max_image_bytes: refuse to store an image larger than this (default 100 MiB).
    :param timeout: seconds to wait for each generation.
    :param max_retries: retries of transient failures, per prompt.
    :param requests_per_minute: never send faster (the connection's ``requests_per_minute`` when unset).
    :param durable: keep each image as it completes until the task succeeds, so a retry generates only the
        prompts without one (see ``docs/durable.md``); a cleared task generates again.
    :param max_images: the most images this task instance may generate (with ``durable``, over all its tries):
        the task fails before exceeding it, saying how many were generated.
    """

    template_fields: Sequence[str] = (
        "prompts",
        "aspect_ratio",
        "person_generation",
        "model",
        "fallback_models",
        "gateway_options",
        "output_path",
    )
    ui_color = "#f6821f"

    def __init__(
        self,
        *,
        prompts: list[str],
        aspect_ratio: str | None = None,
        person_generation: str | None = None,
        max_concurrency: int = 8,
        fail_on_error: bool = True,
        output_path: str | ObjectStoragePath | None = None,
        cloudflare_conn_id: str = DEFAULT_CONN_ID,
        model: str = IMAGEN_4,
        fallback_models: list[str] | None = None,
        gateway_options: dict[str, Any] | None = None,
        max_image_bytes: int = MAX_IMAGE_BYTES,
        timeout: float | None = None,
        max_retries: int | None = None,
        requests_per_minute: float | None = None,
        durable: bool = True,
        max_images: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_max_images(max_images)
        if isinstance(prompts, list):
            for prompt in prompts:
                check_literal_inputs(prompt, None, None, None)
        check_literal_inputs(None, aspect_ratio, person_generation, model, fallback_models)
        self.prompts = prompts
        self.aspect_ratio = aspect_ratio
        self.person_generation = person_generation
        self.max_concurrency = max_concurrency
        self.fail_on_error = fail_on_error
        self.output_path = output_path
        self.cloudflare_conn_id = cloudflare_conn_id
        self.model, self.fallback_models = model, fallback_models
        self.gateway_options = gateway_options
        self.max_image_bytes = max_image_bytes
        self.timeout, self.max_retries, self.requests_per_minute = timeout, max_retries, requests_per_minute
        self.durable = durable
        self.max_images = max_images

    def execute(self, context: Context) -> list[str | None]:
        from airflow_provider_imagen.generation import batch_results, job_for
        from airflow_provider_imagen.models import ImagenInput

        self._check_output(folder=True)
        prompts = list(self.prompts) if isinstance(self.prompts, (list, tuple)) else self.prompts
        # Every prompt and option is checked before the first request.
        ImagenInput.parse_batch(
            prompts,  # type: ignore[arg-type]
            unset_if_empty(self.aspect_ratio),
            unset_if_empty(self.person_generation),
            self.gateway_options,
            self.max_concurrency,
        )
        job = job_for(self, context, max_images=self.max_images)
        outcomes = job.run_batch(self.get_hook(), job.items(prompts), self.max_concurrency)  # type: ignore[arg-type]

        summaries, failures, returned = batch_results(prompts, outcomes)  # type: ignore[arg-type]

        ti = context["ti"]
        ti.xcom_push(key="images", value=summaries)
        ti.xcom_push(key="failures", value=failures)
        ti.xcom_push(key="billing", value=job.billing())
        if self.output_path is not None:
            ti.xcom_push(key="stored_uri", value=[s["stored_uri"] if s else None for s in summaries])
            self._emit_asset_events(context, [s for s in summaries if s])
        made_by = ", ".join(sorted({s["model"] for s in summaries if s})) or "none"
        self.log.info("%d of %d images ready (made by %s)", len(prompts) - len(failures), len(prompts), made_by)
        self.log.info("%s", job.describe())
        if failures and self.fail_on_error:
            lines = "\n".join(f"  [{f['index']}] {f['prompt']!r}: {f['reason']}" for f in failures)
            raise CloudflareWorkersAIError(
                f"{len(failures)} of {len(prompts)} images failed (the others succeeded"
                f"{', and a retry reuses them' if job.ledger.where else ''}):\n{lines}"
            )
        job.ledger.clear()  # success: the next run of this task instance is a new request
        return returned
