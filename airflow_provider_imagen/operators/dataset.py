"""The dataset operator: an image per row of a table, stored as ``<key>.<ext>``, paying only for new or changed rows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_provider_imagen._cloudflare.rules import check_literal_inputs, check_max_images
from airflow_provider_imagen._task.dataset import check_shards
from airflow_provider_imagen.exceptions import InvalidInputError
from airflow_provider_imagen.operators.base import ImagenBaseOperator

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context, ObjectStoragePath


class ImagenDatasetOperator(ImagenBaseOperator):
    """
    Make an image for every row of a table, stored as ``<key>.<ext>``, paying only for new or changed rows.

    Each item has a ``key`` (its file name: letters, digits, ``-``, ``_``, ``.``, not ``.`` first, at most 200
    characters) and a ``prompt``, optionally ``aspect_ratio`` and ``person_generation``; any other field is carried
    to the manifest. Every row is checked before any request: bad rows (a missing key or prompt, an unsafe or
    duplicate key) are refused, up to 20 named by line, and nothing is written.

    A row whose stored image was made from the same inputs (model chain, prompt, aspect ratio, person generation,
    the gateway options that change the answer) is ``reused`` without a request, found with one listing of the
    folder; a row whose inputs changed is ``replaced`` atomically. The manifest, JSONL, has one line per row of this
    task instance: ``key``, ``status`` (``generated``, ``reused``, ``replaced``, ``failed``), ``stored_uri``,
    ``prompt``, ``model``, ``aspect_ratio``, ``person_generation``, ``width``, ``height``, ``estimated_cost_usd`` (0
    when reused), ``error`` (failed only) and the row's other fields.

    Returns a small dict: the count per status, ``total``, the ``manifest`` URI and ``estimated_cost_usd`` (this try's);
    XCom ``billing`` says what the try cost. Pacing, retries, fallback models and durable records are the batch
    operator's.

    :param items: the rows (templated): a ``.jsonl`` or ``.csv`` path or URI (read streaming), an
        ``ObjectStoragePath``, or a list of dicts (e.g. an XComArg).
    :param output_path: the folder the images go to (templated; a local path, ``s3://conn_id@bucket/prefix/``, ...).
    :param manifest_path: where to write the manifest (templated); by default
        ``<output_path>/manifests/<dag>/<run>/<task>[.<map index>].jsonl``. Give each shard its own
        (``{{ ti.map_index }}``) when you set it.
    :param max_concurrency: how many generations are in flight at once (1..1000, default 8); as many more rows may
        be downloading and storing their images meanwhile.
    :param fail_on_error: fail the task after every row if any failed (default), or succeed and count them.
    :param max_images: the most images this task instance may generate (over all its tries, with ``durable``).
    :param shard_index: which shard of the rows this task makes (``.expand(shard_index=range(n))``).
    :param shard_count: how many shards the rows are split into, by a stable hash of their key.
    :param kwargs: the parameters every Imagen operator takes (:class:`ImagenBaseOperator`); ``aspect_ratio`` and
        ``person_generation`` are the defaults for rows that do not set their own.
    """

    template_fields: Sequence[str] = ("items", "manifest_path", *ImagenBaseOperator.template_fields)

    def __init__(
        self,
        *,
        items: str | list[dict[str, Any]] | ObjectStoragePath,
        output_path: str | ObjectStoragePath,
        manifest_path: str | ObjectStoragePath | None = None,
        max_concurrency: int = 8,
        fail_on_error: bool = True,
        max_images: int | None = None,
        shard_index: int = 0,
        shard_count: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(output_path=output_path, **kwargs)
        check_max_images(max_images)
        check_literal_inputs(None, self.aspect_ratio, self.person_generation, self.model, self.fallback_models)
        if isinstance(shard_index, int):  # a mapped shard_index is checked when it is known
            check_shards(shard_index, shard_count)
        self.items = items
        self.manifest_path = manifest_path
        self.max_concurrency = max_concurrency
        self.fail_on_error = fail_on_error
        self.max_images = max_images
        self.shard_index = shard_index
        self.shard_count = shard_count

    def execute(self, context: Context) -> dict[str, Any]:
        """
        Check every row, then reuse, generate or replace each image of this shard, and write the manifest.

        :return: the count per status (``generated``, ``reused``, ``replaced``, ``failed``), ``total`` and ``manifest``.
        """
        from airflow_provider_imagen._task.dataset import run_dataset

        check_shards(self.shard_index, self.shard_count)
        if isinstance(self.max_concurrency, bool) or not isinstance(self.max_concurrency, int):
            raise InvalidInputError(f"Invalid max_concurrency: must be a whole number, got {self.max_concurrency!r}")
        if not 1 <= self.max_concurrency <= 1000:
            raise InvalidInputError(f"Invalid max_concurrency: must be from 1 to 1000, got {self.max_concurrency}")
        chain = self.check_output(folder=True)
        # The shared inputs, checked against every model of the chain before any request (each row's prompt and
        # aspect ratio are checked as the rows are read).
        self.check_model_inputs(chain, ["a prompt"])
        return run_dataset(self, context)
