"""Provider metadata, discovered through the ``apache_airflow_provider`` entry point; no runtime module imports it."""

from __future__ import annotations

from typing import Any

from airflow_provider_imagen._cloudflare.connection_form import CONN_FIELDS, UI_FIELD_BEHAVIOUR

HOOK_CLASS = "airflow_provider_imagen.hooks.cloudflare.CloudflareWorkersAIHook"


def get_provider_info() -> dict[str, Any]:
    """Return the provider's metadata: its package, hook, connection type and form, and extra links."""
    return {
        "package-name": "airflow-provider-imagen",
        "name": "Imagen on Cloudflare Workers AI",
        "description": "Generate images with Google's Imagen 4 served by Cloudflare Workers AI.",
        "integrations": [
            {
                "integration-name": "Cloudflare Workers AI",
                "external-doc-url": "https://developers.cloudflare.com/workers-ai/",
                "tags": ["ai"],
            }
        ],
        "hooks": [
            {
                "integration-name": "Cloudflare Workers AI",
                "python-modules": ["airflow_provider_imagen.hooks.cloudflare"],
            }
        ],
        "operators": [
            {"integration-name": "Cloudflare Workers AI", "python-modules": ["airflow_provider_imagen.operators"]}
        ],
        "triggers": [
            {"integration-name": "Cloudflare Workers AI", "python-modules": ["airflow_provider_imagen.triggers.imagen"]}
        ],
        "task-decorators": [{"name": "imagen", "class-name": "airflow_provider_imagen.decorators.imagen.imagen_task"}],
        "extra-links": ["airflow_provider_imagen.operators.links.GeneratedImageLink"],
        "config": {
            "imagen": {
                "description": "Imagen on Cloudflare Workers AI.",
                "options": {
                    "durable_cache_path": {
                        "description": (
                            "Where durable=True keeps the images a task instance paid for until it succeeds, so a "
                            "retry reuses them (an ObjectStorage URI or local path). Empty: Airflow 3.3+ keeps "
                            "them in the task state store, and before 3.3 a retry generates them again. Set, it is "
                            "used on 3.3 too: a folder takes many records at once, which a dataset of thousands of "
                            "rows is faster with."
                        ),
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "s3://aws_default@my-bucket/imagen-durable/",
                        "default": None,
                    },
                    "gallery_roots": {
                        "description": (
                            "Comma-separated storage prefixes (local folders, or scheme://conn_id@bucket/prefix/) "
                            "the Images view may read stored images from. Empty: it reads none."
                        ),
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "s3://aws_default@team-a-images/, /data/images/",
                        "default": "",
                    },
                    "deferral_min_seconds": {
                        "description": (
                            "Seconds after a deferral before its trigger may fire (0 to 60). A trigger that fires "
                            "sooner can lose a race in Airflow's scheduler (apache/airflow#66374) that fails the task."
                        ),
                        "version_added": "0.1.0",
                        "type": "float",
                        "example": "10",
                        "default": "10",
                    },
                    "allowed_image_hosts": {
                        "description": (
                            "Comma-separated host names a generated image may be downloaded from even when they "
                            "resolve to a loopback, link-local or private address (a private image proxy). Empty: "
                            "only public addresses, and the API's own host when the API itself is private."
                        ),
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "images.internal.example.com",
                        "default": "",
                    },
                },
            }
        },
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
