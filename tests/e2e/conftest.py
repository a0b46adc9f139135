"""One real Airflow deployment per session, shared by the REST API tests and the browser tests."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
from typing import TYPE_CHECKING

import pytest

from airflow_provider_imagen.emulator.server import EmulatorServer
from tests.conftest import REPO
from tests.e2e.services import AirflowServices

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from playwright.sync_api import Page

AIRFLOW_VERSION = importlib.metadata.version("apache-airflow-core")
ARTIFACTS = REPO / "test-artifacts" / f"airflow-{AIRFLOW_VERSION}"

# The example DAGs the deployment runs, and the images each run must leave behind.
EXAMPLE_RUNS = {
    "imagen_quickstart": 1,
    "imagen_deferrable_mapped": 3,  # deferred: the triggerer makes these calls
    "imagen_persist_asset": 1,
}


@contextlib.contextmanager
def running(services: AirflowServices, request: pytest.FixtureRequest, logs: Path) -> Iterator[AirflowServices]:
    """Start ``services`` and stop them whatever happens, keeping their logs in ``logs`` if start or a test failed."""
    failed_before = request.session.testsfailed
    started = False
    try:
        services.start()
        started = True
        yield services
    finally:
        services.stop()
        if not started or request.session.testsfailed > failed_before:
            print(f"\nAirflow service and task logs kept in {services.keep_logs(logs)}")


@pytest.fixture(scope="session")
def services_emulator() -> Iterator[EmulatorServer]:
    """An emulator of its own, so other tests' fault injection and resets never reach the deployment."""
    with EmulatorServer() as server:
        yield server


@pytest.fixture(scope="session")
def airflow_services(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, services_emulator: EmulatorServer
) -> Iterator[AirflowServices]:
    """api-server, scheduler, dag-processor and triggerer on 127.0.0.1; logs kept when a test failed."""
    home = tmp_path_factory.mktemp("airflow-services")
    services = AirflowServices(
        home=home,
        dags_folder=REPO / "dags",
        connection_json=services_emulator.connection_json(),
        output_dir=home / "images",
    )
    with running(services, request, ARTIFACTS / "airflow-logs"):
        yield services


@pytest.fixture(scope="session")
def example_runs(airflow_services: AirflowServices) -> dict[str, str]:
    """Trigger the example DAGs through the REST API at once and wait for all of them: dag_id -> run_id."""
    airflow_services.wait_for_dags([*EXAMPLE_RUNS, "imagen_persist_asset_consumer"])
    # The consumer runs on the producer's Asset event, so it is unpaused but not triggered.
    with airflow_services.client() as api:
        api.patch("/dags/imagen_persist_asset_consumer", json={"is_paused": False}).raise_for_status()
    runs = {dag_id: airflow_services.trigger(dag_id) for dag_id in EXAMPLE_RUNS}
    for dag_id, run_id in runs.items():
        airflow_services.wait_for_run(dag_id, run_id, timeout=120)
    return runs


def screenshots_dir() -> Path:
    path = ARTIFACTS / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")  # Debian's, unless told otherwise
# Flags for this machine: no GPU, no sandbox as root, and no calls home (the network is closed).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-quic",
    "--disable-sync",
]


@contextlib.contextmanager
def logged_in_page(
    services: AirflowServices, width: int = 1280, height: int = 800, before_sign_in: str | None = None
) -> Iterator[Page]:
    """
    A Chromium page logged in through Airflow's own login form; skips (fails under CI) without Chromium.

    :param before_sign_in: a screenshot name to save once the form is filled, before signing in.
    """
    if not shutil.which(CHROMIUM):
        message = f"{CHROMIUM} is not installed (scripts/install-browser.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.set_default_timeout(20_000)
        expect.set_options(timeout=20_000)
        page.goto(services.base_url)
        page.get_by_label("Username").fill("admin")
        page.get_by_label("Password").fill(services.password)
        if before_sign_in:
            page.screenshot(path=str(screenshots_dir() / f"{before_sign_in}.png"))
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{services.base_url}/")
        try:
            yield page
        finally:
            browser.close()
