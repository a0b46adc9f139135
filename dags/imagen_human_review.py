"""
Human review: generated images wait for a person in Airflow's own review UI before they are published.

``draft`` generates one image per subject with ``@task.imagen`` and stores each in a drafts folder
(``output_path``). ``review`` is the standard provider's ``ApprovalOperator`` (Airflow 3.1+): the task waits,
and the run's "Required actions" page shows a Markdown body with every image inline and two buttons.

- **Approve**: ``publish`` copies the stored images to the published folder (through ``ObjectStoragePath``,
  so an ``s3://`` or ``gs://`` folder works the same) and returns where they went.
- **Reject**: nothing is published. ``publish`` is skipped, the run still succeeds (a rejection is an
  answer, not a failure), and the drafts stay where they are for a look; trigger the DAG again to get new
  drafts.

Who answered what stays on the ``review`` task (its "Required actions" entry, or ``GET .../hitlDetails`` in
the REST API); an approval is also its XCom.

The images shown are Cloudflare's URLs (the browser loads them directly; they may expire after a while, so
answer the same day). Folders: ``drafts/`` and ``published/`` in the Airflow Variable ``imagen_review_dir``,
which defaults to ``review/`` in ``imagen_output_dir`` (itself ``/tmp/airflow-imagen`` by default); any
``ObjectStoragePath`` URI works, e.g. ``s3://aws_default@my-bucket/review``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import DAG, ObjectStoragePath, task

SUBJECTS = ["a lighthouse on a rocky coast at dawn", "a red vintage bicycle leaning against a yellow wall"]
REVIEW_DIR = (
    "{{ var.value.get('imagen_review_dir', var.value.get('imagen_output_dir', '/tmp/airflow-imagen') ~ '/review') }}"
)


def review_markdown(images: list[dict[str, Any]], published_dir: str) -> str:
    """The review's body: one heading and inline image per draft, then what each answer does."""
    lines = [f"{len(images)} generated image(s) wait for review.", ""]
    for number, image in enumerate(images, 1):
        alt = " ".join(image["prompt"].replace("[", "(").replace("]", ")").split())  # keep the Markdown intact
        lines += [f"**{number}. {alt}** ({image['width']}x{image['height']})", "", f"![{alt}]({image['url']})", ""]
    lines.append(f"**Approve** copies them to `{published_dir}`; **Reject** publishes nothing.")
    return "\n".join(lines)


with DAG(
    dag_id="imagen_human_review",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["imagen", "example"],
    doc_md=__doc__,
):

    @task.imagen(aspect_ratio="4:3", output_path=f"{REVIEW_DIR}/drafts/")
    def draft(subject: str) -> str:
        return f"{subject}, watercolour"

    @task
    def prepare_review(urls: list[str], published_dir: str, ti=None) -> dict[str, Any]:
        """The Markdown the reviewer sees and the stored files an approval publishes."""
        indexes = list(range(len(urls)))
        images = ti.xcom_pull(task_ids="draft", key="image", map_indexes=indexes)
        return {"body": review_markdown(images, published_dir), "stored": [image["stored_uri"] for image in images]}

    @task
    def publish(prepared: dict[str, Any], published_dir: str) -> list[str]:
        """Copy every approved image into the published folder, keeping its (unique) name."""
        target = ObjectStoragePath(published_dir)
        target.mkdir(parents=True, exist_ok=True)
        published = []
        for uri in prepared["stored"]:
            source = ObjectStoragePath(uri)
            destination = target / source.name
            source.copy(destination)
            published.append(str(destination))
        return published

    published_dir = f"{REVIEW_DIR}/published/"
    prepared = prepare_review(draft.expand(subject=SUBJECTS), published_dir)
    review = ApprovalOperator(
        task_id="review",
        subject="Publish these generated images?",
        body="{{ ti.xcom_pull(task_ids='prepare_review')['body'] }}",
    )
    prepared >> review >> publish(prepared, published_dir)
