"""
OpenLineage: the images an operator stored, reported as its output datasets.

The OpenLineage provider calls ``get_openlineage_facets_on_complete(task_instance)`` on an operator when its
task succeeds. This module imports nothing from OpenLineage until that call, so the provider works (and
imports as fast) without ``apache-airflow-providers-openlineage`` installed: no call, no import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage

#: Object stores whose namespace is ``scheme://bucket`` and whose dataset name is the key, as the amazon,
#: google and microsoft providers name them; ``gcs://`` is the same store as ``gs://``.
_BUCKET_SCHEMES = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs", "abfs": "abfs", "abfss": "abfss", "wasbs": "wasbs"}


def dataset_name(uri: str) -> tuple[str, str]:
    """
    Return the OpenLineage ``(namespace, name)`` of a stored image.

    It follows the naming spec as Airflow's providers do: ``file:///data/a.png`` -> ``("file", "/data/a.png")``;
    ``s3://conn_id@bucket/key`` -> ``("s3://bucket", "key")`` (an ObjectStoragePath's connection id is not part of where
    the data is).

    :param uri: a stored URI as the operators push it in XCom ``stored_uri``.
    """
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    host = parts.netloc.rpartition("@")[2]  # drop "conn_id@"
    if scheme in ("", "file", "local"):
        return ("file" if not host else f"file://{host}"), parts.path
    if scheme in _BUCKET_SCHEMES:
        return f"{_BUCKET_SCHEMES[scheme]}://{host}", parts.path.lstrip("/")
    return f"{scheme}://{host}", parts.path.lstrip("/") or "/"


def stored_uris(task_instance: Any) -> list[str]:
    """
    Return what the task stored, from its XCom ``stored_uri``.

    That is one URI (single image) or a list with ``None`` for failed prompts (batch). Empty without
    ``output_path``.

    :param task_instance: the task instance the OpenLineage listener passes.
    """
    pushed = task_instance.xcom_pull(
        task_ids=task_instance.task_id, key="stored_uri", map_indexes=task_instance.map_index
    )
    values = pushed if isinstance(pushed, list) else [pushed]
    return [value for value in values if isinstance(value, str) and value]


class ImagenLineageMixin:
    """
    Reports the images an Imagen operator stored with ``output_path`` as OpenLineage output datasets.

    Mixed into an operator before ``BaseOperator``; needs nothing from it but the XCom ``stored_uri`` that the
    operator pushes in ``_finish`` (single image) or ``execute`` (batch).
    """

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage:
        """
        One output dataset per stored image; none when nothing was stored (no ``output_path``).

        :param task_instance: the finished task instance, whose XCom ``stored_uri`` is read.
        """
        from airflow.providers.common.compat.openlineage.facet import Dataset
        from airflow.providers.openlineage.extractors import OperatorLineage

        outputs = [
            Dataset(namespace=namespace, name=name) for namespace, name in map(dataset_name, stored_uris(task_instance))
        ]
        return OperatorLineage(outputs=outputs)
