"""
Deferrable, mapped generation: each prompt is a mapped task that hands the wait to the triggerer.

Image generation takes seconds to tens of seconds. With ``deferrable=True`` the worker slot is freed as
soon as the request is prepared; the triggerer makes the Cloudflare call (all deferred tasks share one
connection pool) and the task resumes only to push its XComs. Each mapped task instance gets its own
"Generated image" link in the UI.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG

from airflow_provider_imagen.operators import ImagenGenerateImageOperator
from airflow_provider_imagen.retry_policy import RETRY_POLICIES_SUPPORTED, ImagenRetryPolicy

PROMPTS = [
    "A golden retriever puppy playing in autumn leaves",
    "An elegant Art Deco poster featuring a jazz singer under a spotlight",
    "A sleek wireless headphone on a minimalist white marble surface with soft studio lighting",
]

# A deferred task whose trigger fires very fast can be failed by a race in Airflow's scheduler
# (apache/airflow#66374): a retry then costs nothing, as the image it paid for is reused (durable=True).
RETRIES: dict[str, Any] = {"retries": 2, "retry_delay": timedelta(seconds=10)}
if RETRY_POLICIES_SUPPORTED:  # Airflow 3.3+: a refusal no retry changes fails at once, a rate limit waits 30 s+
    RETRIES["retry_policy"] = ImagenRetryPolicy()

with DAG(
    default_args=RETRIES,
    dag_id="imagen_deferrable_mapped",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["imagen", "example"],
    doc_md=__doc__,
):
    ImagenGenerateImageOperator.partial(task_id="generate_image", aspect_ratio="16:9", deferrable=True).expand(
        prompt=PROMPTS
    )
