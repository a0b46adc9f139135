"""
A 9:16 portrait poster (768x1408).

Runs offline against the emulator (``scripts/quickstart.sh``) or against Cloudflare when the
``cloudflare_workers_ai_default`` connection holds real credentials.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_imagen.operators import ImagenGenerateImageOperator

with DAG(
    dag_id="imagen_art_deco_portrait",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["imagen", "example"],
    doc_md=__doc__,
):
    ImagenGenerateImageOperator(
        task_id="generate_image",
        prompt="An elegant Art Deco poster featuring a jazz singer under a spotlight",
        aspect_ratio="9:16",
    )
