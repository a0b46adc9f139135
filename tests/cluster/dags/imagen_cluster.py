"""
The cluster test's DAG: every way the provider generates, all persisting to S3, on a CeleryExecutor.

- ``deferred``: mapped, deferrable: the triggerer makes the calls; the workers resume and store.
- ``on_worker``: mapped, synchronous: the Celery workers make the calls.
- ``batch``: one task generating several prompts concurrently.

Each run writes under ``<imagen_cluster_output>/<tag>/<task>/``; ``tag`` comes from the run's conf, and is
part of every prompt, so each run asks for images of its own and the emulator counts them per prompt.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_provider_imagen.operators import ImagenGenerateImageOperator, ImagenGenerateImagesOperator

N_DEFERRED = 6
N_ON_WORKER = 8
N_BATCH = 6

TAG = "{{ dag_run.conf['tag'] }}"
OUTPUT = "{{ var.value.imagen_cluster_output }}/" + TAG


def prompts(task_id: str, count: int) -> list[str]:
    """The prompts of one task; the test rebuilds them with the run's tag to count them at the emulator."""
    return [f"cluster {TAG} {task_id} image {i}: a lighthouse on a cliff at dusk" for i in range(count)]


with DAG(
    dag_id="imagen_cluster",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_tasks=32,
    default_args={"retries": 3, "retry_delay": timedelta(seconds=3)},
    tags=["imagen", "cluster-test"],
    doc_md=__doc__,
):
    ImagenGenerateImageOperator.partial(
        task_id="deferred", deferrable=True, aspect_ratio="16:9", output_path=OUTPUT + "/deferred/"
    ).expand(prompt=prompts("deferred", N_DEFERRED))

    ImagenGenerateImageOperator.partial(
        task_id="on_worker", deferrable=False, aspect_ratio="1:1", output_path=OUTPUT + "/on_worker/"
    ).expand(prompt=prompts("on_worker", N_ON_WORKER))

    ImagenGenerateImagesOperator(
        task_id="batch",
        prompts=prompts("batch", N_BATCH),
        aspect_ratio="4:3",
        max_concurrency=3,
        output_path=OUTPUT + "/batch/",
    )
