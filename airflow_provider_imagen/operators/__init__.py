"""
The Imagen operators: one image, a batch, a keyed dataset, and the link to a generated image.

Each class is imported when first asked for, so a DAG that uses one operator does not pay, at parse time, for
importing the others.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_imagen.operators.base import ImagenBaseOperator
    from airflow_provider_imagen.operators.batch import ImagenGenerateImagesOperator
    from airflow_provider_imagen.operators.dataset import ImagenDatasetOperator
    from airflow_provider_imagen.operators.image import ImagenGenerateImageOperator
    from airflow_provider_imagen.operators.links import GeneratedImageLink

__all__ = [
    "GeneratedImageLink",
    "ImagenBaseOperator",
    "ImagenDatasetOperator",
    "ImagenGenerateImageOperator",
    "ImagenGenerateImagesOperator",
]

_MODULES = {
    "GeneratedImageLink": "links",
    "ImagenBaseOperator": "base",
    "ImagenDatasetOperator": "dataset",
    "ImagenGenerateImageOperator": "image",
    "ImagenGenerateImagesOperator": "batch",
}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return getattr(import_module(f"{__name__}.{_MODULES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
