"""
Human review in a real Airflow: generated images wait in Airflow's own review (HITL) until a person answers.

The answers go through the same REST endpoint the UI's "Required actions" buttons call
(``PATCH /dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/hitlDetails``, Airflow 3.1+).
The browser test saves a screenshot of the review page in ``test-artifacts/``; with ``UPDATE_DOCS_SCREENSHOTS=1``
on Airflow 3.2 or later it also refreshes ``docs/images/human-review.png``.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlparse

import httpx
import pytest
from packaging.version import Version

from tests.conftest import REPO
from tests.e2e.conftest import AIRFLOW_VERSION, logged_in_page, screenshots_dir
from tests.e2e.test_airflow_services import task_instances, xcom
from tests.e2e.test_example_dags import SIZES, png_size

if TYPE_CHECKING:
    from airflow_provider_imagen.emulator.server import EmulatorServer
    from tests.e2e.services import AirflowServices

pytestmark = [pytest.mark.e2e, pytest.mark.services]

DAG_ID = "imagen_human_review"
# Airflow 3.3 parks a HITL task in its own state; 3.1 defers it to the triggerer.
WAITING = {"awaiting_input", "deferred"}


def wait_for_review(api: httpx.Client, services: AirflowServices, run_id: str, timeout: float = 120) -> dict:
    """Wait until the ``review`` task waits for a person; return its HITL detail (subject, body, options)."""
    url = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/review/-1/hitlDetails"
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/review").json().get("state")
        if state in WAITING:
            detail = api.get(url)
            if detail.status_code == 200:
                if state == "awaiting_input":  # answered sooner, Airflow 3.3.2 may fail it (see the method)
                    services.wait_for_executor_event(DAG_ID, "review", run_id, "awaiting_input")
                return dict(detail.json())
        assert state not in {"failed", "upstream_failed", "skipped"}, f"review is {state}"
        time.sleep(1)
    raise TimeoutError(f"review not waiting for input after {timeout:.0f} s (state {state!r})")


def answer(api: httpx.Client, run_id: str, option: str) -> None:
    response = api.patch(
        f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/review/-1/hitlDetails",
        json={"chosen_options": [option], "params_input": {}},
    )
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def review_dir(airflow_services: AirflowServices) -> Path:
    """The review's own folder (the Variable the DAG reads), so other tests' image folder stays as they expect."""
    folder = airflow_services.home / "review"
    airflow_services.wait_for_dags([DAG_ID])
    with airflow_services.client() as api:
        api.post("/variables", json={"key": "imagen_review_dir", "value": str(folder)}).raise_for_status()
    return folder


@pytest.fixture(scope="module")
def review_runs(airflow_services: AirflowServices, review_dir: Path) -> dict[str, tuple[str, dict]]:
    """Two runs at once, each waiting for its review: answer -> (run_id, HITL detail as the UI shows it)."""
    run_ids = {option: airflow_services.trigger(DAG_ID) for option in ("Approve", "Reject")}
    with airflow_services.client() as api:
        return {option: (run_id, wait_for_review(api, airflow_services, run_id)) for option, run_id in run_ids.items()}


def test_the_review_shows_every_generated_image_inline(
    review_runs: dict[str, tuple[str, dict]], airflow_services: AirflowServices, services_emulator: EmulatorServer
):
    from dags.imagen_human_review import SUBJECTS

    run_id, detail = review_runs["Approve"]
    assert detail["options"] == ["Approve", "Reject"]
    assert detail["subject"] == "Publish these generated images?"
    assert services_emulator.config.token not in str(detail)
    images = re.findall(r"!\[([^\]]*)\]\(([^)\s]+)\)", detail["body"])
    assert [alt for alt, _ in images] == [f"{subject}, watercolour" for subject in SUBJECTS]
    with airflow_services.client() as api:
        urls = [xcom(api, DAG_ID, run_id, "draft", "image", i)["url"] for i in range(len(SUBJECTS))]  # type: ignore[index]
    assert [url for _, url in images] == urls
    for _, url in images:  # what the reviewer's browser loads
        assert url.startswith(f"{services_emulator.url}/images/")
        image = httpx.get(url, timeout=30)
        assert image.status_code == 200 and png_size(image.content) == SIZES["4:3"]


@pytest.mark.browser
def test_the_reviewer_sees_the_images_in_airflows_own_page(
    review_runs: dict[str, tuple[str, dict]], airflow_services: AirflowServices, services_emulator: EmulatorServer
):
    from playwright.sync_api import expect

    run_id, _ = review_runs["Approve"]
    with logged_in_page(airflow_services, height=1100) as page:
        page.goto(f"{airflow_services.base_url}/dags/{DAG_ID}/runs/{quote(run_id)}/tasks/review/required_actions")
        images = page.locator(f"img[src^='{services_emulator.url}/images/']")
        expect(images).to_have_count(2)
        for index in range(2):  # loaded and drawn by the browser, not a broken-image icon
            expect(images.nth(index)).to_be_visible()
            page.wait_for_function(
                "img => img.complete && img.naturalWidth > 0", arg=images.nth(index).element_handle()
            )
        expect(page.get_by_role("button", name="Approve")).to_be_visible()
        page.screenshot(path=str(screenshots_dir() / "human-review.png"), full_page=True)
    if os.environ.get("UPDATE_DOCS_SCREENSHOTS") and Version(AIRFLOW_VERSION) >= Version("3.2"):
        shutil.copyfile(screenshots_dir() / "human-review.png", REPO / "docs" / "images" / "human-review.png")


def test_approve_publishes_the_stored_images(
    review_runs: dict[str, tuple[str, dict]], airflow_services: AirflowServices, review_dir: Path
):
    run_id, _ = review_runs["Approve"]
    with airflow_services.client() as api:
        answer(api, run_id, "Approve")
        airflow_services.wait_for_run(DAG_ID, run_id, timeout=120)
        states = {ti["task_id"]: ti["state"] for ti in task_instances(api, DAG_ID, run_id)}
        assert states == {"draft": "success", "prepare_review": "success", "review": "success", "publish": "success"}
        assert xcom(api, DAG_ID, run_id, "review", "return_value", -1)["chosen_options"] == ["Approve"]
        stored = [
            Path(urlparse(uri).path)
            for uri in xcom(api, DAG_ID, run_id, "prepare_review", "return_value", -1)["stored"]
        ]
        published = [Path(urlparse(uri).path) for uri in xcom(api, DAG_ID, run_id, "publish", "return_value", -1)]

    assert [p.parent for p in stored] == [review_dir / "drafts"] * 2
    assert [p.parent for p in published] == [review_dir / "published"] * 2
    assert [p.name for p in published] == [p.name for p in stored]
    for draft, copy in zip(stored, published, strict=True):
        assert copy.read_bytes() == draft.read_bytes() and copy.read_bytes()[:4] == b"\x89PNG"


def test_reject_publishes_nothing_and_keeps_the_drafts(
    review_runs: dict[str, tuple[str, dict]], airflow_services: AirflowServices, review_dir: Path
):
    run_id, _ = review_runs["Reject"]
    with airflow_services.client() as api:
        answer(api, run_id, "Reject")
        run = airflow_services.wait_for_run(DAG_ID, run_id, timeout=120)  # a rejection is an answer, not a failure
        assert run["state"] == "success"
        states = {ti["task_id"]: ti["state"] for ti in task_instances(api, DAG_ID, run_id)}
        assert states["review"] == "success" and states["publish"] == "skipped"
        # The answer and who gave it stay on the review (a rejecting task skips downstream, pushing no XCom).
        detail = api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/review/-1/hitlDetails").json()
        assert detail["chosen_options"] == ["Reject"] and detail["response_received"] is True
        assert "admin" in str(detail["responded_by_user"])
        stored = [
            Path(urlparse(uri).path)
            for uri in xcom(api, DAG_ID, run_id, "prepare_review", "return_value", -1)["stored"]
        ]

    assert all(p.is_file() for p in stored)  # the drafts stay for a look
    published = review_dir / "published"
    assert not any((published / p.name).exists() for p in stored)
