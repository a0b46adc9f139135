"""
Persisting to S3 (``s3://conn_id@bucket/key``), against moto's S3 in this process.

moto's ``mock_aws`` patches botocore only, and ObjectStoragePath writes through s3fs, which talks
aiobotocore: so the tests run moto's ``ThreadedMotoServer`` (a thread of this process, on 127.0.0.1) and an
``aws`` connection from an ``AIRFLOW_CONN_*`` variable points at it with ``endpoint_url``, as a deployment
points at MinIO, Ceph or any S3-compatible store.
"""

from __future__ import annotations

import atexit
import json
import shutil
import struct
import uuid
import zlib
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from airflow_provider_imagen._task.storage import file_name_for, store_image
from airflow_provider_imagen.exceptions import ImageDownloadError

if TYPE_CHECKING:
    from collections.abc import Iterator

moto_server = pytest.importorskip("moto.server", reason="needs moto[server] (the dev extra)")
pytest.importorskip("s3fs", reason="needs apache-airflow-providers-amazon[s3fs] (the dev extra)")

CONN_ID = "imagen_s3_test"
IMAGE_URL = "http://images.invalid/image.png"  # answered by an httpx.MockTransport, never fetched


def png(size: int) -> bytes:
    """A valid PNG of about ``size`` bytes (incompressible pixels), so uploads span several chunks."""
    width = 256
    rows = max(1, size // (width * 3))
    raw = b"".join(b"\x00" + uuid.uuid4().bytes * (width * 3 // 16) for _ in range(rows))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, rows, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 0)) + chunk(b"IEND", b"")


_ENDPOINT: list[str] = []


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """One moto S3 server per test process, whichever module asks first.

    The aws connection's filesystem is cached by connection id (fsspec, ObjectStoragePath), so a second server on
    another port under the same connection id would be reached through the first one's cached client.
    """
    if not _ENDPOINT:
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        atexit.register(server.stop)
        host, port = server.get_host_and_port()
        _ENDPOINT.append(f"http://{host}:{port}")
    return _ENDPOINT[0]


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A new, empty bucket, and the ``aws`` connection ``imagen_s3_test`` pointing at the server."""
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"},
            }
        ),
    )
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    name = f"imagen-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)

    class Bucket:
        uri = f"s3://{CONN_ID}@{name}"

        @staticmethod
        def objects() -> dict[str, bytes]:
            listed = client.list_objects_v2(Bucket=name).get("Contents", [])
            return {o["Key"]: client.get_object(Bucket=name, Key=o["Key"])["Body"].read() for o in listed}

        @staticmethod
        def unfinished_uploads() -> list[str]:
            return [u["Key"] for u in client.list_multipart_uploads(Bucket=name).get("Uploads", [])]

    return Bucket


def image_server(body: bytes, *, fail_after: int | None = None) -> httpx.Client:
    """An HTTP client whose image host streams ``body``, or drops the connection after ``fail_after`` bytes."""

    class Body(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            sent = 0
            for start in range(0, len(body), 64 * 1024):
                piece = body[start : start + 64 * 1024]
                if fail_after is not None and sent + len(piece) > fail_after:
                    raise httpx.ReadError("connection reset by peer")
                sent += len(piece)
                yield piece

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "image/png"}, stream=Body())

    return httpx.Client(transport=httpx.MockTransport(handler))


def test_an_image_from_a_url_becomes_one_complete_object(bucket):
    image = png(600_000)
    inputs = {"model": "google/imagen-4", "aspect_ratio": "1:1"}
    with image_server(image) as client:
        stored = store_image(
            output_path=f"{bucket.uri}/images/", url=IMAGE_URL, prompt="A lighthouse", inputs=inputs, client=client
        )
    key = f"images/{file_name_for('A lighthouse', inputs, '.png')}"
    assert str(stored) == f"s3://{CONN_ID}@{bucket.uri.split('@')[1]}/{key}"
    assert bucket.objects() == {key: image}  # one object, byte for byte, nothing else
    assert bucket.unfinished_uploads() == []


def test_bytes_go_to_an_explicit_key(bucket):
    image = png(50_000)
    store_image(output_path=f"{bucket.uri}/a/b/out.png", data=image, prompt="p", inputs={})
    assert bucket.objects() == {"a/b/out.png": image}


def test_a_download_that_fails_midway_leaves_no_object(bucket):
    with image_server(png(600_000), fail_after=200_000) as client, pytest.raises(ImageDownloadError):
        store_image(output_path=f"{bucket.uri}/images/", url=IMAGE_URL, prompt="p", inputs={}, client=client)
    assert bucket.objects() == {}
    assert bucket.unfinished_uploads() == []


def test_bytes_that_are_not_an_image_leave_no_object(bucket):
    with pytest.raises(ImageDownloadError, match="not a PNG"):
        store_image(output_path=f"{bucket.uri}/images/", data=b"<html>error</html>", prompt="p", inputs={})
    assert bucket.objects() == {}


def test_an_upload_that_fails_midway_leaves_no_object(bucket, monkeypatch):
    image = png(600_000)
    copy = shutil.copyfileobj

    def copy_then_fail(source: Any, sink: Any, length: int = 0) -> None:
        sink.write(source.read(100_000))  # part of the image reached the store, then the worker's disk, or
        raise OSError("I/O error")  # network, or process failed

    monkeypatch.setattr(shutil, "copyfileobj", copy_then_fail)
    with pytest.raises(OSError, match="I/O error"):
        store_image(output_path=f"{bucket.uri}/images/", data=image, prompt="p", inputs={})
    monkeypatch.setattr(shutil, "copyfileobj", copy)
    assert bucket.objects() == {}, "a truncated object was published"
    assert bucket.unfinished_uploads() == []
