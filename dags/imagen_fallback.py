"""
Model fallback: when Imagen 4 is unavailable, FLUX.1 [schnell] on Workers AI makes the image instead.

``fallback_models`` lists the models to try in turn. The next one is tried only when the one before is
unavailable once its retries are spent: out of capacity or throttled, ``provider_unavailable``, HTTP 503, or
not available via unified billing. An input, credentials or quota error fails the task at once, and so does a
call whose image may already have been billed.

FLUX answers with the image itself, not a URL, so ``output_path`` keeps it; the task returns the stored URI
then. Deferred, the triggerer tries Imagen and the task goes on with FLUX on its worker (a trigger event
carries no image bytes). XCom ``image`` names the model that made the image (``model``) and why the others were
passed over (``skipped_models``); the task log says the same.

To see the fallback offline, make the emulator's Imagen unavailable for the next four calls before a run::

    curl -X POST 127.0.0.1:8787/__emulator__/faults \\
        -d '{"preset": "provider_unavailable", "model": "google/imagen-4", "times": 4}'
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, task

from airflow_provider_imagen.operators import ImagenGenerateImageOperator
from airflow_provider_imagen.retry_policy import RETRY_POLICIES_SUPPORTED, ImagenRetryPolicy

FLUX = "@cf/black-forest-labs/flux-1-schnell"

# A deferred task whose trigger fires very fast can be failed by a race in Airflow's scheduler
# (apache/airflow#66374): a retry then costs nothing, as the image it paid for is reused (durable=True).
RETRIES: dict[str, Any] = {"retries": 2, "retry_delay": timedelta(seconds=10)}
if RETRY_POLICIES_SUPPORTED:  # Airflow 3.3+: a refusal no retry changes fails at once, a rate limit waits 30 s+
    RETRIES["retry_policy"] = ImagenRetryPolicy()

with DAG(
    default_args=RETRIES,
    dag_id="imagen_fallback",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["imagen", "example"],
    doc_md=__doc__,
):
    generate = ImagenGenerateImageOperator(
        task_id="generate_image",
        prompt="A lighthouse on a cliff at dawn, watercolor",
        aspect_ratio="16:9",
        fallback_models=[FLUX],
        output_path="{{ var.value.get('imagen_output_dir', '/tmp/airflow-imagen') }}/fallback/",
        deferrable=True,
    )

    @task
    def which_model(summary: dict[str, Any]) -> str:
        """Downstream steps can branch on the model that made the image: FLUX draws in its own style."""
        for skipped in summary["skipped_models"]:
            print(f"{skipped['model']} was passed over: {skipped['reason']}")
        print(f"{summary['model']} made the image, kept at {summary['stored_uri']}")
        return str(summary["model"])

    which_model(generate.output["image"])
