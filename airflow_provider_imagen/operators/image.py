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
    from airflow_provider_imagen._task.stored_file import StoredFile


class ImagenGenerateImageOperator(ImagenBaseOperator):
    """
    Generate an image with Imagen 4 on Cloudflare Workers AI and return where it is.

    The return value (XCom ``return_value``) is always of one kind for one configuration: with ``output_path``,
    the stored copy's URI (whichever model of a fallback chain made the image); without it, Cloudflare's URL,
    which may expire. A JSON summary (model, inputs, size, attempts, timing, ``url``, ``stored_uri``, ``status``) is
    pushed under the key ``image``.

    With a file ``output_path`` (not a folder), an image stored there from the same inputs (model chain, prompt,
    aspect ratio, person generation, model inputs, the gateway options that change the answer) is reused without a
    request: the log says so, the summary has ``"reused": true, "reused_from": "stored_file"``, and the task returns
    the file's URI. Other inputs generate a new image that replaces it atomically (``"status": "replaced"``, logged).
    A file that nothing records the provider made is refused before any request, unless ``regenerate=True``.

    .. code-block:: python

        ImagenGenerateImageOperator(
            task_id="puppy",
            prompt="A golden retriever puppy playing in autumn leaves",
            aspect_ratio="16:9",
            output_path="/data/images/",  # optional: keep a copy
            deferrable=True,  # optional: free the worker slot while Cloudflare works
        )

    :param prompt: what to draw (templated).
    :param regenerate: with a file ``output_path``, generate (and pay for) a new image and replace the file, even when
        it was made from the same inputs or by someone else.
    :param deferrable: wait for Cloudflare in the triggerer instead of a worker slot; defaults to
        ``[operators] default_deferrable``.
    :param defer_timeout: the longest the deferred generation may wait in the triggerer, in seconds or as a
        ``timedelta``, before the task fails (``TaskDeferralTimeout``, retried as any failure); the task's
        ``execution_timeout`` when unset and set (Airflow does not apply it to a deferral itself), else one hour.
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
        defer_timeout: float | timedelta | None = None,
        regenerate: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.defer_timeout = check_defer_timeout(defer_timeout)
        if not isinstance(regenerate, bool):
            raise InvalidInputError(f"Invalid regenerate: must be True or False, got {type(regenerate).__name__}")
        self.regenerate = regenerate
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
        from airflow_provider_imagen._task.stored_file import file_job
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

        job, item, stored = file_job(self, context)
        # Before any request or deferral: an image stored at output_path from the same inputs is reused.
        if stored is not None and (kept := stored.decide(job, item, self.regenerate)) is not None:
            return self._finish(context, job, kept, stored)
        reused, regenerations = job.reuse(item, single=True)
        if reused is not None:  # an earlier try paid for it
            return self._finish(context, job, reused, stored)

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
                timeout=self.defer_timeout or self.execution_timeout or timedelta(seconds=DEFER_TIMEOUT_SECONDS),
            )

        with self.get_hook() as hook:
            return self._finish(context, job, job.generate_one(hook, item, regenerations), stored)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> str | None:
        """Resume after the trigger: its image, or its error (models that answer in bytes may follow, here)."""
        from airflow_provider_imagen._task.stored_file import file_job
        from airflow_provider_imagen.exceptions import error_from_dict

        if not isinstance(event, dict) or event.get("status") != "success":
            error = error_from_dict(event.get("error") if isinstance(event, dict) else None)
            return self._after_triggerer(context, error)
        job, item, stored = file_job(self, context)
        # The trigger's image is recorded first, so a failure from here on costs no second generation.
        return self._finish(context, job, job.resume(item, event["image"]), stored)

    def _after_triggerer(self, context: Context, error: Exception) -> str | None:
        from airflow_provider_imagen._cloudflare.fallback import is_unserved_error, passed_over, split_for_triggerer
        from airflow_provider_imagen._cloudflare.retry import is_unavailable
        from airflow_provider_imagen._task.stored_file import file_job

        on_worker = split_for_triggerer(model_chain(self.model, self.fallback_models))[1]
        if not on_worker or not isinstance(error, CloudflareWorkersAIError):
            raise error
        if not (is_unavailable(error) or is_unserved_error(error)):  # nothing ran: the worker's models may serve
            raise error
        job, item, stored = file_job(self, context)
        reused, regenerations = job.reuse(item, single=True)
        if reused is not None:
            return self._finish(context, job, reused, stored)
        self.log.warning("The triggerer's models were unavailable (%s): trying %s on this worker", error, on_worker)
        with self.get_hook() as hook:
            outcome = job.generate_one(hook, item, regenerations, skipped=passed_over(error))
        return self._finish(context, job, outcome, stored)

    def _finish(self, context: Context, job: ImageJob, outcome: Outcome, file: StoredFile | None) -> str | None:
        from airflow_provider_imagen._task.stored_file import REUSED

        from_file = file is not None and file.status == REUSED
        if file is not None and not from_file:
            file.seal(outcome)  # the record of what made it, so that the next run reuses it
        image, stored = outcome.image, outcome.stored
        assert image is not None
        summary = {**image.to_xcom(), "stored_uri": stored, "reused": outcome.reused}
        summary.update(estimated_cost_usd=job.spend.cost_of(outcome), billing=job.billing())
        summary["status"] = "reused" if outcome.reused else file.status if file is not None else "generated"
        summary["reused_from"] = "stored_file" if from_file else "earlier_try" if outcome.reused else None
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
            image.url or ("(the stored file)" if from_file else "(bytes)"),
            f", {'replacing the file' if summary['status'] == 'replaced' else 'stored'} at {stored}" if stored else "",
        )
        for skipped in image.skipped_models:
            self.log.warning("%s was passed over for %s: %s", skipped.model, image.model, skipped.reason)
        self.log.info("%s", job.describe())
        self.image_link = web_url(stored) or web_url(image.url) or ""
        # With output_path, what a pipeline keeps is the stored copy, whichever model made it: always return that.
        return stored if stored is not None else image.url


def check_defer_timeout(value: object) -> timedelta | None:
    """
    Return ``defer_timeout`` as a ``timedelta`` (``None`` when unset).

    :raises InvalidInputError: unless it is a positive, finite number of seconds or ``timedelta``.
    """
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds < float("inf"):
        raise InvalidInputError(
            f"defer_timeout must be a positive, finite number of seconds or a timedelta, got {value!r}"
        )
    try:
        return timedelta(seconds=seconds)
    except OverflowError:  # finite, yet beyond what a timedelta holds (over 2.7 million years)
        raise InvalidInputError(f"defer_timeout is too long: {value!r} seconds") from None
