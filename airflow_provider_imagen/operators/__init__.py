"""The Imagen operators: one image, a batch, a dataset of keyed rows, and the link to a generated image."""

from __future__ import annotations

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
