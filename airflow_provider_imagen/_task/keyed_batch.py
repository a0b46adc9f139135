"""
One try of a batch of keyed items (``ImagenGenerateImagesOperator(items=...)``): a dataset's rows, a batch's results.

The rows are read and checked as a dataset's (:mod:`~airflow_provider_imagen._task.dataset`), each image is stored at
``<output_path>/<key>.<ext>`` and reused, generated or replaced by the same rule, with one listing of the folder
(:mod:`~airflow_provider_imagen._task.keyed`). Unlike a dataset, a batch writes no manifest and returns its results
keyed by ``key``: a batch is as large as an XCom can hold.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from airflow_provider_imagen._task.dataset import MAX_NAMED, ItemSource, check_items, row_digest, rows_job, to_row
from airflow_provider_imagen.exceptions import CloudflareWorkersAIError, InvalidInputError, error_to_dict

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_imagen._task.dataset import Row
    from airflow_provider_imagen._task.job import Outcome
    from airflow_provider_imagen._task.keyed import DatasetJob, Made

#: What each row came to: its status (``generated``, ``reused``, ``replaced``, ``failed``), outcome, stored image.
Result = tuple[str, "Outcome", "Made | None"]


def keyed_rows(operator: Any, chain: tuple[str, ...]) -> list[Row]:
    """
    Read and check every item of ``operator.items`` before any request, with the operator's defaults.

    :param chain: the model and its fallbacks: with the gateway options and model inputs, what a row's inputs digest.
    :raises InvalidInputError: naming up to 20 bad rows by line, or an empty ``items``.
    """
    from airflow_provider_imagen._cloudflare.rules import unset_if_empty

    source = ItemSource(operator.items)
    if not check_items(source):
        raise InvalidInputError(f"Invalid items: {source} holds no item; give at least one with key and prompt")
    defaults = {name: unset_if_empty(getattr(operator, name)) for name in ("aspect_ratio", "person_generation")}
    digest_inputs = row_digest(operator, chain)

    return [to_row(index, line, raw, defaults, digest_inputs) for index, (line, raw) in enumerate(source)]


def run_keyed_batch(
    operator: Any, context: Context, rows: list[Row], chain: tuple[str, ...]
) -> tuple[list[Result], DatasetJob]:
    """
    Obtain every row's image at ``<output_path>/<key>.<ext>``, at most ``max_concurrency`` generations at a time.

    Each is reused from the folder (one listing), from an earlier try's records, or generated.

    :return: each row's result, in order, and the job (its accounting).
    :raises SpendLimitError: when ``max_images`` or ``max_cost_usd`` would be exceeded (before any request, or once
        those in flight end).
    """
    from airflow_provider_imagen._cloudflare.batch import run_each
    from airflow_provider_imagen._task.job import Outcome
    from airflow_provider_imagen._task.keyed import FolderIndex
    from airflow_provider_imagen._task.storage import resolve_output_path
    from airflow_provider_imagen.exceptions import SpendLimitError

    op = operator
    folder, _ = resolve_output_path(op.output_path)
    index = FolderIndex(folder)
    job = rows_job(op, context, index, chain, rows)
    job.rows = {row.index: row for row in rows}
    hook = op.get_hook()
    hook.settings  # noqa: B018 - read synchronously: see CloudflareWorkersAIHook.generate_images

    def failed(_: Row, err: CloudflareWorkersAIError) -> Result:
        return "failed", Outcome(error=err), None

    async def run_all() -> list[Result]:
        places = job.open_loop(op.max_concurrency)
        try:
            return await run_each(rows, lambda row: job.obtain(hook, row), failed, places)
        finally:
            await hook.aclose()  # the clients belong to this loop, which ends here
            await job.aclose()
            job.close()

    results = asyncio.run(run_all())
    for _, outcome, _ in results:
        if isinstance(outcome.error, SpendLimitError):
            raise outcome.error
    replaced = [made.uri for status, _, made in results if status == "replaced" and made is not None]
    for uri in replaced[:MAX_NAMED]:
        op.log.info("Replaced %s: its inputs changed since it was made", uri)
    return results, job


def keyed_results(
    rows: list[Row], results: list[Result], job: DatasetJob
) -> tuple[dict[str, dict[str, Any] | None], list[dict[str, Any]], dict[str, str | None]]:
    """Return a keyed batch's XComs: a summary per key (``None`` if it failed), the failures, the stored URIs."""
    chain = job.chain
    summaries: dict[str, dict[str, Any] | None] = {}
    failures: list[dict[str, Any]] = []
    returned: dict[str, str | None] = {}
    for row, (status, outcome, made) in zip(rows, results, strict=True):
        if status == "failed" or made is None:
            error = outcome.error or CloudflareWorkersAIError("no image")
            failures.append({"key": row.key, "prompt": row.prompt, "error": error_to_dict(error), "reason": str(error)})
            summaries[row.key] = returned[row.key] = None
            continue
        # Reused from the folder: what its sidecar and the row say.
        image = outcome.image or made.as_image(chain, row.prompt, row.aspect_ratio, row.person_generation)
        summary = {**image.to_xcom(), "key": row.key, "stored_uri": made.uri, "reused": outcome.reused}
        summaries[row.key] = {**summary, "status": status, "estimated_cost_usd": job.spend.cost_of(outcome)}
        returned[row.key] = made.uri
    return summaries, failures, returned
