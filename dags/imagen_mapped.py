"""
One task per prompt with dynamic task mapping, and a downstream task that receives every URL.

``.partial()`` holds what all images share; ``.expand(prompt=...)`` makes one mapped task instance per
prompt, each retried and shown on its own in the UI. ``collect`` gets the URLs in prompt order.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, task

from airflow_provider_imagen.operators import ImagenGenerateImageOperator

PROMPTS = [
    "A golden retriever puppy playing in autumn leaves",
    "A lighthouse on a rocky coast at dawn, watercolour",
    "A bowl of ramen on a wooden table, overhead shot",
    "A red vintage bicycle leaning against a yellow wall",
]

with DAG(
    dag_id="imagen_mapped",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["imagen", "example"],
    doc_md=__doc__,
):
    images = ImagenGenerateImageOperator.partial(task_id="generate_image", aspect_ratio="4:3").expand(prompt=PROMPTS)

    @task
    def collect(urls: list[str]) -> dict[str, str]:
        """Pair each prompt with its image URL: what a downstream step (a report, a CMS upload) consumes."""
        urls = list(urls)
        if len(urls) != len(PROMPTS) or not all(urls):
            raise ValueError(f"expected {len(PROMPTS)} image URLs, got {urls!r}")
        return dict(zip(PROMPTS, urls, strict=True))

    collect(images.output)
