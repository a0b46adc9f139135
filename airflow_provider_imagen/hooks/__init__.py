"""The hook: an Airflow connection to Cloudflare Workers AI, and the calls made through it."""

from __future__ import annotations

from airflow_provider_imagen.hooks.cloudflare import CloudflareWorkersAIHook

__all__ = ["CloudflareWorkersAIHook"]
