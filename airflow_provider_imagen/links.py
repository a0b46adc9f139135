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

    Computed by the worker when the task ends (Airflow 3), from the task instance's own XComs, so every map
    index of a mapped task links to its own image.
    """

    name = "Generated image"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        stored = _web_url(XCom.get_value(ti_key=ti_key, key="stored_uri"))
        return stored or _web_url(XCom.get_value(ti_key=ti_key, key="return_value")) or ""
