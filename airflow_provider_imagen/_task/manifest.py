"""The manifest of a dataset step: one JSONL line per item, spooled locally and published whole."""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_imagen._task.dataset import Row


class Manifest:
    """
    The manifest of one task instance: JSONL, one line per item, spooled locally and published whole.

    :param target: where it is published (a file URI or path).
    """

    def __init__(self, target: ObjectStoragePath) -> None:
        self.target = target
        self._spool = tempfile.NamedTemporaryFile(  # noqa: SIM115 - open until publish()
            "w", encoding="utf-8", prefix="imagen-manifest-", suffix=".jsonl", delete=False
        )

    def add(self, row: Row, status: str, **fields: Any) -> None:
        """Append one item's line: its key, status, inputs and what was made, then its extra fields."""
        line: dict[str, Any] = {
            **row.extra,
            "key": row.key,
            "status": status,
            "stored_uri": fields.get("stored_uri"),
            "prompt": row.prompt,
            "model": fields.get("model"),
            "aspect_ratio": fields.get("aspect_ratio") or row.aspect_ratio,
            "person_generation": row.person_generation,
            "width": fields.get("width"),
            "height": fields.get("height"),
            "estimated_cost_usd": fields.get("estimated_cost_usd"),
        }
        if status == "failed":
            line["error"] = fields.get("error")
        self._spool.write(json.dumps(line, default=str) + "\n")

    def publish(self) -> str:
        """Put the manifest at its target in one atomic step (a rename, or one upload); return its URI."""
        from airflow_provider_imagen._task.storage import _publish

        self._spool.close()
        try:
            _publish(self._spool.name, self.target)
        finally:
            os.unlink(self._spool.name)
        return str(self.target)


def default_manifest_name(identity: dict[str, Any]) -> str:
    """Return ``manifests/<dag>/<run>/<task>[.<map index>].jsonl``, each part made safe as a file name."""

    def safe(value: object) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", str(value)).lstrip(".") or "_"

    task = safe(identity["task_id"]) + ("" if identity["map_index"] in (-1, None) else f".{identity['map_index']}")
    return f"manifests/{safe(identity['dag_id'])}/{safe(identity['run_id'])}/{task}.jsonl"
