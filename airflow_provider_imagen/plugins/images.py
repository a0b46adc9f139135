"""The images a run generated, read from its XComs: one query per page, whatever the number of tasks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

#: The XComs the operators push: ``image`` (one summary, single operator), ``images`` (a list, batch), and
#: ``failures`` (the prompts a batch with ``fail_on_error=False`` could not draw).
GALLERY_KEYS = ("image", "images", "failures")


@dataclass(frozen=True)
class GalleryImage:
    """
    One generated image as its task's XCom describes it.

    ``position`` tells apart the images of one task instance (a batch pushes a list); it is what the
    routes take to name an image, so a request never carries a path or a URL.
    """

    task_id: str
    map_index: int
    position: int
    prompt: str
    model: str
    aspect_ratio: str | None
    person_generation: str | None
    width: int | None
    height: int | None
    attempts: int | None
    elapsed_seconds: float | None
    url: str | None
    stored_uri: str | None
    media_type: str | None
    estimated_cost_usd: float | None = None  # what this image cost its task instance: 0 when reused

    @property
    def cost_text(self) -> str | None:
        """The estimated cost in dollars, for the card; ``None`` when the XCom has no estimate."""
        return None if self.estimated_cost_usd is None else dollars(self.estimated_cost_usd)

    @property
    def web_url(self) -> str | None:
        """Cloudflare's URL when it is a plain web URL (never a ``javascript:`` or ``data:`` one)."""
        return self.url if self.url and self.url.startswith(("https://", "http://")) else None


@dataclass(frozen=True)
class FailedPrompt:
    """A prompt of a batch that produced no image, with the reason the operator recorded."""

    task_id: str
    map_index: int
    index: int | None
    prompt: str
    reason: str


@dataclass(frozen=True)
class RunGallery:
    """What a run (or task, or task instance) has to show: its images, and its batches' failed prompts."""

    images: list[GalleryImage]
    failures: list[FailedPrompt]


@dataclass(frozen=True)
class CostTotal:
    """The estimated cost of some images: the sum of those with an estimate, and how many have none."""

    usd: float
    unpriced: int

    @classmethod
    def of(cls, images: list[GalleryImage]) -> CostTotal:
        """Add up the estimates of ``images``."""
        known = [image.estimated_cost_usd for image in images if image.estimated_cost_usd is not None]
        return cls(sum(known), len(images) - len(known))

    @property
    def text(self) -> str:
        """Say it: ``$0.12``, ``$0.12 (+ 2 images without a price)``, or ``unknown`` when no image has one."""
        if self.unpriced and self.usd == 0:
            return "unknown (no price known: set the connection's prices)"
        more = f" (+ {self.unpriced} image{'' if self.unpriced == 1 else 's'} without a price)" if self.unpriced else ""
        return dollars(self.usd) + more


def dollars(amount: float) -> str:
    """Write a dollar amount with the cents always shown and sub-cent prices kept: ``$0.04``, ``$0.0006336``."""
    text = f"{amount:.8f}".rstrip("0")
    whole, _, cents = text.partition(".")
    return f"${whole}.{cents.ljust(2, '0')}"


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _cost(value: Any) -> float | None:
    number = _number(value)  # an XCom can be forged: only a finite amount from 0 up is a cost
    return number if number is not None and 0 <= number < float("inf") else None


def _whole(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_summary(task_id: str, map_index: int, position: int, summary: Any) -> GalleryImage | None:
    """
    Return the image of a summary the operators pushed, or ``None`` for anything else.

    Anything else is a failed batch prompt or another task's XCom. Every field is type-checked: an XCom can be
    written by any task of the DAG or through the REST API.
    """
    if not isinstance(summary, dict):
        return None
    url, stored = _text(summary.get("url")), _text(summary.get("stored_uri"))
    if url is None and stored is None:
        return None
    return GalleryImage(
        task_id=task_id,
        map_index=map_index,
        position=position,
        prompt=_text(summary.get("prompt")) or "",
        model=_text(summary.get("model")) or "",
        aspect_ratio=_text(summary.get("aspect_ratio")),
        person_generation=_text(summary.get("person_generation")),
        width=_whole(summary.get("width")),
        height=_whole(summary.get("height")),
        attempts=_whole(summary.get("attempts")),
        elapsed_seconds=_number(summary.get("elapsed_seconds")),
        url=url,
        stored_uri=stored,
        media_type=_text(summary.get("media_type")),
        estimated_cost_usd=_cost(summary.get("estimated_cost_usd")),
    )


def _images_of(task_id: str, map_index: int, key: str, value: Any) -> list[GalleryImage]:
    summaries = value if key == "images" and isinstance(value, list) else [value] if key == "image" else []
    parsed = (parse_summary(task_id, map_index, position, s) for position, s in enumerate(summaries))
    return [image for image in parsed if image is not None]


def _failures_of(task_id: str, map_index: int, value: Any) -> list[FailedPrompt]:
    entries = value if isinstance(value, list) else []
    return [
        FailedPrompt(
            task_id, map_index, _whole(e.get("index")), _text(e.get("prompt")) or "", _text(e.get("reason")) or ""
        )
        for e in entries
        if isinstance(e, dict)
    ]


def read_gallery(
    session: Session, *, dag_id: str, run_id: str, task_id: str | None = None, map_index: int | None = None
) -> RunGallery:
    """
    Every image of a run (or of one task, or one task instance) in task and map-index order, and its failures.

    One SQL query for the whole run: a run of 1,000 mapped task instances is 1,000 small rows, not 1,000
    queries.

    :param session: a metadata-database session.
    :param dag_id: the DAG.
    :param run_id: the run.
    :param task_id: only this task's images.
    :param map_index: only this map index (with ``task_id``).
    """
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    query = (
        select(XComModel.task_id, XComModel.map_index, XComModel.key, XComModel.value)
        .where(XComModel.dag_id == dag_id, XComModel.run_id == run_id, XComModel.key.in_(GALLERY_KEYS))
        .order_by(XComModel.task_id, XComModel.map_index, XComModel.key)
    )
    if task_id is not None:
        query = query.where(XComModel.task_id == task_id)
        if map_index is not None:
            query = query.where(XComModel.map_index == map_index)
    gallery = RunGallery(images=[], failures=[])
    for row in session.execute(query):
        value = XComModel.deserialize_value(row)
        if row.key == "failures":
            gallery.failures.extend(_failures_of(row.task_id, row.map_index, value))
        else:
            gallery.images.extend(_images_of(row.task_id, row.map_index, row.key, value))
    return gallery


def find_image(
    session: Session, *, dag_id: str, run_id: str, task_id: str, map_index: int, position: int
) -> GalleryImage | None:
    """
    Return the one image a route names by task, map index and position, or ``None``.

    :param session: a metadata-database session.
    :param dag_id: the DAG.
    :param run_id: the run.
    :param task_id: the task.
    :param map_index: the map index (-1 when not mapped).
    :param position: the image's place in its task instance's XCom (0 for the single-image operator).
    """
    for image in read_gallery(session, dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=map_index).images:
        if image.position == position:
            return image
    return None


def run_exists(session: Session, *, dag_id: str, run_id: str) -> bool:
    """Whether the run exists, so that a wrong link says so instead of showing an empty gallery."""
    from airflow.models.dagrun import DagRun
    from sqlalchemy import select

    return session.scalar(select(DagRun.id).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)) is not None
