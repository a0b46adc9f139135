"""
A 1:1 product photo (1024x1024).

Runs offline against the emulator (``scripts/quickstart.sh``) or against Cloudflare when the
``cloudflare_workers_ai_default`` connection holds real credentials.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_imagen.operators import ImagenGenerateImageOperator

with DAG(
    dag_id="imagen_product_photo",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["imagen", "example"],
    doc_md=__doc__,
):
    ImagenGenerateImageOperator(
        task_id="generate_image",
        prompt="A sleek wireless headphone on a minimalist white marble surface with soft studio lighting",
        aspect_ratio="1:1",
    )
