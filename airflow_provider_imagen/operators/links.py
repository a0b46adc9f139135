"""The "Generated image" button on a task in the Airflow UI."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


def web_url(value: object) -> str | None:
    """Return ``value`` if it is a web address a browser can open, else ``None``."""
    return value if isinstance(value, str) and value.startswith(("https://", "http://")) else None


class GeneratedImageLink(BaseOperatorLink):
    """
    Point at the image a task generated: the stored copy when it lives at a web URL, else Cloudflare's URL.

    Airflow 3 computes links on the worker as the try ends, with the operator that ran it: the operator's
    ``image_link``, set once it has an image, is the link. A try that deferred or failed has none, and reads no
    XCom for it (reading one that was never pushed logs an error).
    """

    name = "Generated image"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        """Return the image's web address, or an empty string when this try has no image."""
        link = getattr(operator, "image_link", "")
        return link if isinstance(link, str) else ""
