"""Registration: Airflow finds the provider, its connection type and the connection form."""

from __future__ import annotations

import json
from importlib.metadata import entry_points

from airflow_provider_imagen.get_provider_info import get_provider_info

ALLOWED_STANDARD_FIELDS = {"description", "host", "port", "login", "password", "schema", "extra"}


def test_provider_info_is_valid_for_airflows_own_schema():
    import importlib.resources

    import jsonschema

    schema = json.loads(importlib.resources.files("airflow").joinpath("provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_form_keys_are_the_dashed_ones_airflow_reads():
    conn = get_provider_info()["connection-types"][0]
    assert set(conn) == {"connection-type", "hook-class-name", "hook-name", "ui-field-behaviour", "conn-fields"}
    assert set(conn["ui-field-behaviour"]) == {"hidden-fields", "relabeling", "placeholders"}
    assert set(conn["ui-field-behaviour"]["hidden-fields"]) <= ALLOWED_STANDARD_FIELDS
    assert conn["ui-field-behaviour"]["relabeling"]["password"] == "API Token"
    assert set(conn["conn-fields"]) == {
        "account_id",
        "gateway_id",
        "timeout",
        "max_retries",
        "requests_per_minute",
        "proxy",
        "ca_bundle",
        "prices",
    }
    for field in conn["conn-fields"].values():
        assert set(field) <= {"label", "description", "schema"}


def test_entry_point_and_package_name_match_the_distribution():
    (ep,) = [e for e in entry_points(group="apache_airflow_provider") if e.value.startswith("airflow_provider_imagen")]
    assert ep.load() is get_provider_info
    assert get_provider_info()["package-name"] == ep.dist.name == "airflow-provider-imagen"


def test_providers_manager_registers_the_provider_hook_and_form():
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert "airflow-provider-imagen" in manager.providers
    hook = manager.hooks["cloudflare_workers_ai"]
    assert hook is not None
    assert hook.hook_class_name == "airflow_provider_imagen.hooks.cloudflare.CloudflareWorkersAIHook"
    assert hook.connection_id_attribute_name == "cloudflare_conn_id"
    assert hook.hook_name == "Cloudflare Workers AI"


def test_airflow_31_form_classmethods_describe_the_same_form():
    from airflow_provider_imagen.hooks import CloudflareWorkersAIHook

    behaviour = CloudflareWorkersAIHook.get_ui_field_behaviour()
    conn = get_provider_info()["connection-types"][0]
    assert behaviour["hidden_fields"] == conn["ui-field-behaviour"]["hidden-fields"]
    assert behaviour["relabeling"] == conn["ui-field-behaviour"]["relabeling"]


def test_airflow_ui_builds_the_form_from_what_we_declare():
    """
    What the API server's connection-form endpoint serves, on whichever Airflow is installed.

    Run in a fresh interpreter: ProvidersManager is a process-wide singleton, and Airflow 3.1 builds the form
    only on its first initialisation (with wtforms mocked).
    """
    import os
    import subprocess
    import sys

    script = """
import json
from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService
hook = {h.connection_type: h for h in HookMetaService.hook_meta_data()}["cloudflare_workers_ai"]
print("RESULT=" + json.dumps(hook.model_dump(mode="json")))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=os.environ.copy(), check=True
    ).stdout
    form = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT="))[7:])
    standard = form["standard_fields"]
    assert form["hook_name"] == "Cloudflare Workers AI"
    assert standard["password"]["title"] == "API Token"
    assert standard["host"]["title"] == "API Base URL"
    assert standard["port"]["hidden"] and standard["login"]["hidden"] and standard["url_schema"]["hidden"]
    extra = form["extra_fields"]
    assert {"account_id", "gateway_id", "timeout", "max_retries", "requests_per_minute"} <= {
        k.split("__")[-1] for k in extra
    }
    assert any(field["schema"].get("title") == "Account ID" for field in extra.values())


def test_airflow_cli_lists_the_provider_and_its_connection_type(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    airflow = str(Path(sys.executable).with_name("airflow"))
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path)}
    providers = subprocess.run([airflow, "providers", "list"], env=env, capture_output=True, text=True, timeout=120)
    hooks = subprocess.run([airflow, "providers", "hooks"], env=env, capture_output=True, text=True, timeout=120)
    assert "airflow-provider-imagen" in providers.stdout
    assert "cloudflare_workers_ai" in hooks.stdout
    assert "airflow_provider_imagen.hooks.cloudflare.CloudflareWorkersAIHook" in hooks.stdout
