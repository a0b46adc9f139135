"""
The Images view in a real Airflow: the plugin's routes on the real api-server, and its tabs in the web UI
(Debian's Chromium, driven by Playwright), inside the UI's iframe with the user's normal login.

The browser test saves its screenshots in ``test-artifacts/``; with ``UPDATE_DOCS_SCREENSHOTS=1`` on Airflow 3.2
or later (the UI the README shows) it also refreshes the README's ``docs/images/gallery.png``.
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING
from urllib.parse import quote

import httpx
import pytest
from packaging.version import Version

from tests.conftest import REPO
from tests.e2e.conftest import AIRFLOW_VERSION, logged_in_page, screenshots_dir
from tests.e2e.test_airflow_services import xcom

if TYPE_CHECKING:
    from collections.abc import Iterator

    from playwright.sync_api import FrameLocator, Page

    from tests.e2e.services import AirflowServices

pytestmark = [pytest.mark.e2e, pytest.mark.services]

SCREENSHOT = REPO / "docs" / "images" / "gallery.png"


def gallery_url(services: AirflowServices, dag_id: str, run_id: str, rest: str = "gallery") -> str:
    return f"{services.base_url}/imagen/dags/{dag_id}/runs/{quote(run_id, safe='')}/{rest}"


def test_the_real_api_server_mounts_the_gallery_behind_airflows_login(
    airflow_services: AirflowServices, example_runs: dict[str, str]
):
    from airflow.sdk import ObjectStoragePath

    run_id = example_runs["imagen_persist_asset"]
    for rest in ("gallery", "thumbnails/generate_and_store/-1/0", "images/generate_and_store/-1/0"):
        url = gallery_url(airflow_services, "imagen_persist_asset", run_id, rest)
        assert httpx.get(url, timeout=30).status_code == 401, rest
        answer = httpx.get(url, headers={"Authorization": f"Bearer {airflow_services.token()}"}, timeout=30)
        assert answer.status_code == 200, rest
    assert answer.headers["content-type"] == "image/png"
    with airflow_services.client() as api:
        stored = xcom(api, "imagen_persist_asset", run_id, "generate_and_store", "stored_uri", -1)
    assert answer.content == ObjectStoragePath(str(stored)).read_bytes()


@pytest.fixture(scope="module")
def page(airflow_services: AirflowServices) -> Iterator[Page]:
    """A browser page logged in through Airflow's own login form."""
    with logged_in_page(airflow_services, width=1360, height=900) as logged_in:
        yield logged_in


def open_images_tab(page: Page, url: str) -> FrameLocator:
    """Open a run's or task instance's page and its Images tab; the gallery is the tab's iframe."""
    from playwright.sync_api import expect

    page.goto(url)
    page.get_by_role("link", name="Images").or_(page.get_by_role("tab", name="Images")).first.click()
    page.wait_for_url("**/plugin/imagen-*")
    frame = page.frame_locator("iframe[title='Images']")
    expect(frame.locator("h1")).to_contain_text("Images")
    return frame


def loaded_widths(frame: FrameLocator) -> list[int]:
    """Each card's image as the browser decoded it (0 when it failed to load)."""
    images = frame.locator("figure img")
    for index in range(images.count()):
        images.nth(index).scroll_into_view_if_needed()
        images.nth(index).evaluate("img => img.decode().catch(() => null)")
    return [int(images.nth(i).evaluate("img => img.naturalWidth")) for i in range(images.count())]


@pytest.mark.browser
def test_a_runs_images_tab_shows_every_image_of_the_run(
    page: Page, airflow_services: AirflowServices, example_runs: dict[str, str]
):
    from playwright.sync_api import expect

    dag_id, run_id = "imagen_deferrable_mapped", example_runs["imagen_deferrable_mapped"]
    frame = open_images_tab(page, f"{airflow_services.base_url}/dags/{dag_id}/runs/{quote(run_id, safe='')}")

    expect(frame.locator("figure")).to_have_count(3)
    with airflow_services.client() as api:
        for map_index in range(3):
            card = frame.locator(f'figure[data-map-index="{map_index}"]')
            url = xcom(api, dag_id, run_id, "generate_image", "return_value", map_index)
            expect(card.locator("img")).to_have_attribute("src", str(url))
            expect(card).to_contain_text(f"task generate_image [{map_index}]")
            expect(card).to_contain_text("16:9 · 1408×768")  # noqa: RUF001 - the page's own multiplication sign
            expect(card).to_contain_text("may have expired")
    assert all(width == 1408 for width in loaded_widths(frame))
    page.wait_for_timeout(300)
    page.screenshot(path=str(screenshots_dir() / "08-gallery-run.png"))
    # Refreshing the README's copy is asked for, so that a test run leaves the work tree as it found it.
    if os.environ.get("UPDATE_DOCS_SCREENSHOTS") and Version(AIRFLOW_VERSION) >= Version("3.2"):
        shutil.copyfile(screenshots_dir() / "08-gallery-run.png", SCREENSHOT)


@pytest.mark.browser
def test_a_task_instances_images_tab_shows_the_stored_images_thumbnail(
    page: Page, airflow_services: AirflowServices, example_runs: dict[str, str]
):
    from playwright.sync_api import expect

    dag_id, run_id = "imagen_persist_asset", example_runs["imagen_persist_asset"]
    task = f"{airflow_services.base_url}/dags/{dag_id}/runs/{quote(run_id, safe='')}/tasks/generate_and_store"
    frame = open_images_tab(page, task)

    card = frame.locator("figure")
    expect(card).to_have_count(1)
    expect(card.locator("img")).to_have_attribute("src", "thumbnails/generate_and_store/-1/0")
    expect(card).to_contain_text("stored at")
    assert loaded_widths(frame) == [320]  # Pillow's thumbnail of the 1024 px image, served by the plugin
    page.screenshot(path=str(screenshots_dir() / "09-gallery-task-instance.png"))

    # The full image opens inside the tab, from storage, with the same login.
    card.get_by_role("link", name="Full image").click()
    expect(frame.locator("img")).to_have_count(1)
    assert int(frame.locator("img").evaluate("img => img.naturalWidth")) == 1024
