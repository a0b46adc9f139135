"""Apache Airflow provider for Google's Imagen 4 on Cloudflare Workers AI."""

from __future__ import annotations

__version__ = "0.1.0"
