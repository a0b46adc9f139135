"""
A batch in one task: many prompts, generated concurrently over one connection pool, kept in a folder.

``ImagenGenerateImagesOperator`` returns the URLs in prompt order. If some prompts fail, the others still
finish, and then the task fails listing each failed prompt and its reason; ``fail_on_error=False`` returns
``None`` for them instead and lists them in XCom ``failures``.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_imagen.operators import ImagenGenerateImagesOperator

PROMPTS = [
    "A golden retriever puppy playing in autumn leaves",
    "A dramatic drone shot of a winding river through an autumn forest, warm golden and red tones",
    "An elegant Art Deco poster featuring a jazz singer under a spotlight",
    "A chef preparing sushi in a traditional Japanese kitchen, detailed close-up",
    "A sleek wireless headphone on a minimalist white marble surface with soft studio lighting",
]

with DAG(
    dag_id="imagen_batch",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["imagen", "example"],
    doc_md=__doc__,
):
    ImagenGenerateImagesOperator(
        task_id="generate_images",
        prompts=PROMPTS,
        aspect_ratio="4:3",
        max_concurrency=4,
        # One folder per run; run_id works for manual runs too, which have no logical date.
        output_path=(
            "{{ var.value.get('imagen_output_dir', '/tmp/airflow-imagen') }}/batch/{{ run_id | replace(':', '-') }}/"
        ),
    )
