"""The "Generated image" button on a task in the Airflow UI."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


def _web_url(value: object) -> str | None:
    return value if isinstance(value, str) and value.startswith(("https://", "http://")) else None


class GeneratedImageLink(BaseOperatorLink):
    """
    Points at the image a task generated: the stored copy when it lives at a web URL, else Cloudflare's URL.

    Computed by the worker when the task ends (Airflow 3), from the task instance's own ``image`` summary,
    which every successful try pushes (reading an XCom that was never pushed logs an error), so every map
    index of a mapped task links to its own image.
    """

    name = "Generated image"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        if getattr(operator, "_imagen_deferring", False):
            return ""  # a try that deferred pushed no image; asking for it would log "XCom not found"
        summary = XCom.get_value(ti_key=ti_key, key="image")
        if not isinstance(summary, dict):
            return ""
        return _web_url(summary.get("stored_uri")) or _web_url(summary.get("url")) or ""
