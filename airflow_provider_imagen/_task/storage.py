"""
Persisting generated images to local files or object storage, never leaving a partial file behind.

The download is streamed (memory stays flat), capped, sniffed (PNG, JPEG, WebP) and written to a
temporary name that is renamed into place. Object stores that cannot rename (s3, gcs) get the object in
one upload after the whole image has been downloaded and checked, so a failed download writes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import uuid
from typing import TYPE_CHECKING, Any

from tenacity import Retrying, retry_if_exception, stop_after_attempt

from airflow_provider_imagen import _metrics
from airflow_provider_imagen._cloudflare.response import sniff_image_type
from airflow_provider_imagen._cloudflare.retry import backoff_wait
from airflow_provider_imagen._task.download import (
    ALLOWED_TYPES,
    DEFAULT_DOWNLOAD_TIMEOUT,
    download_to_file,
)
from airflow_provider_imagen._task.local_folder import fsync_folder
from airflow_provider_imagen.constants import MAX_IMAGE_BYTES
from airflow_provider_imagen.exceptions import (
    CloudflareWorkersAIError,
    ImageDownloadError,
    InvalidInputError,
    StorageError,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    import httpx
    from airflow.sdk import Context, ObjectStoragePath

    from airflow_provider_imagen.models import GeneratedImage

DOWNLOAD_ATTEMPTS = 3
CHUNK_SIZE = 256 * 1024

EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif"}
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


def task_instance_identity(context: Context) -> dict[str, Any]:
    """Return what identifies a task instance: part of every stored image's name, so no two share one."""
    ti = context["ti"]
    return {"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id, "map_index": ti.map_index}


def file_name_for(prompt: str, inputs: dict[str, Any], extension: str) -> str:
    """
    Return a readable file name that no other image gets.

    It is a slug of the prompt's start, then a hash of the whole prompt and of ``inputs``, which name everything that
    identifies the image (model, aspect ratio, person generation, and the task instance: DAG, run, task, map index,
    position in a batch). The same image of the same task instance (a retry) gets the same name; nothing else does.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:48].rstrip("-") or "image"
    identity = json.dumps({"prompt": prompt, **{k: str(v) for k, v in inputs.items()}}, sort_keys=True)
    digest = hashlib.sha256(identity.encode()).hexdigest()[:20]
    return f"{slug}-{digest}{extension}"


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
    api_host: str | None = None,
) -> ObjectStoragePath:
    """
    Persist one image (from ``url``, or ``data`` for models that return bytes) at ``output_path``.

    :param output_path: the file to write, or a folder (ending in ``/`` or existing) to write a name
        unique to this image into (see :func:`file_name_for`).
    :param prompt: the prompt, for the file name.
    :param inputs: everything that identifies the image (model, aspect ratio, task instance, ...), for the
        file name.
    :param api_host: the API's host: an image URL on that same host may be on a private address (the emulator, a
        private proxy); see :func:`~airflow_provider_imagen._task.download.check_image_url`.
    :return: where the image now is.
    """
    target, is_folder = resolve_output_path(output_path)
    with tempfile.TemporaryDirectory(prefix="imagen-") as scratch:
        local = os.path.join(scratch, "image")
        with open(local, "wb") as out:
            if data is not None:
                media_type = checked_bytes(data, max_bytes)
                out.write(data)
            elif url is not None:
                for attempt in Retrying(
                    stop=stop_after_attempt(DOWNLOAD_ATTEMPTS),
                    wait=backoff_wait(0.5, 5.0),
                    retry=retry_if_exception(lambda exc: isinstance(exc, ImageDownloadError) and exc.retryable),
                    reraise=True,
                ):
                    with attempt:
                        out.seek(0)
                        out.truncate()  # a retry after a dropped connection starts from a clean file
                        media_type = download_to_file(
                            url, out, client=client, max_bytes=max_bytes, timeout=timeout, api_host=api_host
                        )
            else:
                raise ValueError("store_image needs url or data")
        if is_folder:
            target = target / file_name_for(prompt, inputs, EXTENSIONS.get(media_type or "", ".img"))
        _publish(local, target)
        _metrics.stored(local, inputs.get("model"))
    return target


def checked_bytes(data: bytes, max_bytes: int) -> str:
    """
    Return the media type of the image bytes a model answered with.

    :raises ImageDownloadError: when they are not a PNG, JPEG or WebP image, or over ``max_bytes``.
    """
    media_type = sniff_image_type(data)
    if media_type not in ALLOWED_TYPES:
        raise ImageDownloadError("the model returned bytes that are not a PNG, JPEG or WebP image")
    if len(data) > max_bytes:
        raise ImageDownloadError(f"the image is {len(data):,} bytes, over the {max_bytes:,}-byte cap")
    return media_type


def image_store(
    *,
    output_path: str | ObjectStoragePath | None,
    max_bytes: int,
    identity: dict[str, Any],
    api_host: str,
    before: Callable[[], None] | None = None,
) -> Callable[[GeneratedImage, int | None], str | None]:
    """
    Return how a task stores one image: at ``output_path``, named after its inputs and task instance.

    The store takes the image and its position in a batch (``None`` for a single image) and returns the stored
    URI, or ``None`` without ``output_path``.

    :param output_path: the operator's rendered ``output_path``.
    :param max_bytes: refuse a larger image.
    :param identity: the task instance (:func:`task_instance_identity`), part of every name.
    :param api_host: the API's host (the emulator's may be private; an image on that same host is allowed).
    :param before: called before each image is stored (a file ``output_path`` drops its old records first).
    """

    def store(image: GeneratedImage, index: int | None) -> str | None:
        if output_path is None:
            return None
        if before is not None:
            before()
        inputs = {**image.model_dump(include={"model", "aspect_ratio", "person_generation"}), **identity}
        if index is not None:
            inputs["index"] = index
        stored = store_image(
            output_path=output_path,
            url=image.url,
            data=image.data,
            prompt=image.prompt,
            inputs=inputs,
            max_bytes=max_bytes,
            api_host=api_host or None,
        )
        return str(stored)

    return store


def _publish(local: str, target: ObjectStoragePath) -> None:
    """Move a complete local file to ``target`` so that only a whole image is ever visible there."""
    if target.protocol in _LOCAL_PROTOCOLS:
        final = target.path
        folder = os.path.dirname(final) or "."
        os.makedirs(folder, exist_ok=True)
        partial = os.path.join(folder, f".{os.path.basename(final)}.{uuid.uuid4().hex}.part")
        try:
            with open(local, "rb") as source, open(partial, "wb") as sink:
                shutil.copyfileobj(source, sink, CHUNK_SIZE)
                sink.flush()
                os.fsync(sink.fileno())  # the bytes are on disk before the name points at them
            os.replace(partial, final)  # atomic on POSIX within one filesystem
            fsync_folder(folder)  # and the rename survives a crash
        except BaseException:
            if os.path.exists(partial):
                os.unlink(partial)
            raise
        return
    # Object stores publish an object only when its upload completes; a failed upload is removed in case
    # the store made a partial one visible.
    with contextlib.suppress(Exception):  # buckets have no folders to make
        target.parent.mkdir(parents=True, exist_ok=True)
    existed = _exists(target)
    try:
        with open(local, "rb") as source, target.open("wb") as sink:
            shutil.copyfileobj(source, sink, CHUNK_SIZE)
    except BaseException:
        if not existed:  # never remove what an earlier try stored whole
            with contextlib.suppress(Exception):
                if target.exists():
                    target.unlink()
        raise


def _exists(target: ObjectStoragePath) -> bool:
    try:
        return bool(target.exists())
    except Exception:
        return False


# --- Until an image is stored ----------------------------------------------------------------------------

#: Where the bytes of an image a model answered with (FLUX, SDXL) wait until they are stored at ``output_path``:
#: unlike a URL they cannot be fetched again, so a failed store, or a worker that dies before it stores, must not
#: lose an image that was paid for. A retry on the same machine stores them from here.
KEPT_FOLDER = os.path.join(tempfile.gettempdir(), "airflow-imagen-kept")


def keep_bytes(data: bytes, name: str) -> str | None:
    """
    Write ``data`` to :data:`KEPT_FOLDER`, whole or not at all.

    The file is named ``name`` (an id the provider made, never a templated value) and its extension.

    :return: the path, or ``None`` when the disk refused (storing is then tried anyway).
    """
    try:
        os.makedirs(KEPT_FOLDER, mode=0o700, exist_ok=True)
        if os.stat(KEPT_FOLDER).st_uid != os.getuid():  # a shared /tmp: never write into another user's folder
            return None
        path = os.path.join(KEPT_FOLDER, name + EXTENSIONS.get(sniff_image_type(data) or "", ".img"))
        partial = f"{path}.{uuid.uuid4().hex}.part"
        with open(partial, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
        return path
    except OSError:
        return None


def _kept_file(path: object) -> str | None:
    """``path`` if it names a file in :data:`KEPT_FOLDER` (it comes from a durable record: never trust it further)."""
    if isinstance(path, str) and os.path.normpath(path) == path and os.path.dirname(path) == KEPT_FOLDER:
        return path
    return None


def read_kept(path: object) -> bytes | None:
    """Return the bytes kept at ``path`` (a path :func:`keep_bytes` returned, from a durable record), if still there."""
    path = _kept_file(path)
    if path is None:
        return None
    try:
        with open(path, "rb") as kept:
            return kept.read()
    except OSError:
        return None


def discard_kept(path: object) -> None:
    """Remove the kept bytes of an image now stored: they are no longer needed."""
    path = _kept_file(path)
    if path is not None:
        with contextlib.suppress(OSError):
            os.unlink(path)


def exists_at(uri: str) -> bool:
    """Whether an earlier try's stored copy is still there (someone may have removed it since)."""
    from airflow.sdk import ObjectStoragePath

    try:
        return _exists(ObjectStoragePath(uri))
    except Exception:
        return False


def storage_failure(
    err: Exception, image: GeneratedImage, output_path: object, kept: str | None = None
) -> CloudflareWorkersAIError:
    """Turn a failed write into a typed error that says what was kept: the image's URL, or where its bytes wait."""
    _metrics.failure(err, image.model, None if isinstance(err, CloudflareWorkersAIError) else "storage")
    if isinstance(err, CloudflareWorkersAIError):
        return err
    if image.url:
        what = f"the image is still at {image.url}"
    elif kept:
        what = f"the image bytes are kept at {kept} on {socket.gethostname()}, and a retry there stores them"
    else:
        what = "the image bytes were not kept"
    return StorageError(f"storing the image at {output_path!s} failed ({type(err).__name__}: {err}); {what}")
