"""
Persisting generated images to local files or object storage, never leaving a partial file behind.

The download is streamed (memory stays flat), capped, sniffed (PNG, JPEG, WebP) and written to a
temporary name that is renamed into place. Object stores that cannot rename (s3, gcs) get the object in
one upload after the whole image has been downloaded and checked, so a failed download writes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import uuid
from typing import TYPE_CHECKING, Any

import httpx
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from airflow_provider_imagen.constants import MAX_IMAGE_BYTES
from airflow_provider_imagen.errors import ImageDownloadError, InvalidInputError
from airflow_provider_imagen.responses import sniff_image_type

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

DEFAULT_DOWNLOAD_TIMEOUT = 60.0
MAX_REDIRECTS = 5
DOWNLOAD_ATTEMPTS = 3
CHUNK_SIZE = 256 * 1024

EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif"}
_ALLOWED_TYPES = {"image/png", "image/jpeg", "image/webp"}
_LOCAL_PROTOCOLS = {"", "file", "local"}


def resolve_output_path(output_path: str | ObjectStoragePath) -> tuple[ObjectStoragePath, bool]:
    """
    Turn ``output_path`` into an :class:`ObjectStoragePath` and tell whether it names a folder.

    A string ending in ``/`` or an existing directory is a folder; anything else is the file to write.
    Local paths without a scheme are made absolute.
    """
    from airflow.sdk import ObjectStoragePath

    if isinstance(output_path, ObjectStoragePath):
        text = str(output_path)
        return output_path, text.endswith("/") or _is_dir(output_path)
    if not isinstance(output_path, str) or not output_path.strip():
        raise InvalidInputError(
            "Invalid output_path: expected a path or URI string (a local path, file://, s3://conn_id@bucket/key, "
            f"gs://...) or an ObjectStoragePath, got {output_path!r}"
        )
    text = output_path.strip()
    is_folder = text.endswith("/")
    if "://" not in text:
        if text.startswith("~"):
            text = os.path.expanduser(text)
        text = "file://" + os.path.abspath(text)
    else:
        scheme = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", text)
        if scheme is None:
            raise InvalidInputError(f"Invalid output_path: {output_path!r} is not a valid URI")
        import fsspec

        if scheme.group(1) not in fsspec.available_protocols():
            raise InvalidInputError(
                f"Invalid output_path {output_path!r}: no filesystem is known for {scheme.group(1)}:// "
                "(use a local path, file://, s3://, gs://, ...)"
            )
    try:
        path = ObjectStoragePath(text)
    except Exception as exc:  # fsspec raises many types for unknown protocols or bad URIs
        raise InvalidInputError(f"Invalid output_path {output_path!r}: {exc}") from None
    return path, is_folder or _is_dir(path)


def _is_dir(path: ObjectStoragePath) -> bool:
    try:
        return bool(path.is_dir())
    except Exception:
        return False


def file_name_for(prompt: str, inputs: dict[str, Any], extension: str) -> str:
    """A stable, readable file name: a slug of the prompt plus a hash of everything that shaped the image."""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:48].rstrip("-") or "image"
    digest = hashlib.sha256(repr(sorted((k, str(v)) for k, v in inputs.items())).encode()).hexdigest()[:12]
    return f"{slug}-{digest}{extension}"


def download_to_file(
    url: str,
    destination: Any,
    *,
    client: httpx.Client | None = None,
    max_bytes: int = MAX_IMAGE_BYTES,
    timeout: float = DEFAULT_DOWNLOAD_TIMEOUT,
) -> str:
    """
    Stream ``url`` into the open binary file ``destination`` and return the sniffed media type.

    No Cloudflare token is sent: the image host is not the API.
    """
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        raise ImageDownloadError(f"refusing to download {url!r}: only http(s) URLs are followed")
    own_client = client is None
    http = client or httpx.Client(follow_redirects=True, max_redirects=MAX_REDIRECTS, timeout=timeout)
    try:
        with http.stream("GET", url) as response:
            if response.status_code >= 400:
                raise ImageDownloadError(
                    f"downloading the image failed with HTTP {response.status_code}",
                    status_code=response.status_code,
                    retryable=response.status_code >= 500 or response.status_code == 429,
                )
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise ImageDownloadError(f"the image is {int(declared):,} bytes, over the {max_bytes:,}-byte cap")
            media_type: str | None = None
            received = 0
            head = b""
            for chunk in response.iter_bytes(CHUNK_SIZE):
                received += len(chunk)
                if received > max_bytes:
                    raise ImageDownloadError(f"the image is larger than the {max_bytes:,}-byte cap")
                if media_type is None:
                    head += chunk
                    if len(head) < 12 and received < 12:
                        continue
                    media_type = sniff_image_type(head)
                    if media_type not in _ALLOWED_TYPES:
                        raise ImageDownloadError(
                            f"the downloaded bytes are not a PNG, JPEG or WebP image (they start with {head[:16]!r})"
                        )
                    destination.write(head)
                    continue
                destination.write(chunk)
            if media_type is None:
                media_type = sniff_image_type(head)
                if media_type not in _ALLOWED_TYPES:
                    raise ImageDownloadError("the downloaded body is empty or not an image")
                destination.write(head)
            return media_type
    except httpx.TooManyRedirects:
        raise ImageDownloadError(f"more than {MAX_REDIRECTS} redirects while downloading the image") from None
    except httpx.TransportError as exc:
        raise ImageDownloadError(f"downloading the image failed: {type(exc).__name__}: {exc}", retryable=True) from exc
    finally:
        if own_client:
            http.close()


def store_image(
    *,
    output_path: str | ObjectStoragePath,
    prompt: str,
    inputs: dict[str, Any],
    url: str | None = None,
    data: bytes | None = None,
    max_bytes: int = MAX_IMAGE_BYTES,
    timeout: float = DEFAULT_DOWNLOAD_TIMEOUT,
    client: httpx.Client | None = None,
) -> ObjectStoragePath:
    """
    Persist one image (from ``url``, or ``data`` for models that return bytes) at ``output_path``.

    :param output_path: the file to write, or a folder (ending in ``/`` or existing) to write a
        deterministic file name into.
    :param prompt: the prompt, for the file name.
    :param inputs: everything that shaped the image (model, aspect ratio, ...), for the file name.
    :return: where the image now is.
    """
    target, is_folder = resolve_output_path(output_path)
    with tempfile.TemporaryDirectory(prefix="imagen-") as scratch:
        local = os.path.join(scratch, "image")
        with open(local, "wb") as out:
            if data is not None:
                media_type = sniff_image_type(data)
                if media_type not in _ALLOWED_TYPES:
                    raise ImageDownloadError("the model returned bytes that are not a PNG, JPEG or WebP image")
                if len(data) > max_bytes:
                    raise ImageDownloadError(f"the image is {len(data):,} bytes, over the {max_bytes:,}-byte cap")
                out.write(data)
            elif url is not None:
                for attempt in Retrying(
                    stop=stop_after_attempt(DOWNLOAD_ATTEMPTS),
                    wait=wait_exponential_jitter(multiplier=0.5, max=5, jitter=0.5),
                    retry=retry_if_exception(lambda exc: isinstance(exc, ImageDownloadError) and exc.retryable),
                    reraise=True,
                ):
                    with attempt:
                        out.seek(0)
                        out.truncate()  # a retry after a dropped connection starts from a clean file
                        media_type = download_to_file(url, out, client=client, max_bytes=max_bytes, timeout=timeout)
            else:
                raise ValueError("store_image needs url or data")
        if is_folder:
            target = target / file_name_for(prompt, inputs, EXTENSIONS.get(media_type or "", ".img"))
        _publish(local, target)
    return target


def _publish(local: str, target: ObjectStoragePath) -> None:
    """Move a complete local file to ``target`` so that only a whole image is ever visible there."""
    if target.protocol in _LOCAL_PROTOCOLS:
        final = target.path
        os.makedirs(os.path.dirname(final) or ".", exist_ok=True)
        partial = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.{uuid.uuid4().hex}.part")
        try:
            shutil.copyfile(local, partial)
            os.replace(partial, final)  # atomic on POSIX within one filesystem
        except BaseException:
            if os.path.exists(partial):
                os.unlink(partial)
            raise
        return
    # Object stores publish an object only when its upload completes.
    with contextlib.suppress(Exception):  # buckets have no folders to make
        target.parent.mkdir(parents=True, exist_ok=True)
    with open(local, "rb") as source, target.open("wb") as sink:
        shutil.copyfileobj(source, sink, CHUNK_SIZE)
