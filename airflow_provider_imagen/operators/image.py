"""The single-image operator: one prompt, one image, optionally deferred to the triggerer."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import conf

from airflow_provider_imagen._cloudflare.rules import check_literal_inputs, model_chain, returns_bytes, unset_if_empty
from airflow_provider_imagen.constants import DEFER_TIMEOUT_SECONDS, deferral_min_seconds
from airflow_provider_imagen.exceptions import CloudflareWorkersAIError, InvalidInputError
from airflow_provider_imagen.operators.base import ImagenBaseOperator
from airflow_provider_imagen.operators.links import GeneratedImageLink, web_url

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context

    from airflow_provider_imagen._task.job import ImageJob, Outcome


class ImagenGenerateImageOperator(ImagenBaseOperator):
    """
    Generate an image with Imagen 4 on Cloudflare Workers AI and return where it is.

    The return value (XCom ``return_value``) is always of one kind for one configuration: with ``output_path``,
    the stored copy's URI (whichever model of a fallback chain made the image); without it, Cloudflare's URL,
    which may expire. A JSON summary (model, inputs, size, attempts, timing, ``url``, ``stored_uri``) is pushed
    under the key ``image``.

    .. code-block:: python

        ImagenGenerateImageOperator(
            task_id="puppy",
            prompt="A golden retriever puppy playing in autumn leaves",
            aspect_ratio="16:9",
            output_path="/data/images/",  # optional: keep a copy
            deferrable=True,  # optional: free the worker slot while Cloudflare works
        )

    :param prompt: what to draw (templated).
    :param deferrable: wait for Cloudflare in the triggerer instead of a worker slot; defaults to
        ``[operators] default_deferrable``.
    :param kwargs: the parameters every Imagen operator takes (:class:`ImagenBaseOperator`): the connection,
        ``model``, ``fallback_models``, ``gateway_options``, ``output_path``, limits, ``durable``.
    """

    template_fields: Sequence[str] = ("prompt", *ImagenBaseOperator.template_fields)
    operator_extra_links = (GeneratedImageLink(),)

    def __init__(
        self,
        *,
        prompt: str,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_literal_inputs(
            prompt, self.aspect_ratio, self.person_generation, self.model, self.fallback_models, self.model_inputs
        )
        self.prompt = prompt
        self.deferrable = deferrable
        #: The image's web address once a try has one (the stored copy's, else Cloudflare's): the task's link.
        self.image_link = ""

    def execute(self, context: Context) -> str | None:
        """
        Generate the image (or reuse an earlier try's), here or deferred to the triggerer, and push its XComs.

        Rendered templates are checked before anything is sent or deferred.
        """
        from airflow_provider_imagen._cloudflare.fallback import split_for_triggerer
        from airflow_provider_imagen._task.job import job_for
        from airflow_provider_imagen.models import GatewayOptions, ImagenInput

        # Rendered templates are checked here, before anything is sent or deferred.
        ImagenInput.parse(prompt=self.prompt, person_generation=unset_if_empty(self.person_generation))
        GatewayOptions.parse(self.gateway_options)
        chain = self.check_output()
        self.check_model_inputs(chain, [self.prompt])  # the aspect ratio too: per model
        self.check_mapped_output(context)
        if self.deferrable and returns_bytes(self.model):
            raise InvalidInputError(f"deferrable=True needs a model that returns a URL; {self.model!r} returns bytes")
        if self.deferrable:
            from airflow_provider_imagen._cloudflare.fallback import inputs_taken_by
            from airflow_provider_imagen.triggers.imagen import refuse_bytes

            refuse_bytes(inputs_taken_by(split_for_triggerer(chain)[0], unset_if_empty(self.model_inputs)))

        job = job_for(self, context)
        (item,) = job.items([self.prompt])
        reused, regenerations = job.reuse(item, single=True)
        if reused is not None:  # an earlier try paid for it
            return self._finish(context, job, reused)

        if self.deferrable:
            from airflow_provider_imagen.triggers.imagen import ImagenGenerateImageTrigger

            job.check_budget(1, reserve=True)  # max_cost_usd, before the triggerer pays: at its fallbacks' prices too

            in_triggerer, on_worker = split_for_triggerer(chain)
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
                    model_inputs=inputs_taken_by(in_triggerer, unset_if_empty(self.model_inputs)),
                    timeout=self.timeout,
                    max_retries=self.max_retries,
                    max_retry_wait=self.max_retry_wait,
                    requests_per_minute=self.requests_per_minute,
                    max_rate_limit_wait=self.max_rate_limit_wait,
                    hold_until=time.time() + deferral_min_seconds(),
                ),
                method_name="execute_complete",
                timeout=timedelta(seconds=DEFER_TIMEOUT_SECONDS),
            )

        with self.get_hook() as hook:
            return self._finish(context, job, job.generate_one(hook, item, regenerations))

    def execute_complete(self, context: Context, event: dict[str, Any]) -> str | None:
        """Resume after the trigger: its image, or its error (models that answer in bytes may follow, here)."""
        from airflow_provider_imagen._task.job import job_for
        from airflow_provider_imagen.exceptions import error_from_dict

        if not isinstance(event, dict) or event.get("status") != "success":
            error = error_from_dict(event.get("error") if isinstance(event, dict) else None)
            return self._after_triggerer(context, error)
        job = job_for(self, context)
        # The trigger's image is recorded first, so a failure from here on costs no second generation.
        return self._finish(context, job, job.resume(job.items([self.prompt])[0], event["image"]))

    def _after_triggerer(self, context: Context, error: Exception) -> str | None:
        from airflow_provider_imagen._cloudflare.fallback import is_unserved_error, passed_over, split_for_triggerer
        from airflow_provider_imagen._cloudflare.retry import is_unavailable
        from airflow_provider_imagen._task.job import job_for

        on_worker = split_for_triggerer(model_chain(self.model, self.fallback_models))[1]
        if not on_worker or not isinstance(error, CloudflareWorkersAIError):
            raise error
        if not (is_unavailable(error) or is_unserved_error(error)):  # nothing ran: the worker's models may serve
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
        summary = {**image.to_xcom(), "stored_uri": stored, "reused": outcome.reused}
        summary.update(estimated_cost_usd=job.spend.cost_of(outcome), billing=job.billing())
        context["ti"].xcom_push(key="image", value=summary)
        if stored is not None:
            context["ti"].xcom_push(key="stored_uri", value=stored)
            self.emit_asset_events(context, [summary])
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
        self.image_link = web_url(stored) or web_url(image.url) or ""
        # With output_path, what a pipeline keeps is the stored copy, whichever model made it: always return that.
        return stored if stored is not None else image.url
