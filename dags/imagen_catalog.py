"""
A product image for every row of a catalog, stored as ``<key>.png``, paying only for new or changed rows.

``ImagenDatasetOperator`` reads ``data/products.csv`` (key, prompt, an optional aspect ratio, and columns it
carries to the manifest untouched), stores each image at ``<output folder>/<key>.<ext>``, and writes a manifest
(JSONL, one line per row) for the next task. Run it again: every image is reused, nothing is billed. Edit a prompt:
that row alone is generated again and replaces its image.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from airflow_provider_imagen.operators import ImagenDatasetOperator

PRODUCTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "products.csv")

with DAG(
    dag_id="imagen_catalog",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["imagen", "example"],
    doc_md=__doc__,
):
    images = ImagenDatasetOperator(
        task_id="product_images",
        items=PRODUCTS,
        # One folder for every run: a rerun finds what is there with one listing and pays only for the rest.
        output_path="{{ var.value.get('imagen_output_dir', '/tmp/airflow-imagen') }}/catalog/",
        aspect_ratio="1:1",  # for rows that leave it empty
        person_generation="dont_allow",
        max_concurrency=4,
    )

    @task
    def report(summary: dict[str, Any]) -> dict[str, Any]:
        """Read the manifest the images task wrote: one JSON line per product."""
        import json

        from airflow.sdk import ObjectStoragePath

        with ObjectStoragePath(summary["manifest"]).open("r") as manifest:
            rows = [json.loads(line) for line in manifest]
        for row in rows:
            print(f"{row['key']} ({row['category']}, {row['price']}): {row['status']} -> {row['stored_uri']}")
        return {"rows": len(rows), "generated": summary["generated"] + summary["replaced"]}

    report(images.output)
