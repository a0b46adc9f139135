"""
The connection form: the fields the Airflow UI shows for a Cloudflare Workers AI connection.

Airflow 3.2+ builds the form from the provider info (:data:`CONN_FIELDS`, :data:`UI_FIELD_BEHAVIOUR`); Airflow
3.1 asks the hook's classmethods, which :func:`connection_form_widgets` and :func:`ui_field_behaviour` answer
from the same data. Only constants at import time: provider discovery imports this module.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_imagen.constants import MAX_MAX_RETRIES, MAX_REQUESTS_PER_MINUTE

#: Relabelled, hidden and placeholder fields, with the dashed keys the Airflow 3.2+ UI reads.
UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["schema", "port", "login"],
    "relabeling": {"password": "API Token", "host": "API Base URL"},
    "placeholders": {
        "password": "Cloudflare API token with the Workers AI and AI Gateway permissions",
        "host": "https://api.cloudflare.com/client/v4 (leave empty), or http://127.0.0.1:8787/client/v4",
        "extra": '{"account_id": "...", "gateway_id": "my-gateway"}',
        "account_id": "0123456789abcdef0123456789abcdef",
        "gateway_id": "default",
        "proxy": "http://proxy.example.com:3128 (empty: HTTPS_PROXY / NO_PROXY of the environment)",
        "ca_bundle": "/etc/ssl/certs/company-ca.pem",
        "prices": '{"google/imagen-4": 0.04, "@cf/leonardo/phoenix-1.0": 0.0058}',
    },
}

#: The extra fields: a JSON schema each (Airflow 3.2+), from which :func:`connection_form_widgets` builds the
#: same fields for Airflow 3.1.
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
        "schema": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_MAX_RETRIES},
    },
    "requests_per_minute": {
        "label": "Requests per minute",
        "description": "The account's rate limit, if known: never exceeded. If empty, the pace is learned from "
        "Cloudflare's 429 answers.",
        "schema": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": MAX_REQUESTS_PER_MINUTE},
    },
    "proxy": {
        "label": "Proxy",
        "description": "Optional http(s) proxy for the API calls and the image downloads, such as "
        "http://proxy.example.com:3128; NO_PROXY still applies. If empty, HTTPS_PROXY / HTTP_PROXY of the "
        "environment. Credentials in it are visible to whoever can edit this connection.",
        "schema": {"type": ["string", "null"]},
    },
    "ca_bundle": {
        "label": "CA bundle",
        "description": "Optional absolute path, on the workers and triggerer, of a PEM file of CA certificates "
        "to trust instead of the default ones (a TLS-intercepting proxy, a private CA).",
        "schema": {"type": ["string", "null"]},
    },
    "prices": {
        "label": "Prices (USD per image)",
        "description": "Optional JSON object of model id to what one image costs you, for the estimated_cost_usd "
        "figures and max_cost_usd; models left out use the published defaults (docs: cost.md), or have no estimate.",
        "schema": {"type": ["string", "null"]},
    },
}


def connection_form_widgets() -> dict[str, Any]:
    """Build the extra fields as Airflow 3.1's form widgets, from :data:`CONN_FIELDS`."""
    from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
    from flask_babel import lazy_gettext
    from wtforms import IntegerField, StringField
    from wtforms.validators import Optional

    widgets = {}
    for name, spec in CONN_FIELDS.items():
        # Airflow 3.1's form service knows string, integer, boolean and password fields only: a number
        # (the timeout) is a text field there, which ConnectionSettings parses and checks.
        kind = IntegerField if "integer" in spec["schema"]["type"] else StringField
        widgets[name] = kind(
            lazy_gettext(spec["label"]),
            validators=[Optional()],
            widget=BS3TextFieldWidget(),
            description=spec["description"],
        )
    return widgets


def ui_field_behaviour() -> dict[str, Any]:
    """:data:`UI_FIELD_BEHAVIOUR` with the underscored keys Airflow 3.1's hook classmethod returns."""
    return {key.replace("-", "_"): value for key, value in UI_FIELD_BEHAVIOUR.items()}
