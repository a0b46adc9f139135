"""
Test DAGs for "Retries never pay twice": each task fails a try through emulator faults queued by the test
(tests/e2e/test_durable_retries.py), then retries; the test counts generations at the emulator.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_provider_imagen.operators import ImagenGenerateImageOperator, ImagenGenerateImagesOperator

OUTPUT = "{{ var.value.imagen_output_dir }}/durable/"
BATCH_PROMPTS = [f"durable batch, study {n}" for n in range(10)]


def dag(dag_id: str) -> DAG:
    return DAG(dag_id=dag_id, schedule=None, start_date=datetime(2025, 1, 1), catchup=False, tags=["durable-test"])


FAST_RETRY = {"retries": 2, "retry_delay": timedelta(seconds=1)}

with dag("durable_single"):
    ImagenGenerateImageOperator(task_id="generate", prompt="durable single", output_path=OUTPUT, **FAST_RETRY)

with dag("durable_deferrable"):
    ImagenGenerateImageOperator(
        task_id="generate", prompt="durable deferrable", output_path=OUTPUT, deferrable=True, **FAST_RETRY
    )

with dag("durable_batch"):
    ImagenGenerateImagesOperator(
        task_id="generate", prompts=BATCH_PROMPTS, max_concurrency=1, output_path=OUTPUT, **FAST_RETRY
    )

with dag("durable_expired"):
    ImagenGenerateImageOperator(task_id="generate", prompt="durable expired", output_path=OUTPUT, **FAST_RETRY)

with dag("durable_cleared"):
    # One retry: both tries fail, then a person clears the failed task.
    ImagenGenerateImageOperator(
        task_id="generate", prompt="durable cleared", output_path=OUTPUT, retries=1, retry_delay=timedelta(seconds=1)
    )

with dag("durable_changed"):
    # The prompt is re-rendered from a Variable the test changes between the tries.
    ImagenGenerateImageOperator(
        task_id="generate",
        prompt="{{ var.value.durable_prompt }}",
        output_path=OUTPUT,
        retries=1,
        retry_delay=timedelta(seconds=8),
    )

with dag("durable_killed"):
    # The try is killed while Cloudflare still works on the image (which it finishes and bills); the next
    # try re-sends the same request, which AI Gateway answers from its cache.
    ImagenGenerateImageOperator(
        task_id="generate",
        prompt="durable killed",
        execution_timeout=timedelta(seconds=3),
        retries=1,
        retry_delay=timedelta(seconds=5),
    )
