"""
The UI gallery's routes, through Airflow's own api-server app and auth: what a logged-in user sees, and
everything the routes refuse (no login, no access to the DAG or its XComs, paths, other schemes).

One DAG runs once against the emulator (``dag.test()``), so the XComs are the operators' real ones; the app
is Airflow's ``create_app()`` with the plugin mounted from its entry point.
"""

from __future__ import annotations

import io
import json
import secrets
import time
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest
from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

from tests.conftest import register_dag

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from fastapi.testclient import TestClient

    from airflow_provider_imagen.emulator.server import EmulatorServer

pytestmark = pytest.mark.e2e

DAG_ID = "imagen_gallery_test"
MANY_DAG_ID = "imagen_gallery_many"
FAILURES_DAG_ID = "imagen_gallery_failures"
FAILING_BATCH = ["A prompt that meets the daily limit", "A prompt drawn after it"]
MANY = 1000
SECRET = "sql_alchemy_conn = postgresql://airflow:hunter2@db/airflow"

PROMPTS = {
    "single": "A red fox curled up in fresh snow at dawn",
    "mapped": ["A lighthouse on a cliff in a storm", "A bowl of ramen, top view", "A paper crane on a desk"],
    "batch": ["A vintage bicycle against a brick wall", "A jar of honey in morning light"],
}


class GalleryTestAuthManager(SimpleAuthManager):
    """
    Simple auth manager, plus two users it limits: ``stranger`` may not read the test DAG at all, and
    ``no_xcom`` may read the DAG but not its XComs (what a role without "XComs: read" gets in FAB).
    """

    def is_authorized_dag(self, *, method, user, access_entity=None, details=None) -> bool:
        from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity

        dag_id = details.id if details else None
        if user.get_name() == "stranger" and dag_id == DAG_ID:
            return False
        if user.get_name() == "no_xcom" and access_entity == DagAccessEntity.XCOM:
            return False
        return super().is_authorized_dag(method=method, user=user, access_entity=access_entity, details=details)


# -- the run -------------------------------------------------------------------------------------------


def png(width: int = 64, height: int = 48) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


def gallery_roots(tmp: Path) -> str:
    """The folders the test DAGs write to, as an admin would list them (``single`` without its slash on purpose)."""
    return f"{tmp}/single, {tmp}/batch/, {tmp}/many/, {tmp}/f/, s3://aws_default@bucket/prefix/"


#: The forged XComs after the first ten, by name: what only ``[imagen] gallery_roots`` tells apart.
OUTSIDE = {
    "another folder": 10,
    "a sibling named like a root": 11,
    "a .. escape": 12,
    "a symlink out of a root": 13,
    "another connection": 14,
    "another bucket": 15,
}
INSIDE = {"not an image": 16, "missing": 17, "too large": 18, "unreadable": 19}


def _forged_images(tmp: Path, emulator_url: str) -> list[dict[str, Any]]:
    """What a task (or a user allowed to edit XComs) could push to make the gallery read elsewhere."""
    import os

    elsewhere, sibling, inside = tmp / "elsewhere", tmp / "single-other", tmp / "single"
    for folder in (elsewhere, sibling, inside):
        folder.mkdir(exist_ok=True)
    (elsewhere / "secret.png").write_bytes(png())  # a real image, of another team: the confused deputy's prize
    (sibling / "x.png").write_bytes(png())
    if not (inside / "link.png").is_symlink():
        (inside / "link.png").symlink_to(elsewhere / "secret.png")
    (inside / "notes.png").write_text(SECRET)
    with open(inside / "huge.png", "wb") as huge:  # 30 MB, sparse: a PNG signature and nothing
        huge.write(b"\x89PNG\r\n\x1a\n")
        huge.truncate(30 * 1024 * 1024)
    (inside / "locked.png").write_bytes(png())
    os.chmod(inside / "locked.png", 0)
    secret = tmp / "airflow.cfg"
    secret.write_text(SECRET)
    html = tmp / "page.png"
    html.write_text("<html><script>alert(document.cookie)</script></html>")
    targets = [
        str(secret),  # a local file that is not an image
        f"file://{secret}",
        str(html),  # HTML named .png: never served as a page on Airflow's origin
        f"{emulator_url}/images/not-stored.png",  # a web URL: the api-server must not fetch it
        "https://169.254.169.254/latest/meta-data/",
        "ftp://127.0.0.1/image.png",
        "memory://image.png",
        f"zip://x.png::file://{secret}",  # an fsspec chain
        "images/relative.png",
        f"{tmp}/../{tmp.name}/airflow.cfg",
        str(elsewhere / "secret.png"),
        str(sibling / "x.png"),
        f"{tmp}/single/../elsewhere/secret.png",
        str(inside / "link.png"),
        "s3://other_conn@bucket/prefix/x.png",
        "s3://aws_default@bucket2/prefix/x.png",
        str(inside / "notes.png"),
        str(inside / "missing.png"),
        str(inside / "huge.png"),
        str(inside / "locked.png"),
    ]
    return [{"prompt": f"forged {i}", "model": "google/imagen-4", "stored_uri": t} for i, t in enumerate(targets)]


def _build_dags(tmp: Path, emulator_url: str):
    from airflow.sdk import DAG, get_current_context, task

    from airflow_provider_imagen.operators import ImagenGenerateImageOperator, ImagenGenerateImagesOperator

    with DAG(DAG_ID, schedule=None, start_date=datetime(2025, 1, 1), catchup=False) as dag:
        ImagenGenerateImageOperator(
            task_id="single", prompt=PROMPTS["single"], aspect_ratio="16:9", output_path=f"{tmp}/single/"
        )
        ImagenGenerateImageOperator.partial(task_id="mapped", aspect_ratio="1:1").expand(prompt=PROMPTS["mapped"])
        ImagenGenerateImagesOperator(
            task_id="batch", prompts=PROMPTS["batch"], aspect_ratio="4:3", output_path=f"{tmp}/batch/"
        )

        @task
        def forged() -> None:
            get_current_context()["ti"].xcom_push(key="images", value=_forged_images(tmp, emulator_url))

        forged()

    with DAG(MANY_DAG_ID, schedule=None, start_date=datetime(2025, 1, 1), catchup=False) as many:
        ImagenGenerateImageOperator.partial(task_id="mapped", output_path=f"{tmp}/many/").expand(
            prompt=["A tiny robot watering a plant"]
        )

    with DAG(FAILURES_DAG_ID, schedule=None, start_date=datetime(2025, 1, 1), catchup=False) as failures:
        ImagenGenerateImagesOperator(
            task_id="batch", prompts=FAILING_BATCH, max_concurrency=1, fail_on_error=False, output_path=f"{tmp}/f/"
        )
    return dag, many, failures


def _clone_map_index_zero(dag_id: str, run_id: str, task_id: str, count: int) -> None:
    """Make a run of ``count`` mapped task instances from its one real one: rows as the operator left them."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import insert, select

    ti_table, xcom_table = TaskInstance.__table__, XComModel.__table__
    with create_session() as session:
        where = {"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "map_index": 0}
        ti = dict(session.execute(select(ti_table).filter_by(**where)).mappings().one())
        xcoms = [dict(row) for row in session.execute(select(xcom_table).filter_by(**where)).mappings()]
        as_stored = (lambda u: u) if isinstance(ti["id"], uuid.UUID) else str  # a UUID column on 3.3, text on 3.1
        session.execute(
            insert(ti_table), [{**ti, "id": as_stored(uuid.uuid4()), "map_index": i} for i in range(1, count)]
        )
        rows = []
        for i in range(1, count):
            for row in xcoms:
                value = XComModel.deserialize_value(type("Row", (), {"value": row["value"]})())
                if row["key"] == "image":
                    value = {**value, "prompt": f"Robot number {i}"}
                rows.append({**row, "map_index": i, "value": XComModel.serialize_value(value)})
        session.execute(insert(xcom_table), rows)


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory) -> Path:
    """The folder the test DAGs write their images (and forged files) under."""
    return tmp_path_factory.mktemp("gallery-images")


@pytest.fixture(scope="module")
def runs(airflow_db, imagen_emulator_server: EmulatorServer, images_dir: Path) -> dict[str, str]:
    """Run the DAGs against the emulator once: dag_id -> run_id."""
    from airflow_provider_imagen.emulator.server import EmulatorClient

    tmp = images_dir
    EmulatorClient(imagen_emulator_server.url).reset()  # faults another test left queued are not ours
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_CONN_CLOUDFLARE_WORKERS_AI_DEFAULT", imagen_emulator_server.connection_json())
        result = {}
        for dag in _build_dags(tmp, imagen_emulator_server.url):
            register_dag(dag)
            if dag.dag_id == FAILURES_DAG_ID:  # the batch's first prompt meets a daily limit (never retried)
                EmulatorClient(imagen_emulator_server.url).inject("daily_limit")
            dag_run = dag.test()
            assert dag_run.state == "success", dag.dag_id
            result[dag.dag_id] = dag_run.run_id
    _clone_map_index_zero(MANY_DAG_ID, result[MANY_DAG_ID], "mapped", MANY)
    return result


# -- the app and its users -----------------------------------------------------------------------------


LOOPBACK_S3 = json.dumps(
    {
        "conn_type": "aws",
        "login": "key",
        "password": "secret",
        "extra": {"endpoint_url": "http://127.0.0.1:9", "region_name": "us-east-1"},
    }
)
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", b"127.0.0.1", b"localhost"}


@pytest.fixture(autouse=True)
def name_look_ups_off_loopback(monkeypatch) -> Iterator[list[Any]]:
    """Refuse, and count, every name look-up of a host other than this machine (a storage read gone astray)."""
    import socket

    attempts: list[Any] = []
    real = socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None and host not in LOOPBACK_HOSTS:
            attempts.append(host)
            raise socket.gaierror(socket.EAI_NONAME, f"the gallery tests look up no {host!r}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    yield attempts
    assert attempts == [], "a test tried to reach a host other than 127.0.0.1"


@pytest.fixture(scope="module")
def api(runs, images_dir: Path) -> Iterator[TestClient]:
    """
    Airflow's api-server app (plugins mounted from their entry points), with the limiting auth manager, and
    ``[imagen] gallery_roots`` set to the folders the DAGs write to.
    """
    from airflow.api_fastapi.app import create_app, purge_cached_app
    from fastapi.testclient import TestClient

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW__IMAGEN__GALLERY_ROOTS", gallery_roots(images_dir))
        # The forged s3:// XComs must be refused before any connection; if one ever were not, it reaches a
        # closed port on 127.0.0.1, never AWS.
        for conn_id in ("AWS_DEFAULT", "OTHER_CONN"):
            patch.setenv(f"AIRFLOW_CONN_{conn_id}", LOOPBACK_S3)
        patch.setenv("AIRFLOW__CORE__AUTH_MANAGER", f"{__name__}.GalleryTestAuthManager")
        patch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", secrets.token_hex(32))
        purge_cached_app()
        try:
            yield TestClient(create_app(), base_url="http://127.0.0.1")
        finally:
            purge_cached_app()


def token(username: str, role: str | None = "viewer") -> str:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=username, role=role))


def bearer(username: str = "viewer", role: str | None = "viewer") -> dict[str, str]:
    return {"Authorization": f"Bearer {token(username, role)}"}


def run_path(runs: dict[str, str], dag_id: str = DAG_ID) -> str:
    return f"/imagen/dags/{dag_id}/runs/{quote(runs[dag_id], safe='')}"


def routes(runs: dict[str, str]) -> dict[str, str]:
    """One URL of each route, each naming something that exists."""
    base = run_path(runs)
    return {
        "run gallery": f"{base}/gallery",
        "task-instance gallery": f"{base}/gallery?task_id=mapped&map_index=1",
        "thumbnail": f"{base}/thumbnails/single/-1/0",
        "full image": f"{base}/images/single/-1/0",
    }


@pytest.fixture
def storage_reads(monkeypatch) -> list[str]:
    """Every URI the gallery tries to open in storage."""
    from airflow_provider_imagen.plugins import store

    seen: list[str] = []
    real = store.storage_path

    def spy(uri: str):
        seen.append(uri)
        return real(uri)

    monkeypatch.setattr(store, "storage_path", spy)
    store.THUMBNAILS.clear()
    return seen


def xcom(dag_id: str, run_id: str, task_id: str, key: str, map_index: int = -1) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.execute(
            select(XComModel.value).filter_by(
                dag_id=dag_id, run_id=run_id, task_id=task_id, key=key, map_index=map_index
            )
        ).one()
        return XComModel.deserialize_value(row)


def figures(html: str) -> list[str]:
    return html.split("<figure")[1:]


# -- who may see what ----------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["run gallery", "task-instance gallery", "thumbnail", "full image"])
def test_every_route_needs_a_login(route, api, runs):
    response = api.get(routes(runs)[route])
    assert response.status_code == 401
    assert response.json() == {"detail": "Not authenticated"}


@pytest.mark.parametrize("route", ["run gallery", "task-instance gallery", "thumbnail", "full image"])
def test_every_route_refuses_a_forged_token(route, api, runs):
    forged = token("viewer")[:-4] + "AAAA"
    response = api.get(routes(runs)[route], headers={"Authorization": f"Bearer {forged}"})
    assert response.status_code == 403
    assert "image" not in response.headers.get("content-type", "")


@pytest.mark.parametrize("route", ["run gallery", "task-instance gallery", "thumbnail", "full image"])
@pytest.mark.parametrize(
    ("user", "role"),
    [
        pytest.param("stranger", "viewer", id="no-access-to-this-dag"),
        pytest.param("no_xcom", "viewer", id="dag-but-not-its-xcoms"),
        pytest.param("nobody", None, id="no-role"),
    ],
)
def test_every_route_refuses_a_user_who_may_not_read_the_dags_xcoms(route, user, role, api, runs, storage_reads):
    response = api.get(routes(runs)[route], headers=bearer(user, role))
    assert response.status_code == 403
    assert PROMPTS["single"] not in response.text
    assert storage_reads == []  # refused before anything was read


@pytest.mark.parametrize("route", ["run gallery", "task-instance gallery", "thumbnail", "full image"])
def test_every_route_serves_a_reader_by_bearer_token_and_by_the_ui_login_cookie(route, api, runs):
    from fastapi.testclient import TestClient

    by_header = api.get(routes(runs)[route], headers=bearer())
    # The UI's iframe sends no header: only the cookie the login set, on the same origin.
    with TestClient(api.app, base_url=str(api.base_url), cookies={"_token": token("viewer")}) as browser:
        by_cookie = browser.get(routes(runs)[route])
    assert by_header.status_code == by_cookie.status_code == 200
    assert by_header.content == by_cookie.content


def test_a_stranger_cannot_reach_this_run_through_a_dag_they_may_read(api, runs):
    """The DAG id that is authorised is also the one the run and its XComs are looked up under."""
    other = f"/imagen/dags/imagen_quickstart/runs/{quote(runs[DAG_ID], safe='')}"
    for path in ("gallery", "thumbnails/single/-1/0", "images/single/-1/0"):
        response = api.get(f"{other}/{path}", headers=bearer("stranger"))
        assert response.status_code == 404, path
        assert PROMPTS["single"] not in response.text


# -- what the gallery shows ----------------------------------------------------------------------------


def test_run_gallery_shows_every_generated_image_with_its_details(api, runs):
    response = api.get(routes(runs)["run gallery"], headers=bearer())
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    cards = [card for card in figures(html) if "forged" not in card]
    assert len(cards) == 1 + len(PROMPTS["mapped"]) + len(PROMPTS["batch"])
    assert f"DAG {DAG_ID}" in html and "26 images" in html  # 6 generated + 20 forged entries
    assert 'id="no-gallery-roots"' not in html  # roots are set: no notice

    single = next(card for card in cards if 'data-task-id="single"' in card)
    assert PROMPTS["single"] in single
    assert "google/imagen-4" in single and "16:9" in single and "1408\N{MULTIPLICATION SIGN}768" in single
    assert "1 attempt" in single and " s · task single" in single
    assert 'src="thumbnails/single/-1/0"' in single and 'href="images/single/-1/0"' in single
    stored = xcom(DAG_ID, runs[DAG_ID], "single", "stored_uri")
    assert stored in single

    for index, prompt in enumerate(PROMPTS["mapped"]):
        card = next(c for c in cards if f'data-task-id="mapped" data-map-index="{index}"' in c)
        url = xcom(DAG_ID, runs[DAG_ID], "mapped", "return_value", index)
        assert prompt in card and f"task mapped [{index}]" in card
        assert f'src="{url}"' in card and "may have expired" in card  # URL only: shown from Cloudflare

    for position, prompt in enumerate(PROMPTS["batch"]):
        card = next(c for c in cards if prompt in c)
        assert f'src="thumbnails/batch/-1/{position}"' in card and f"image {position}" in card
        assert "4:3" in card and "1280\N{MULTIPLICATION SIGN}896" in card


def test_gallery_pages_are_scriptless_and_escaped(api, runs):
    response = api.get(routes(runs)["run gallery"], headers=bearer())
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "frame-ancestors 'self'" in csp
    assert "<script" not in response.text.lower()
    # An XCom is data: its text is shown, never interpreted.
    assert "forged 0" in response.text and 'href="javascript:' not in response.text


def test_task_instance_view_shows_only_that_map_index(api, runs):
    base = run_path(runs)
    html = api.get(f"{base}/gallery?task_id=mapped&map_index=1", headers=bearer()).text
    assert len(figures(html)) == 1
    assert PROMPTS["mapped"][1] in html and PROMPTS["mapped"][0] not in html
    assert "Images of mapped [1]" in html
    assert '<a href="gallery">All images of this run</a>' in html


def test_a_stored_uri_the_gallery_will_not_read_says_why_instead_of_a_broken_image(api, runs):
    html = api.get(f"{run_path(runs)}/gallery?task_id=forged", headers=bearer()).text
    cards = figures(html)
    assert "not shown: the gallery does not read &#39;https&#39; URIs" in cards[4]
    assert "not shown: chained or malformed storage URI" in cards[7]
    assert "not shown: a relative path names no stored image" in cards[8]
    assert "<img" not in cards[4] + cards[7] + cards[8]
    # A local file outside [imagen] gallery_roots is not even tried.
    assert "not shown: not under [imagen] gallery_roots" in cards[0]
    # One inside a root is tried, and refused when read because it is no image (tested below).
    assert f'src="thumbnails/forged/-1/{INSIDE["not an image"]}"' in cards[INSIDE["not an image"]]


@pytest.mark.parametrize(("case", "position"), OUTSIDE.items(), ids=list(OUTSIDE))
def test_a_card_whose_uri_is_outside_the_gallery_roots_says_so(case, position, api, runs):
    card = figures(api.get(f"{run_path(runs)}/gallery?task_id=forged", headers=bearer()).text)[position]
    if case == "a symlink out of a root":  # only reading shows where a link leads: it is tried, and refused
        assert f'src="thumbnails/forged/-1/{position}"' in card
    else:
        assert "not shown: not under [imagen] gallery_roots" in card and "<img" not in card


def test_the_confused_deputy_an_operator_shaped_xcom_naming_a_png_elsewhere_is_not_served(
    api, runs, images_dir, storage_reads
):
    """A task pushes an ``image``-shaped XCom naming a real PNG of another folder: the gallery must not serve it."""
    secret = (images_dir / "elsewhere" / "secret.png").read_bytes()
    for position in OUTSIDE.values():
        for kind in ("thumbnails", "images"):
            response = api.get(f"{run_path(runs)}/{kind}/forged/-1/{position}", headers=bearer())
            assert response.status_code == 404, (kind, position)
            assert response.content != secret and "image" not in response.headers["content-type"]


@pytest.fixture
def locked_file_unreadable(monkeypatch):
    """``locked.png`` has mode 0, which does not stop root: make opening it a PermissionError whoever runs."""
    from airflow.sdk import ObjectStoragePath

    real = ObjectStoragePath.open

    def open_(self, *args, **kwargs):
        if str(self).endswith("locked.png"):
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ObjectStoragePath, "open", open_)


@pytest.mark.parametrize("kind", ["thumbnails", "images"])
def test_the_browser_cannot_tell_missing_unreadable_oversized_or_outside_apart(
    kind, api, runs, locked_file_unreadable, caplog
):
    answers = {}
    with caplog.at_level("WARNING", logger="airflow_provider_imagen.plugins.app"):
        for case, position in {**OUTSIDE, **INSIDE}.items():
            response = api.get(f"{run_path(runs)}/{kind}/forged/-1/{position}", headers=bearer())
            answers[case] = (response.status_code, response.text)
    assert set(answers.values()) == {(404, '{"detail":"This image is not available"}')}, answers
    # The precise reason is the api-server's to log.
    logged = caplog.text
    assert "FileNotFoundError" in logged and "PermissionError" in logged
    assert "not a PNG, JPEG or WebP image" in logged and "over the gallery's 20,971,520" in logged
    assert "not under [imagen] gallery_roots" in logged


def test_with_no_gallery_roots_nothing_stored_is_served_and_the_page_says_how_to_set_them(
    api, runs, monkeypatch, storage_reads
):
    monkeypatch.setenv("AIRFLOW__IMAGEN__GALLERY_ROOTS", "")
    html = api.get(f"{run_path(runs)}/gallery?task_id=single", headers=bearer()).text
    assert "not shown: not under [imagen] gallery_roots" in figures(html)[0]
    notice = html[html.index('id="no-gallery-roots"') : html.index("</p>", html.index('id="no-gallery-roots"'))]
    assert "[imagen] gallery_roots" in notice and "AIRFLOW__IMAGEN__GALLERY_ROOTS=" in notice
    for kind in ("thumbnails", "images"):
        response = api.get(f"{run_path(runs)}/{kind}/single/-1/0", headers=bearer())
        assert (response.status_code, response.json()) == (404, {"detail": "This image is not available"})


def test_the_run_gallerys_task_list_separates_its_entries(api, runs):
    from html.parser import HTMLParser

    class TaskList(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.in_nav, self.items = False, []

        def handle_starttag(self, tag, attrs):
            if tag == "nav" and ("class", "tasks") in attrs:
                self.in_nav = True
            elif tag == "li" and self.in_nav:
                self.items.append("")

        def handle_endtag(self, tag):
            if tag == "nav":
                self.in_nav = False

        def handle_data(self, data):
            if self.in_nav and self.items:
                self.items[-1] += data

    parser = TaskList()
    parser.feed(api.get(routes(runs)["run gallery"], headers=bearer()).text)
    # Not "batch (2)forged (20)...": each task is an item of its own list.
    assert [" ".join(item.split()) for item in parser.items] == [
        "batch (2)",
        "forged (20)",
        "mapped (3)",
        "single (1)",
    ]


def test_a_batchs_failed_prompts_are_listed_with_their_reason(api, runs):
    html = api.get(f"{run_path(runs, FAILURES_DAG_ID)}/gallery", headers=bearer()).text
    assert "1 image · 1 failed prompt" in html
    assert len(figures(html)) == 1 and FAILING_BATCH[1] in figures(html)[0]
    failures = html[html.index('<section class="failures">') : html.index("</section>")]
    assert f"task batch, prompt 0: <q>{FAILING_BATCH[0]}</q>" in failures
    assert "code 3036" in failures and "daily free allocation" in failures


def test_task_instance_view_of_an_unmapped_task_shows_the_task(api, runs):
    """The UI leaves ``{MAP_INDEX}`` unreplaced for a task that is not mapped."""
    base = run_path(runs)
    html = api.get(f"{base}/gallery?task_id=batch&map_index={{MAP_INDEX}}", headers=bearer()).text
    assert len(figures(html)) == len(PROMPTS["batch"])
    assert PROMPTS["single"] not in html


def test_a_task_instance_without_images_says_so(api, runs):
    html = api.get(f"{run_path(runs)}/gallery?task_id=nothing&map_index=-1", headers=bearer()).text
    assert figures(html) == [] and "This task instance has no images (yet)." in html


def test_an_unknown_run_is_a_404(api, runs):
    response = api.get(f"/imagen/dags/{DAG_ID}/runs/manual__nope/gallery", headers=bearer())
    assert response.status_code == 404
    assert "has no run 'manual__nope'" in response.json()["detail"]


def test_a_thousand_mapped_images_page_fast_with_the_same_queries_as_a_small_run(api, runs):
    from airflow import settings
    from sqlalchemy import event

    statements: list[str] = []

    def count(conn, cursor, statement, *args):
        statements.append(statement)

    many, small = f"{run_path(runs, MANY_DAG_ID)}/gallery", f"{run_path(runs)}/gallery?task_id=single"
    for url in (many, small):  # warm: templates, the auth manager's per-DAG look-ups
        api.get(url, headers=bearer())
    event.listen(settings.engine, "before_cursor_execute", count)
    try:
        started = time.monotonic()
        first = api.get(many, headers=bearer())
        elapsed = time.monotonic() - started
        queries_many = len(statements)
        statements.clear()
        api.get(small, headers=bearer())
        queries_small = len(statements)
    finally:
        event.remove(settings.engine, "before_cursor_execute", count)

    assert first.status_code == 200
    assert f"{MANY} images" in first.text and "Page 1 of 21" in first.text
    assert len(figures(first.text)) == 48
    assert queries_many == queries_small <= 4  # not one query per task instance
    assert elapsed < 2.0, f"a page of a {MANY}-image run took {elapsed:.2f} s"

    last = api.get(f"{many}?page=21", headers=bearer()).text
    assert len(figures(last)) == MANY - 20 * 48
    assert "Robot number 999" in last and "Next →" not in last and 'href="gallery?page=20"' in last
    beyond = api.get(f"{many}?page=99", headers=bearer()).text
    assert "Page 21 of 21" in beyond
    one_each = api.get(f"{many}?page=47&per_page=1", headers=bearer()).text
    assert "Robot number 46" in one_each and "Page 47 of 1000" in one_each
    assert 'href="gallery?page=46&amp;per_page=1"' in one_each and 'href="gallery?page=48&amp;per_page=1"' in one_each


# -- serving stored images -----------------------------------------------------------------------------


def test_thumbnail_is_a_small_jpeg_of_the_stored_image_made_once(api, runs, storage_reads):
    from PIL import Image

    base = run_path(runs)
    first = api.get(f"{base}/thumbnails/single/-1/0", headers=bearer())
    assert first.status_code == 200
    assert first.headers["content-type"] == "image/jpeg"
    assert first.headers["x-content-type-options"] == "nosniff"
    with Image.open(io.BytesIO(first.content)) as thumb:
        assert thumb.format == "JPEG"
        assert thumb.size == (320, 175)  # 1408x768 (16:9) bounded to 320 px
    reads_after_first = len(storage_reads)

    second = api.get(f"{base}/thumbnails/single/-1/0", headers=bearer())
    assert second.content == first.content
    # The cached copy is used: the store is asked only whether the image changed, never read again.
    assert len(storage_reads) == reads_after_first + 1


def test_full_image_streams_the_stored_bytes(api, runs):
    from airflow.sdk import ObjectStoragePath

    for task_id, position in (("single", 0), ("batch", 1)):
        response = api.get(f"{run_path(runs)}/images/{task_id}/-1/{position}", headers=bearer())
        assert response.status_code == 200
        stored = xcom(DAG_ID, runs[DAG_ID], task_id, "stored_uri")
        uri = stored[position] if isinstance(stored, list) else stored
        assert response.content == ObjectStoragePath(uri).read_bytes()
        assert response.headers["content-type"] == "image/png"
        assert response.headers["content-security-policy"] == "default-src 'none'; sandbox"
        assert response.headers["content-disposition"] == f'inline; filename="{DAG_ID}-{task_id}--1-{position}.png"'


@pytest.mark.parametrize("kind", ["thumbnails", "images"])
def test_an_image_kept_only_at_cloudflare_is_not_fetched_by_the_api_server(kind, api, runs, imagen_emulator_server):
    from airflow_provider_imagen.emulator.server import EmulatorClient

    client = EmulatorClient(imagen_emulator_server.url)
    before = client.stats()["image_requests"]
    response = api.get(f"{run_path(runs)}/{kind}/mapped/0/0", headers=bearer())
    assert response.status_code == 404
    assert "not stored" in response.json()["detail"]
    assert client.stats()["image_requests"] == before


@pytest.mark.parametrize("kind", ["thumbnails", "images"])
@pytest.mark.parametrize("position", range(20))
def test_what_an_xcom_names_is_served_only_if_it_is_a_stored_image(
    kind, position, api, runs, imagen_emulator_server, storage_reads, locked_file_unreadable
):
    """Forged XComs: no web fetch, no chain, no relative path, and no bytes of anything but an image."""
    from airflow_provider_imagen.emulator.server import EmulatorClient

    client = EmulatorClient(imagen_emulator_server.url)
    before = client.stats()["image_requests"]
    response = api.get(f"{run_path(runs)}/{kind}/forged/-1/{position}", headers=bearer())
    assert response.status_code == 404
    assert SECRET not in response.text and "hunter2" not in response.text and "<script" not in response.text
    assert client.stats()["image_requests"] == before
    named = xcom(DAG_ID, runs[DAG_ID], "forged", "images")[position]["stored_uri"]
    assert set(storage_reads) == {named}  # it was this XCom's URI that was considered, and refused


TRAVERSALS = [
    "..",
    "../../../../etc/passwd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "..%2F..%2Fetc%2Fpasswd",
    "%252e%252e%252fetc%252fpasswd",
    "..%5c..%5cetc%5cpasswd",
    "%2Fetc%2Fpasswd",
    "file:%2F%2F%2Fetc%2Fpasswd",
    "s3:%2F%2Fbucket%2Fkey.png",
    "http:%2F%2F127.0.0.1%2Fx.png",
    "single%00",
]


@pytest.mark.parametrize("kind", ["thumbnails", "images"])
@pytest.mark.parametrize("task_id", TRAVERSALS)
def test_no_request_parameter_names_a_path(kind, task_id, api, runs, storage_reads):
    base = run_path(runs)
    for url in (
        f"{base}/{kind}/{task_id}/-1/0",
        f"{base}/{kind}/single/{task_id}/0",
        f"{base}/{kind}/single/-1/{task_id}",
        f"{base}/{kind}/single/-1/0?path={task_id}&uri={task_id}",  # unknown parameters change nothing
    ):
        response = api.get(url, headers=bearer())
        assert response.status_code in (200, 404, 422), url
        assert "root:" not in response.text
        if response.status_code == 200:  # only the untouched route, whatever the extra parameters
            assert url.endswith(f"?path={task_id}&uri={task_id}")
    stored = xcom(DAG_ID, runs[DAG_ID], "single", "stored_uri")
    assert set(storage_reads) <= {stored}


def test_a_run_id_that_is_a_path_finds_no_run(api, runs):
    for run_id in ("..", "..%2F..%2Fetc", "%2e%2e", "%2Fetc%2Fpasswd"):
        response = api.get(f"/imagen/dags/{DAG_ID}/runs/{run_id}/images/single/-1/0", headers=bearer())
        assert response.status_code == 404, run_id


# -- registration --------------------------------------------------------------------------------------


def test_airflow_loads_the_plugin_from_its_entry_point_with_both_views(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    airflow = str(Path(sys.executable).with_name("airflow"))
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path)}
    out = subprocess.run(
        [airflow, "plugins", "--output", "json"], env=env, capture_output=True, text=True, timeout=120, check=True
    ).stdout
    plugins = {p["name"]: p for p in json.loads(out[out.index("[") :])}
    gallery = plugins["imagen_gallery"]
    assert gallery["source"].startswith("airflow-provider-imagen==")
    assert (
        "value='airflow_provider_imagen.plugins.gallery:ImagenGalleryPlugin', group='airflow.plugins'"
        in (gallery["source"])
    )
    views = {view["destination"]: view for view in gallery["external_views"]}
    assert views["dag_run"]["href"] == "/imagen/dags/{DAG_ID}/runs/{RUN_ID}/gallery"
    assert views["task_instance"]["href"].endswith("?task_id={TASK_ID}&map_index={MAP_INDEX}")
    assert {view["name"] for view in views.values()} == {"Images"}
    assert gallery["fastapi_apps"][0]["url_prefix"] == "/imagen"


def test_the_plugin_loads_once_and_cleanly_when_airflow_also_reads_provider_info_plugins(tmp_path):
    """With ``lazy_discover_providers = False`` Airflow adds provider-info plugins: ours must not come twice."""
    import os
    import subprocess
    import sys

    script = """
from airflow import plugins_manager
if hasattr(plugins_manager, "_get_plugins"):  # Airflow 3.2+
    plugins, errors = plugins_manager._get_plugins()
else:
    plugins_manager.ensure_plugins_loaded()
    plugins, errors = plugins_manager.plugins, plugins_manager.import_errors
print([p.name for p in plugins].count("imagen_gallery"), [e for e in errors.values() if "imagen" in e])
"""
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LAZY_DISCOVER_PROVIDERS": "False"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "1 []", out.stderr[-2000:]


def test_behind_a_proxy_path_the_views_point_under_it():
    """With ``[api] base_url = https://host/airflow`` the UI and the app live under ``/airflow``: so do the views."""
    import os
    import subprocess
    import sys

    script = (
        "from airflow_provider_imagen.plugins.gallery import ImagenGalleryPlugin as P; "
        "print('\\n'.join(v['href'] for v in P.external_views))"
    )
    env = {**os.environ, "AIRFLOW__API__BASE_URL": "https://airflow.example.com/airflow/"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == [
        "/airflow/imagen/dags/{DAG_ID}/runs/{RUN_ID}/gallery",
        "/airflow/imagen/dags/{DAG_ID}/runs/{RUN_ID}/gallery?task_id={TASK_ID}&map_index={MAP_INDEX}",
    ]


def test_loading_the_plugin_imports_no_web_framework():
    """Every process that loads plugins (task runners too) imports the plugin module: it must stay cheap."""
    import subprocess
    import sys

    script = (
        "import sys; import airflow.sdk; "
        "from airflow_provider_imagen.plugins.gallery import ImagenGalleryPlugin; "
        "print(sorted(m for m in ('fastapi', 'PIL') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


# -- thumbnails ----------------------------------------------------------------------------------------


def test_thumbnails_flatten_transparency_on_white_and_keep_the_aspect_ratio():
    from PIL import Image

    from airflow_provider_imagen.plugins.store import make_thumbnail

    source = io.BytesIO()
    Image.new("RGBA", (768, 1408), (255, 0, 0, 0)).save(source, "PNG")  # 9:16, fully transparent
    with Image.open(io.BytesIO(make_thumbnail(source.getvalue()))) as thumb:
        assert thumb.format == "JPEG" and thumb.size == (175, 320)
        assert all(channel > 245 for channel in thumb.getpixel((80, 160)))


@pytest.mark.parametrize("side", [8_000, 10_000])  # 64 MP: over the gallery's bound; 100 MP: over Pillow's too
def test_images_too_large_to_thumbnail_are_refused_before_decoding(side):
    from PIL import Image

    from airflow_provider_imagen.plugins.store import NotServable, make_thumbnail

    huge = io.BytesIO()
    Image.new("1", (side, side)).save(huge, "PNG")  # a few KB
    with pytest.raises(NotServable, match="too many pixels"):
        make_thumbnail(huge.getvalue())


def test_the_thumbnail_cache_stays_within_its_bytes_and_drops_the_least_recently_used():
    from airflow_provider_imagen.plugins.store import ThumbnailCache

    cache = ThumbnailCache(max_bytes=300)
    for name in "abc":
        cache.put((name, "v1"), b"x" * 100)
    assert cache.get(("a", "v1")) is not None  # a is now the most recently used
    cache.put(("d", "v1"), b"x" * 100)
    assert cache.get(("b", "v1")) is None
    assert all(cache.get((name, "v1")) for name in "acd")
    cache.put(("too big", "v1"), b"x" * 301)
    assert cache.get(("too big", "v1")) is None and cache.get(("d", "v1")) is not None


# -- [imagen] gallery_roots ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("roots", "uri", "admitted"),
    [
        ("/data/images", "/data/images/x.png", True),
        ("/data/images/", "/data/images/a/b/x.png", True),
        ("/data/images", "file:///data/images/x.png", True),
        ("file:///data/images/", "/data/images/x.png", True),
        ("/data/images", "/data/images-other/x.png", False),
        ("/data/images", "/data/images/../secret/x.png", False),
        ("/data/images", "/data/x.png", False),
        ("/data/images", "file://host/data/images/x.png", False),
        ("/data/images, s3://aws_default@bucket/prefix/", "/data/other/x.png", False),
        ("s3://aws_default@bucket/prefix/", "s3://aws_default@bucket/prefix/x.png", True),
        ("s3://aws_default@bucket/prefix", "s3://aws_default@bucket/prefix/sub/x.png", True),
        ("s3://aws_default@bucket/", "s3://aws_default@bucket/any/x.png", True),
        ("s3://aws_default@bucket/prefix/", "S3://aws_default@bucket/prefix/x.png", True),
        ("s3://aws_default@bucket/prefix/", "s3://other_conn@bucket/prefix/x.png", False),
        ("s3://aws_default@bucket/prefix/", "s3://bucket/prefix/x.png", False),
        ("s3://aws_default@bucket/prefix/", "s3://aws_default@bucket2/prefix/x.png", False),
        ("s3://aws_default@bucket/prefix", "s3://aws_default@bucket/prefix-other/x.png", False),
        ("s3://aws_default@bucket/prefix/", "gs://aws_default@bucket/prefix/x.png", False),
        ("s3://aws_default@bucket/prefix/", "s3://aws_default@bucket/prefix/../other/x.png", False),
        ("s3://aws_default@bucket/prefix/", "s3://aws_default@bucket/prefix//x.png", False),
        ("s3://aws_default@bucket/prefix/", "s3://aws_default@bucket/prefix/x.png?versionId=1", False),
        ("s3://aws_default@bucket/prefix/", "s3://aws_default:pw@bucket/prefix/x.png", False),
        ("s3://aws_default@bucket/prefix/", "s3://aws_default@bucket:9000/prefix/x.png", False),
        ("s3://aws_default@bucket/prefix/", "/prefix/x.png", False),
        ("", "/data/images/x.png", False),
        ("images/, https://example.com/, ftp://h/x/", "/data/images/x.png", False),  # none is a root
        ("/", "/anything/x.png", True),
    ],
)
def test_gallery_roots_admit_only_what_is_under_them(roots, uri, admitted, monkeypatch):
    from airflow_provider_imagen.plugins.store import refusal

    monkeypatch.setenv("AIRFLOW__IMAGEN__GALLERY_ROOTS", roots)
    assert (refusal(uri) is None) is admitted


def test_a_uri_outside_the_roots_is_refused_before_any_storage_is_touched(monkeypatch):
    """No ObjectStoragePath, hence no connection look-up nor request, for a URI outside every root."""
    import airflow.sdk

    from airflow_provider_imagen.plugins.store import NotServable, storage_path

    def no_storage(*args, **kwargs):
        raise AssertionError("the gallery touched storage for a refused URI")

    monkeypatch.setenv("AIRFLOW__IMAGEN__GALLERY_ROOTS", "s3://aws_default@bucket/prefix/")
    monkeypatch.setattr(airflow.sdk, "ObjectStoragePath", no_storage)
    for uri in ("s3://other_conn@bucket/prefix/x.png", "s3://aws_default@bucket2/prefix/x.png", "/etc/passwd"):
        with pytest.raises(NotServable, match=r"not under \[imagen\] gallery_roots"):
            storage_path(uri)


def test_symlinks_are_followed_only_within_the_roots(tmp_path, monkeypatch):
    from airflow_provider_imagen.plugins.store import NotServable, open_image

    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "x.png").write_bytes(png())
    (root / "sub" / "y.png").write_bytes(png())
    (root / "out.png").symlink_to(outside / "x.png")
    (root / "outdir").symlink_to(outside, target_is_directory=True)
    (root / "in.png").symlink_to(root / "sub" / "y.png")
    (tmp_path / "root-link").symlink_to(root, target_is_directory=True)
    monkeypatch.setenv("AIRFLOW__IMAGEN__GALLERY_ROOTS", str(root))

    for refused in (root / "out.png", root / "outdir" / "x.png"):
        with pytest.raises(NotServable, match=r"resolves to .*outside.*not under"):
            open_image(str(refused))
    assert open_image(str(root / "in.png"))[0] == "image/png"
    # A root that is itself a link admits what lies in the folder it names.
    monkeypatch.setenv("AIRFLOW__IMAGEN__GALLERY_ROOTS", str(tmp_path / "root-link"))
    assert open_image(str(tmp_path / "root-link" / "sub" / "y.png"))[0] == "image/png"


# -- bounds on what a request reads and decodes --------------------------------------------------------


def test_a_30_mb_object_is_refused_before_it_is_read(tmp_path, monkeypatch):
    from airflow_provider_imagen.plugins.store import NotServable, open_image, thumbnail

    big = tmp_path / "big.png"
    with open(big, "wb") as out:
        out.write(png())
        out.truncate(30 * 1024 * 1024)
    monkeypatch.setenv("AIRFLOW__IMAGEN__GALLERY_ROOTS", str(tmp_path))
    for serve in (open_image, thumbnail):
        with pytest.raises(NotServable, match="over the gallery's"):
            serve(str(big))


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares its size and holds a few bytes of garbage pixels: decoding it would fail."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"garbage") + chunk(b"IEND", b"")


def test_a_20_mp_png_is_refused_on_its_header_before_any_pixel_is_decoded(monkeypatch):
    from PIL import Image, ImageFile

    from airflow_provider_imagen.plugins.store import NotServable, make_thumbnail

    loads: list[object] = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self) or real_load(self))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # even with Pillow's own guard switched off
    with pytest.raises(NotServable, match=r"too many pixels to thumbnail \(5000x4000\)"):
        make_thumbnail(png_header(5000, 4000))
    assert loads == []


def test_thumbnails_touch_no_process_global_warning_filter_nor_pillows_limit():
    """Requests run on many threads: ``warnings.catch_warnings`` is not thread-safe, nor is changing a global."""
    import warnings

    from PIL import Image

    from airflow_provider_imagen.plugins.store import NotServable, make_thumbnail

    entered: list[object] = []
    real = warnings.catch_warnings

    def spy(*args: Any, **kwargs: Any) -> Any:
        entered.append(args)
        return real(*args, **kwargs)

    limit = Image.MAX_IMAGE_PIXELS
    warnings.catch_warnings = spy  # type: ignore[misc,assignment]  # restored before pytest reports anything
    try:
        thumb = make_thumbnail(png())
        with pytest.raises(NotServable, match="too many pixels") as refused:
            make_thumbnail(png_header(8000, 8000))
    finally:
        warnings.catch_warnings = real  # type: ignore[misc]
    assert thumb.startswith(b"\xff\xd8\xff") and refused.value is not None
    assert entered == []
    assert limit == Image.MAX_IMAGE_PIXELS


def test_at_most_two_thumbnails_are_made_at_once_and_a_third_request_is_told_to_come_back(tmp_path, monkeypatch):
    """Structural, not timed: two decodes are held inside; a third finds no free decoder and is refused."""
    import threading

    from airflow_provider_imagen.plugins import store

    monkeypatch.setenv("AIRFLOW__IMAGEN__GALLERY_ROOTS", str(tmp_path))
    monkeypatch.setattr(store, "DECODES", threading.BoundedSemaphore(store.MAX_CONCURRENT_DECODES))
    monkeypatch.setattr(store, "DECODE_WAIT_SECONDS", 0)  # the third does not wait for a free decoder
    store.THUMBNAILS.clear()
    inside, most, release = [0], [0], threading.Event()
    changed = threading.Condition()
    real = store.make_thumbnail

    def held(data: bytes, longest: int = store.THUMBNAIL_PIXELS) -> bytes:
        with changed:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
            changed.notify_all()
        release.wait(60)
        with changed:
            inside[0] -= 1
        return real(data, longest)

    monkeypatch.setattr(store, "make_thumbnail", held)
    uris = []
    for name in "abc":
        (tmp_path / f"{name}.png").write_bytes(png())
        uris.append(str(tmp_path / f"{name}.png"))
    results: dict[str, object] = {}

    def request(uri: str) -> None:
        try:
            results[uri] = store.thumbnail(uri)
        except Exception as err:  # recorded for the assertions
            results[uri] = err

    threads = [threading.Thread(target=request, args=(uri,)) for uri in uris[:2]]
    for thread in threads:
        thread.start()
    with changed:
        assert changed.wait_for(lambda: inside[0] == 2, timeout=60)
    with pytest.raises(store.GalleryBusy):
        store.thumbnail(uris[2])
    release.set()
    for thread in threads:
        thread.join(60)
    assert most[0] == 2
    assert all(isinstance(results[uri], bytes) for uri in uris[:2])
    assert isinstance(store.thumbnail(uris[2]), bytes)  # decoders free again: served
    store.THUMBNAILS.clear()


def test_a_thumbnail_request_that_finds_every_decoder_busy_gets_a_503(api, runs, monkeypatch):
    import threading

    from airflow_provider_imagen.plugins import store

    busy = threading.BoundedSemaphore(store.MAX_CONCURRENT_DECODES)
    for _ in range(store.MAX_CONCURRENT_DECODES):
        busy.acquire()
    monkeypatch.setattr(store, "DECODES", busy)
    monkeypatch.setattr(store, "DECODE_WAIT_SECONDS", 0)
    store.THUMBNAILS.clear()
    response = api.get(f"{run_path(runs)}/thumbnails/single/-1/0", headers=bearer())
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert "try again" in response.json()["detail"]
