"""The batch operator: many prompts in one task, concurrently, results in prompt order."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_provider_imagen._cloudflare.batch import batch_error, is_final
from airflow_provider_imagen._cloudflare.rules import check_literal_inputs, check_max_images, unset_if_empty
from airflow_provider_imagen.exceptions import (
    CloudflareWorkersAIError,
    InvalidInputError,
    error_to_dict,
)
from airflow_provider_imagen.operators.base import ImagenBaseOperator

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from airflow.sdk import Context, ObjectStoragePath

    from airflow_provider_imagen._task.job import Outcome


class ImagenGenerateImagesOperator(ImagenBaseOperator):
    """
    Generate many images in one task, concurrently over one connection pool, results in prompt order.

    Returns one entry per prompt, in order: with ``output_path`` (a folder), the stored copy's URI; without it,
    Cloudflare's URL. XCom ``stored_uri`` holds the stored URIs, XCom ``images`` one JSON summary per prompt.

    Partial failure: by default every prompt that can finish does, then the task fails with one line per
    failed prompt and its reason. With ``fail_on_error=False`` the task succeeds, failed prompts get ``None``
    in the returned list, and XCom ``failures`` lists them.

    Keyed items (``items=`` instead of ``prompts=``) are a dataset's rows (:class:`ImagenDatasetOperator`): each has a
    ``key`` and a ``prompt``, optionally ``aspect_ratio`` and ``person_generation``, and every row is checked before
    any request. Each image is stored at ``<output_path>/<key>.<ext>`` (a folder is required); one stored from the same
    inputs is reused without a request, found with one listing of the folder, and one from other inputs is replaced.
    The return value, XComs ``stored_uri`` and ``images`` are then dicts keyed by ``key`` (``None`` where one failed;
    each summary says its ``status``: ``generated``, ``reused`` or ``replaced``), and ``failures`` names the keys.

    :param prompts: what to draw, one image each (templated).
    :param items: keyed items instead of ``prompts`` (templated): a list of dicts (e.g. an XComArg), or a ``.jsonl`` or
        ``.csv`` path, URI or ``ObjectStoragePath``.
    :param max_concurrency: how many generations run at once (1..1000, default 8); as many more prompts may be
        downloading and storing their images meanwhile.
    :param fail_on_error: fail the task after the batch if any prompt failed (default) or return the failures.
    :param max_images: the most images this task instance may generate (with ``durable``, over all its tries):
        the task fails before exceeding it, saying how many were generated.
    :param kwargs: the parameters every Imagen operator takes (:class:`ImagenBaseOperator`); ``aspect_ratio`` and
        ``person_generation`` are shared by every image, and ``output_path`` must be a folder.
    """

    template_fields: Sequence[str] = ("prompts", "items", *ImagenBaseOperator.template_fields)

    def __init__(
        self,
        *,
        prompts: list[str] | None = None,
        items: str | list[dict[str, Any]] | ObjectStoragePath | None = None,
        max_concurrency: int = 8,
        fail_on_error: bool = True,
        max_images: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_max_images(max_images)
        if (prompts is None) == (items is None):
            raise InvalidInputError(
                "Invalid prompts and items: give exactly one, prompts= (a list of prompts) or items= (keyed items: "
                f"dicts with key and prompt, or a .jsonl or .csv file), got {'neither' if prompts is None else 'both'}"
            )
        if items is not None and self.output_path is None:
            raise InvalidInputError(
                "Invalid output_path: items= stores each image at <output_path>/<key>.<ext>, so it needs a folder "
                "(end it with '/')"
            )
        if isinstance(prompts, list):
            for prompt in prompts:
                check_literal_inputs(prompt, None, None, None)
        check_literal_inputs(
            None, self.aspect_ratio, self.person_generation, self.model, self.fallback_models, self.model_inputs
        )
        self.prompts = prompts
        self.items = items
        self.max_concurrency = max_concurrency
        self.fail_on_error = fail_on_error
        self.max_images = max_images

    def execute(self, context: Context) -> list[str | None] | dict[str, str | None]:
        """
        Generate every prompt's image (reusing what earlier tries paid for), push the batch's XComs, and fail if asked.

        :return: the image URLs in prompt order (stored URIs for models that return bytes), ``None`` where one failed;
            with ``items``, the stored URIs by key.
        """
        from airflow_provider_imagen._task.job import job_for
        from airflow_provider_imagen.models import ImagenInput

        chain = self.check_output(folder=True)
        if self.items is not None:
            return self._execute_keyed(context, chain)
        prompts = list(self.prompts) if isinstance(self.prompts, (list, tuple)) else self.prompts or []
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
            errors = [o.error for o in outcomes if o.error is not None]
            reuse = ", and a retry reuses them" if job.ledger.where and not is_final(errors) else ""
            raise batch_error(
                errors, f"{len(failures)} of {len(prompts)} images failed (the others succeeded{reuse}):\n{lines}"
            )
        return returned

    def _execute_keyed(self, context: Context, chain: tuple[str, ...]) -> dict[str, str | None]:
        from airflow_provider_imagen._task.keyed_batch import keyed_results, keyed_rows, run_keyed_batch
        from airflow_provider_imagen.models import ImagenInput

        if self.output_path is None:  # a rendered template may be empty
            raise InvalidInputError("Invalid output_path: items= needs a folder to store <key>.<ext> in")
        rows = keyed_rows(self, chain)  # every row, before any request
        prompts = [row.prompt for row in rows]
        ImagenInput.parse_batch(
            prompts, None, unset_if_empty(self.person_generation), self.gateway_options, self.max_concurrency
        )
        self.check_model_inputs(chain, prompts)
        results, job = run_keyed_batch(self, context, rows, chain)
        summaries, failures, returned = keyed_results(rows, results, job)

        ti = context["ti"]
        ti.xcom_push(key="images", value=summaries)
        ti.xcom_push(key="failures", value=failures)
        billing = job.billing()
        ti.xcom_push(key="billing", value=billing)
        ti.xcom_push(key="estimated_cost_usd", value=billing["estimated_cost_usd"])  # this try's total
        ti.xcom_push(key="stored_uri", value=returned)
        self.emit_asset_events(context, [s for s in summaries.values() if s])
        counts = {status: sum(1 for s in summaries.values() if s and s["status"] == status) for status in STATUSES}
        ready = ", ".join(f"{n} {status}" for status, n in counts.items())
        self.log.info("%d of %d images ready (%s)", len(rows) - len(failures), len(rows), ready)
        self.log.info("%s", job.describe())
        if failures and self.fail_on_error:
            lines = "\n".join(f"  {f['key']}: {f['reason']}" for f in failures[:20])
            more = f"\n  ... and {len(failures) - 20} more" if len(failures) > 20 else ""
            errors = [o.error for _, o, _ in results if o.error is not None]
            raise batch_error(
                errors,
                f"{len(failures)} of {len(rows)} images failed (the others are stored, and a rerun reuses them):"
                f"\n{lines}{more}",
            )
        return returned


#: The statuses of a keyed item's image, as a dataset's manifest says them.
STATUSES = ("generated", "reused", "replaced")


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
