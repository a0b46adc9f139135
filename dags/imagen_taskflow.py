"""
TaskFlow: ``@task.imagen`` turns a function that says what to draw into an Imagen 4 task.

The function returns the prompt, or a dict of inputs (``prompt``, ``aspect_ratio``, ``person_generation``)
whose values win over the decorator's arguments. Everything else is ``ImagenGenerateImageOperator``: the task
returns the image URL, pushes XCom ``image`` (the summary), stores with ``output_path`` (XCom ``stored_uri``),
defers with ``deferrable=True``, and maps with ``.partial()`` / ``.expand()``. A returned input is checked by
the same rules, in the same words, as an operator argument: ``{"prompt": ..., "style": ...}`` fails naming
``style``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, task

from airflow_provider_imagen.retry_policy import RETRY_POLICIES_SUPPORTED, ImagenRetryPolicy

MENU = ["ramen", "tiramisu", "pad thai"]

# A deferred task whose trigger fires very fast can be failed by a race in Airflow's scheduler
# (apache/airflow#66374): a retry then costs nothing, as the image it paid for is reused (durable=True).
RETRIES: dict[str, Any] = {"retries": 2, "retry_delay": timedelta(seconds=10)}
if RETRY_POLICIES_SUPPORTED:  # Airflow 3.3+: a refusal no retry changes fails at once, a rate limit waits 30 s+
    RETRIES["retry_policy"] = ImagenRetryPolicy()

with DAG(
    default_args=RETRIES,
    dag_id="imagen_taskflow",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["imagen", "example"],
    doc_md=__doc__,
):

    @task
    def todays_special() -> str:
        """Stands in for any upstream step: a database query, an API call, a file."""
        return "sushi"

    @task.imagen(aspect_ratio="16:9")
    def hero_image(dish: str) -> str:
        """Return the prompt: any Python may build it, from upstream XComs or the context."""
        return f"A chef preparing {dish} in a traditional Japanese kitchen, detailed close-up"

    @task.imagen(deferrable=True)  # the triggerer waits for Cloudflare, not a worker slot
    def menu_card(dish: str, portrait: bool) -> dict[str, str]:
        """Return a dict to choose inputs per image: here the aspect ratio follows the card's layout."""
        return {
            "prompt": f"A bowl of {dish} on a wooden table, overhead shot, menu photography",
            "aspect_ratio": "3:4" if portrait else "4:3",
        }

    @task
    def menu(urls: list[str]) -> dict[str, str]:
        """Mapped images arrive in order: pair each dish with its picture."""
        return dict(zip(MENU, urls, strict=True))

    hero_image(todays_special())
    menu(menu_card.partial(portrait=True).expand(dish=MENU))
