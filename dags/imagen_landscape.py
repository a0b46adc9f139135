"""
A 16:9 landscape (1408x768).

Runs offline against the emulator (``scripts/quickstart.sh``) or against Cloudflare when the
``cloudflare_workers_ai_default`` connection holds real credentials.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_imagen.operators import ImagenGenerateImageOperator

with DAG(
    dag_id="imagen_landscape",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["imagen", "example"],
    doc_md=__doc__,
):
    ImagenGenerateImageOperator(
        task_id="generate_image",
        prompt="A dramatic drone shot of a winding river through an autumn forest, warm golden and red tones",
        aspect_ratio="16:9",
    )
