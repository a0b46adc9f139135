"""
Generate and keep: images are stored in a local folder, and a downstream DAG runs on the Asset event.

Cloudflare's image URLs may expire, so ``output_path`` downloads each image right after generation
(streamed, size-capped, never half-written) into a folder, named from its inputs. The task pushes XCom
``stored_uri`` and records an event on the ``imagen_generated_images`` Asset whose extra lists the stored
images; ``imagen_persist_asset_consumer`` is scheduled on that Asset and reads them.

The folder is the Airflow Variable ``imagen_output_dir`` (default ``/tmp/airflow-imagen``); any
``ObjectStoragePath`` URI works too, e.g. ``s3://aws_default@my-bucket/images/``.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Asset, ObjectStoragePath, task

from airflow_provider_imagen.operators import ImagenGenerateImageOperator

GENERATED_IMAGES = Asset("imagen_generated_images")

with DAG(
    dag_id="imagen_persist_asset",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["imagen", "example"],
    doc_md=__doc__,
):
    ImagenGenerateImageOperator(
        task_id="generate_and_store",
        prompt="A sleek wireless headphone on a minimalist white marble surface with soft studio lighting",
        aspect_ratio="1:1",
        output_path="{{ var.value.get('imagen_output_dir', '/tmp/airflow-imagen') }}/",
        outlets=[GENERATED_IMAGES],
    )


with DAG(
    dag_id="imagen_persist_asset_consumer",
    schedule=[GENERATED_IMAGES],
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["imagen", "example"],
    doc_md="Runs whenever `imagen_persist_asset` stores new images, and checks each one.",
):

    @task(inlets=[GENERATED_IMAGES])
    def check_images(*, inlet_events=None) -> list[dict[str, object]]:
        """Open every image the latest Asset event lists: what a thumbnailer or uploader would do next."""
        events = inlet_events[GENERATED_IMAGES]
        if not events:  # triggered by hand before imagen_persist_asset ever stored an image
            print("Nothing to check yet: run imagen_persist_asset first; this DAG then runs on its own.")
            return []
        latest = events[-1]
        checked = []
        for image in latest.extra["images"]:
            path = ObjectStoragePath(image["stored_uri"])
            with path.open("rb") as f:
                head = f.read(8)
            checked.append(
                {"stored_uri": image["stored_uri"], "bytes": path.stat().st_size, "png": head[:4] == b"\x89PNG"}
            )
        return checked

    check_images()
