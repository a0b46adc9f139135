"""``@task.imagen``: a TaskFlow function returns what to draw, and the task generates it."""

from __future__ import annotations

from airflow_provider_imagen.decorators.imagen import imagen_task

__all__ = ["imagen_task"]
