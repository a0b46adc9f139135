"""Provider metadata Airflow discovers through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from airflow_provider_imagen import __version__

HOOK_CLASS = "airflow_provider_imagen.hooks.CloudflareWorkersAIHook"

#: The connection form, as the Airflow 3.2+ UI reads it (dashed keys; underscored ones are ignored).
#: Airflow 3.1 builds the same form from the hook's classmethods.
UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["schema", "port", "login"],
    "relabeling": {"password": "API Token", "host": "API Base URL"},
    "placeholders": {
        "password": "Cloudflare API token with the Workers AI and AI Gateway permissions",
        "host": "https://api.cloudflare.com/client/v4 (leave empty), or http://127.0.0.1:8787/client/v4",
        "extra": '{"account_id": "...", "gateway_id": "my-gateway"}',
        "account_id": "0123456789abcdef0123456789abcdef",
        "gateway_id": "default",
    },
}

CONN_FIELDS: dict[str, Any] = {
    "account_id": {
        "label": "Account ID",
        "description": "Your Cloudflare account id (required): the dashboard's Workers AI page shows it.",
        "schema": {"type": ["string", "null"]},
    },
    "gateway_id": {
        "label": "AI Gateway ID",
        "description": "Optional AI Gateway to route through (sent as cf-aig-gateway-id); 'default' if empty.",
        "schema": {"type": ["string", "null"]},
    },
    "timeout": {
        "label": "Timeout (seconds)",
        "description": "How long to wait for a generation; 180 if empty.",
        "schema": {"type": ["number", "null"], "minimum": 1, "maximum": 3600},
    },
    "max_retries": {
        "label": "Max retries",
        "description": "Retries of transient failures (throttling, 5xx, timeouts); 3 if empty. Each may be billed.",
        "schema": {"type": ["integer", "null"], "minimum": 0, "maximum": 10},
    },
}


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-imagen",
        "name": "Imagen on Cloudflare Workers AI",
        "description": "Generate images with Google's Imagen 4 served by Cloudflare Workers AI.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Cloudflare Workers AI",
                "external-doc-url": "https://developers.cloudflare.com/workers-ai/",
                "tags": ["ai"],
            }
        ],
        "hooks": [{"integration-name": "Cloudflare Workers AI", "python-modules": ["airflow_provider_imagen.hooks"]}],
        "operators": [
            {"integration-name": "Cloudflare Workers AI", "python-modules": ["airflow_provider_imagen.operators"]}
        ],
        "triggers": [
            {"integration-name": "Cloudflare Workers AI", "python-modules": ["airflow_provider_imagen.triggers"]}
        ],
        "extra-links": ["airflow_provider_imagen.links.GeneratedImageLink"],
        "connection-types": [
            {
                "connection-type": "cloudflare_workers_ai",
                "hook-class-name": HOOK_CLASS,
                "hook-name": "Cloudflare Workers AI",
                "ui-field-behaviour": UI_FIELD_BEHAVIOUR,
                "conn-fields": CONN_FIELDS,
            }
        ],
    }
