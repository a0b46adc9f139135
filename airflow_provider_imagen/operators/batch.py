"""The batch operator: many prompts in one task, concurrently, results in prompt order."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_provider_imagen._cloudflare.rules import check_literal_inputs, check_max_images, unset_if_empty
from airflow_provider_imagen.exceptions import CloudflareWorkersAIError, ImagesRefusedError, error_to_dict
from airflow_provider_imagen.operators.base import ImagenBaseOperator

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from airflow.sdk import Context

    from airflow_provider_imagen._task.job import Outcome


class ImagenGenerateImagesOperator(ImagenBaseOperator):
    """
    Generate many images in one task, concurrently over one connection pool, results in prompt order.

    Returns one entry per prompt, in order: with ``output_path`` (a folder), the stored copy's URI; without it,
    Cloudflare's URL. XCom ``stored_uri`` holds the stored URIs, XCom ``images`` one JSON summary per prompt.

    Partial failure: by default every prompt that can finish does, then the task fails with one line per
    failed prompt and its reason. With ``fail_on_error=False`` the task succeeds, failed prompts get ``None``
    in the returned list, and XCom ``failures`` lists them.

    :param prompts: what to draw, one image each (templated).
    :param max_concurrency: how many generations run at once (1..1000, default 8).
    :param fail_on_error: fail the task after the batch if any prompt failed (default) or return the failures.
    :param max_images: the most images this task instance may generate (with ``durable``, over all its tries):
        the task fails before exceeding it, saying how many were generated.
    :param kwargs: the parameters every Imagen operator takes (:class:`ImagenBaseOperator`); ``aspect_ratio`` and
        ``person_generation`` are shared by every image, and ``output_path`` must be a folder.
    """

    template_fields: Sequence[str] = ("prompts", *ImagenBaseOperator.template_fields)

    def __init__(
        self,
        *,
        prompts: list[str],
        max_concurrency: int = 8,
        fail_on_error: bool = True,
        max_images: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_max_images(max_images)
        if isinstance(prompts, list):
            for prompt in prompts:
                check_literal_inputs(prompt, None, None, None)
        check_literal_inputs(
            None, self.aspect_ratio, self.person_generation, self.model, self.fallback_models, self.model_inputs
        )
        self.prompts = prompts
        self.max_concurrency = max_concurrency
        self.fail_on_error = fail_on_error
        self.max_images = max_images

    def execute(self, context: Context) -> list[str | None]:
        """
        Generate every prompt's image (reusing what earlier tries paid for), push the batch's XComs, and fail if asked.

        :return: the image URLs in prompt order (stored URIs for models that return bytes), ``None`` where one failed.
        """
        from airflow_provider_imagen._task.job import job_for
        from airflow_provider_imagen.models import ImagenInput

        chain = self.check_output(folder=True)
        prompts = list(self.prompts) if isinstance(self.prompts, (list, tuple)) else self.prompts
        # Every prompt and option is checked before the first request.
        ImagenInput.parse_batch(
            prompts,  # type: ignore[arg-type]
            None,  # checked per model below: Nano Banana takes more ratios than Imagen
            unset_if_empty(self.person_generation),
            self.gateway_options,
            self.max_concurrency,
        )
        self.check_model_inputs(chain, prompts)  # type: ignore[arg-type]
        job = job_for(self, context, max_images=self.max_images)
        outcomes = job.run_batch(self.get_hook(), job.items(prompts), self.max_concurrency)  # type: ignore[arg-type]

        summaries, failures, returned = batch_results(prompts, outcomes, job.spend.cost_of)  # type: ignore[arg-type]

        ti = context["ti"]
        ti.xcom_push(key="images", value=summaries)
        ti.xcom_push(key="failures", value=failures)
        billing = job.billing()
        ti.xcom_push(key="billing", value=billing)
        ti.xcom_push(key="estimated_cost_usd", value=billing["estimated_cost_usd"])  # this try's total
        if self.output_path is not None:
            ti.xcom_push(key="stored_uri", value=[s["stored_uri"] if s else None for s in summaries])
            self.emit_asset_events(context, [s for s in summaries if s])
        made_by = ", ".join(sorted({s["model"] for s in summaries if s})) or "none"
        self.log.info("%d of %d images ready (made by %s)", len(prompts) - len(failures), len(prompts), made_by)
        self.log.info("%s", job.describe())
        if failures and self.fail_on_error:
            lines = "\n".join(f"  [{f['index']}] {f['prompt']!r}: {f['reason']}" for f in failures)
            # When no failure can succeed on a retry (input, policy, quota), a task retry would only pay again.
            final = all(isinstance(o.error, AirflowFailException) for o in outcomes if o.error is not None)
            raise (ImagesRefusedError if final else CloudflareWorkersAIError)(
                f"{len(failures)} of {len(prompts)} images failed (the others succeeded"
                f"{', and a retry reuses them' if job.ledger.where and not final else ''}):\n{lines}"
            )
        return returned


def batch_results(
    prompts: Sequence[str], outcomes: Sequence[Outcome], cost_of: Callable[[Outcome], float | None]
) -> tuple[list[dict[str, Any] | None], list[dict[str, Any]], list[str | None]]:
    """
    Return a batch's XComs, in prompt order: a summary per image (``None`` if it failed), the failures, the URLs.

    :param cost_of: what an outcome's image cost this try (0 when reused).
    """
    summaries: list[dict[str, Any] | None] = []
    failures: list[dict[str, Any]] = []
    returned: list[str | None] = []
    for index, (prompt, outcome) in enumerate(zip(prompts, outcomes, strict=True)):
        if outcome.error is not None or outcome.image is None:
            error = outcome.error or CloudflareWorkersAIError("no image")
            failures.append({"index": index, "prompt": prompt, "error": error_to_dict(error), "reason": str(error)})
            summaries.append(None)
            returned.append(None)
            continue
        summary = {**outcome.image.to_xcom(), "stored_uri": outcome.stored, "reused": outcome.reused}
        summaries.append({**summary, "estimated_cost_usd": cost_of(outcome)})
        returned.append(outcome.stored or outcome.image.url)  # the stored copy whenever there is one
    return summaries, failures, returned
