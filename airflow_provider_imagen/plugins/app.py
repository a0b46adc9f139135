"""
The gallery's FastAPI app, mounted on the api-server under ``/imagen``.

Every route is declared with Airflow's own ``requires_access_dag`` on the ``dag_id`` in its path: Airflow does
not protect plugin routes by itself. The user is the one the UI is logged in as (its ``_token`` cookie reaches
the iframe, which the UI loads same-origin) or a ``Bearer`` token. Images are named by task, map index and
position, never by a path: the stored URI is read from the run's own XCom, and the object it names is read
only under ``[imagen] gallery_roots`` (see :mod:`airflow_provider_imagen.plugins.roots`).
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote, urlencode

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep  # noqa: TC002 - FastAPI reads it at runtime
from airflow.api_fastapi.core_api.security import requires_access_dag
from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from airflow_provider_imagen.plugins.images import CostTotal, GalleryImage, find_image, read_gallery, run_exists
from airflow_provider_imagen.plugins.roots import CONFIG_OPTION, CONFIG_SECTION, ENV_VAR, gallery_roots
from airflow_provider_imagen.plugins.store import GalleryBusy, NotServable, open_image, refusal, thumbnail

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

PAGE_SIZE = 48
MAX_PAGE_SIZE = 200
MAX_FAILURES_SHOWN = 100

# The page runs no script at all; images come from this app or from Cloudflare's (http or https) URLs.
PAGE_CSP = (
    "default-src 'none'; img-src 'self' https: http:; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
)
# An image response is never a document: even a browser that sniffs would get a sandboxed, script-less one.
IMAGE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "Cache-Control": "private, max-age=3600",
}
# Missing, unreadable, outside the roots, too large, not an image: the browser cannot tell which (the log can).
NOT_AVAILABLE = "This image is not available"
_EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}

# Reading the images of a run is reading its XComs: the same permission the REST API's XCom routes ask for.
can_read_xcoms = Depends(requires_access_dag(method="GET", access_entity=DagAccessEntity.XCOM))

app = FastAPI(
    title="Imagen gallery",
    description="The images each DAG run generated with airflow-provider-imagen.",
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
    dependencies=[can_read_xcoms],
)


def _environment() -> Any:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    return Environment(
        loader=FileSystemLoader(Path(__file__).with_name("templates")),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )


_TEMPLATES = _environment()


def _map_index(value: str | None) -> int | None:
    """
    Return the map index a gallery link names, or ``None`` for the whole task.

    The UI leaves ``{MAP_INDEX}`` unreplaced on a task that is not mapped: then the whole task is shown.
    """
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class _Card:
    """One card of the page: the image's fields, and its links relative to the run's URL (no run id to quote)."""

    image: GalleryImage
    link: str
    thumbnail: str
    position_label: str
    refused: str | None  # why the stored URI will not be read, when that shows without reading it

    def __getattr__(self, name: str) -> Any:
        return getattr(self.image, name)


def _card(image: GalleryImage, batch_sizes: Counter[tuple[str, int]]) -> _Card:
    where = f"{quote(image.task_id, safe='')}/{image.map_index}/{image.position}"
    several = batch_sizes[(image.task_id, image.map_index)] > 1
    refused = refusal(image.stored_uri) if image.stored_uri else None
    return _Card(image, f"images/{where}", f"thumbnails/{where}", str(image.position) if several else "", refused)


@app.get("/dags/{dag_id}/runs/{run_id}/gallery", response_class=HTMLResponse)
def gallery(
    dag_id: str,
    run_id: str,
    session: SessionDep,
    task_id: str | None = None,
    map_index: str | None = None,
    page: Annotated[int, Query(ge=1)] = 1,
    per_page: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = PAGE_SIZE,
) -> HTMLResponse:
    """
    Serve the images of a run, or of one task instance, as a page of cards.

    :param dag_id: the DAG (authorised against).
    :param run_id: the run.
    :param session: the metadata-database session.
    :param task_id: only this task's images (the task-instance view).
    :param map_index: only this map index; anything not a number shows every map index of the task.
    :param page: which page, from 1.
    :param per_page: images per page (at most 200).
    """
    _require_run(session, dag_id, run_id)
    index = _map_index(map_index) if task_id else None
    found = read_gallery(session, dag_id=dag_id, run_id=run_id, task_id=task_id or None, map_index=index)
    images = found.images
    pages = max(1, math.ceil(len(images) / per_page))
    page = min(page, pages)
    shown = images[(page - 1) * per_page : page * per_page]
    batch_sizes = Counter((image.task_id, image.map_index) for image in images)
    tasks = Counter(image.task_id for image in images)

    def page_link(number: int) -> str:
        query: dict[str, str | int] = {"task_id": task_id} if task_id else {}
        if task_id and map_index is not None:
            query["map_index"] = map_index
        query["page"] = number
        if per_page != PAGE_SIZE:
            query["per_page"] = per_page
        return "gallery?" + urlencode(query)

    html = _TEMPLATES.get_template("gallery.html").render(
        dag_id=dag_id,
        run_id=run_id,
        task_id=task_id,
        map_index=index,
        total=len(images),
        tasks=[
            (name, count, CostTotal.of([i for i in images if i.task_id == name]))
            for name, count in sorted(tasks.items())
        ],
        cost=CostTotal.of(images),
        images=[_card(image, batch_sizes) for image in shown],
        failures=found.failures[:MAX_FAILURES_SHOWN] if page == 1 else [],
        failures_total=len(found.failures),
        page=page,
        pages=pages,
        page_link=page_link,
        no_roots=any(image.stored_uri for image in images) and not gallery_roots(),
        roots_option=f"[{CONFIG_SECTION}] {CONFIG_OPTION}",
        roots_env=ENV_VAR,
    )
    return HTMLResponse(html, headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-store"})


@app.get("/dags/{dag_id}/runs/{run_id}/thumbnails/{task_id}/{map_index}/{position}")
def image_thumbnail(
    dag_id: str, run_id: str, task_id: str, map_index: int, position: int, session: SessionDep
) -> Response:
    """
    Serve a JPEG thumbnail (at most 320 px) of a stored image, made with Pillow and cached.

    :param dag_id: the DAG (authorised against).
    :param run_id: the run.
    :param task_id: the task that generated the image.
    :param map_index: its map index (-1 when not mapped).
    :param position: the image's place in the task instance's XCom (0 unless a batch).
    :param session: the metadata-database session.
    """
    uri = _stored_uri(session, dag_id, run_id, task_id, map_index, position)
    try:
        data = thumbnail(uri)
    except NotServable as err:
        raise _not_available(dag_id, run_id, task_id, map_index, position, uri, err) from None
    except GalleryBusy as err:
        log.warning("Imagen gallery: no thumbnail for %s/%s/%s: %s", dag_id, run_id, task_id, err)
        raise HTTPException(503, "Too many thumbnails are being made: try again", {"Retry-After": "5"}) from None
    return Response(data, media_type="image/jpeg", headers=IMAGE_HEADERS)


@app.get("/dags/{dag_id}/runs/{run_id}/images/{task_id}/{map_index}/{position}")
def full_image(
    dag_id: str, run_id: str, task_id: str, map_index: int, position: int, session: SessionDep
) -> StreamingResponse:
    """
    Stream the stored image itself from its storage, with the same Airflow connections the worker used.

    :param dag_id: the DAG (authorised against).
    :param run_id: the run.
    :param task_id: the task that generated the image.
    :param map_index: its map index (-1 when not mapped).
    :param position: the image's place in the task instance's XCom (0 unless a batch).
    :param session: the metadata-database session.
    """
    uri = _stored_uri(session, dag_id, run_id, task_id, map_index, position)
    try:
        media_type, size, chunks = open_image(uri)
    except NotServable as err:
        raise _not_available(dag_id, run_id, task_id, map_index, position, uri, err) from None
    name = re.sub(r"[^A-Za-z0-9._-]", "_", f"{dag_id}-{task_id}-{map_index}-{position}") + _EXTENSIONS[media_type]
    headers = {**IMAGE_HEADERS, "Content-Length": str(size), "Content-Disposition": f'inline; filename="{name}"'}
    return StreamingResponse(chunks, media_type=media_type, headers=headers)


def _not_available(
    dag_id: str, run_id: str, task_id: str, map_index: int, position: int, uri: str, err: NotServable
) -> HTTPException:
    """Log why a stored image is not served, and return the one answer the browser gets whatever the reason."""
    where = f"DAG {dag_id!r} run {run_id!r} task {task_id!r} [{map_index}] image {position}"
    log.warning("Imagen gallery: not serving %r (%s): %s", uri, where, err)
    return HTTPException(404, NOT_AVAILABLE)


def _require_run(session: Session, dag_id: str, run_id: str) -> None:
    if not run_exists(session, dag_id=dag_id, run_id=run_id):
        raise HTTPException(404, f"DAG {dag_id!r} has no run {run_id!r}")


def _stored_uri(session: Session, dag_id: str, run_id: str, task_id: str, map_index: int, position: int) -> str:
    image = find_image(session, dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=map_index, position=position)
    if image is None:
        raise HTTPException(404, "This run's XComs name no such image")
    if image.stored_uri is None:
        raise HTTPException(404, "This image was not stored (no output_path): only Cloudflare's URL exists")
    return image.stored_uri
