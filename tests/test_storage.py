"""Persisting images over real HTTP: streamed, capped, sniffed, atomic."""

from __future__ import annotations

import base64
import os

import httpx
import pytest

from airflow_provider_imagen._task.storage import file_name_for, resolve_output_path, store_image
from airflow_provider_imagen.exceptions import ImageDownloadError, InvalidInputError


@pytest.fixture
def image_url(imagen_emulator):
    with httpx.Client(headers={"Authorization": f"Bearer {imagen_emulator.token}"}) as client:
        response = client.post(
            f"{imagen_emulator.api_base}/accounts/a/ai/run",
            json={"model": "google/imagen-4", "input": {"prompt": "A lighthouse", "aspect_ratio": "4:3"}},
        )
    return response.json()["result"]["image"]


def files_in(folder):
    return sorted(p.name for p in folder.iterdir())


def test_folder_gets_a_deterministic_name(tmp_path, image_url):
    inputs = {"model": "google/imagen-4", "aspect_ratio": "4:3"}
    first = store_image(
        output_path=f"{tmp_path}/", url=image_url, api_host="127.0.0.1", prompt="A lighthouse", inputs=inputs
    )
    again = store_image(
        output_path=str(tmp_path), url=image_url, api_host="127.0.0.1", prompt="A lighthouse", inputs=inputs
    )
    assert str(first) == str(again)
    assert first.name == file_name_for("A lighthouse", inputs, ".png")
    assert first.name.startswith("a-lighthouse-") and first.name.endswith(".png")
    assert files_in(tmp_path) == [first.name]  # no temporary file left behind
    assert (tmp_path / first.name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_explicit_file_and_file_uri(tmp_path, image_url):
    target = tmp_path / "nested" / "out.png"
    stored = store_image(output_path=f"file://{target}", url=image_url, api_host="127.0.0.1", prompt="p", inputs={})
    assert stored.path == str(target) and target.stat().st_size > 1000


def test_bytes_from_models_that_return_them(tmp_path, imagen_emulator):
    with httpx.Client(headers={"Authorization": f"Bearer {imagen_emulator.token}"}) as client:
        flux = client.post(
            f"{imagen_emulator.api_base}/accounts/a/ai/run/@cf/black-forest-labs/flux-1-schnell", json={"prompt": "f"}
        ).json()
    data = base64.b64decode(flux["result"]["image"])
    stored = store_image(output_path=f"{tmp_path}/", data=data, prompt="a fox", inputs={"model": "flux"})
    assert stored.name.endswith(".jpg")


@pytest.mark.parametrize(
    ("preset", "fields", "message"),
    [
        ("image_not_found", {}, "HTTP 404"),
        ("image_not_an_image", {}, "not a PNG, JPEG or WebP"),
        ("image_huge", {"size": 3 * 1024 * 1024}, "larger than the 1,048,576-byte cap"),
        ("image_drop", {}, "RemoteProtocolError"),
        ("image_server_error", {}, "HTTP 503"),
    ],
)
def test_failed_downloads_leave_nothing_at_the_output_path(
    tmp_path, imagen_emulator, image_url, preset, fields, message
):
    imagen_emulator.inject(preset, times=3, **fields)
    with pytest.raises(ImageDownloadError, match=message):
        store_image(
            output_path=f"{tmp_path}/",
            url=image_url,
            api_host="127.0.0.1",
            prompt="p",
            inputs={},
            max_bytes=1024 * 1024,
        )
    assert files_in(tmp_path) == []


def test_a_dropped_download_is_retried(tmp_path, imagen_emulator, image_url):
    imagen_emulator.inject("image_drop")
    stored = store_image(output_path=f"{tmp_path}/x.png", url=image_url, api_host="127.0.0.1", prompt="p", inputs={})
    assert os.path.getsize(stored.path) > 1000
    assert imagen_emulator.stats()["image_requests"] == 2


def test_only_http_urls_are_followed(tmp_path):
    with pytest.raises(ImageDownloadError, match="only http"):
        store_image(output_path=f"{tmp_path}/", url="file:///etc/passwd", prompt="p", inputs={})
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("bad", ["", "   ", 42, None, "1bad://x", "nosuchprotocol://bucket/key"])
def test_bad_output_paths_are_rejected_by_name(bad):
    with pytest.raises(InvalidInputError, match="output_path"):
        resolve_output_path(bad)


def test_a_local_image_is_on_disk_before_its_name_appears(tmp_path, image_url, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    store_image(output_path=f"{tmp_path}/", url=image_url, api_host="127.0.0.1", prompt="A lighthouse", inputs={})
    assert len(synced) >= 1  # the file's bytes (and, where the filesystem allows, the folder's entry)


def test_kept_bytes_are_whole_read_back_only_from_their_folder_and_optional(tmp_path, monkeypatch):
    from airflow_provider_imagen._task import storage
    from airflow_provider_imagen.models import GeneratedImage

    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 32
    monkeypatch.setattr(storage, "KEPT_FOLDER", str(tmp_path / "kept"))
    path = storage.keep_bytes(png, "airflow-imagen-abc")
    assert path == str(tmp_path / "kept" / "airflow-imagen-abc.png") and storage.read_kept(path) == png
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["airflow-imagen-abc.png"]  # no partial file
    (tmp_path / "elsewhere.png").write_bytes(png)
    assert storage.read_kept(str(tmp_path / "elsewhere.png")) is None  # a record cannot point it anywhere else
    storage.discard_kept(str(tmp_path / "elsewhere.png"))
    storage.discard_kept(str(tmp_path / "kept" / ".." / "elsewhere.png"))
    assert (tmp_path / "elsewhere.png").exists()  # nor have anything else removed
    image = GeneratedImage(model="@cf/x/y", prompt="p")
    assert f"the image bytes are kept at {path} on " in str(storage.storage_failure(OSError("full"), image, "/o", path))
    storage.discard_kept(path)
    assert storage.read_kept(path) is None

    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setattr(storage, "KEPT_FOLDER", str(tmp_path / "a-file" / "kept"))
    assert storage.keep_bytes(png, "airflow-imagen-abc") is None  # keeping is a safety net: storing goes on
    assert "the image bytes were not kept" in str(storage.storage_failure(OSError("full"), image, "/o", None))
