"""The trigger: one deferred generation, run in the triggerer's event loop."""

from __future__ import annotations

from airflow_provider_imagen.triggers.imagen import ImagenGenerateImageTrigger

__all__ = ["ImagenGenerateImageTrigger"]
