"""
Reading a stored image for the gallery: only under ``[imagen] gallery_roots``, only if it is an image.

The api-server reads with the same Airflow connections the worker wrote with (``ObjectStoragePath``). What it
will not do: read outside the roots the admin listed (an XCom is written by any task of the DAG, or through
the REST API: without roots, it could name any file or bucket the api-server can reach), fetch a web URL
(that would let an XCom make the api-server call any host), follow an fsspec chain (``zip::s3://...``), or
serve bytes that are not a PNG, JPEG or WebP image (so nothing is ever served as a page on Airflow's origin).

Every request is bounded: at most ``MAX_SOURCE_BYTES`` read, at most ``MAX_SOURCE_PIXELS`` decoded (checked
on the header, before any pixel is), and at most ``MAX_CONCURRENT_DECODES`` thumbnails made at once; a
request that cannot start one within ``DECODE_WAIT_SECONDS`` gets :class:`GalleryBusy` instead of queueing.
"""

from __future__ import annotations

import io
import os
import posixpath
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from airflow_provider_imagen.exceptions import ImagenError
from airflow_provider_imagen.plugins.roots import (
    NOT_UNDER_ROOTS,
    STORAGE_SCHEMES,
    LocalRoot,
    ObjectRoot,
    gallery_roots,
    parse_object,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from airflow.sdk import ObjectStoragePath

__all__ = ["STORAGE_SCHEMES", "GalleryBusy", "NotServable", "open_image", "refusal", "storage_path", "thumbnail"]

THUMBNAIL_PIXELS = 320  # the longer side of a thumbnail
# Imagen's images are ~2 MP and 1-3 MB: these bounds leave room for any model's output, and no more.
MAX_SOURCE_BYTES = 20 * 1024 * 1024
MAX_SOURCE_PIXELS = 16_000_000
# Each decode holds up to ~64 MB (16 MP RGBA) in the api-server's threadpool: a few at a time, not 40.
MAX_CONCURRENT_DECODES = 2
DECODE_WAIT_SECONDS = 5.0
DECODES = threading.BoundedSemaphore(MAX_CONCURRENT_DECODES)
CHUNK = 256 * 1024

_SIGNATURES: tuple[tuple[bytes, str], ...] = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"))


class NotServable(ImagenError):
    """
    The stored object may not or cannot be served.

    The message says why, for the api-server's log only: the browser gets one generic answer, so that it
    cannot tell a missing file from an unreadable, oversized or non-image one.
    """


class GalleryBusy(ImagenError):
    """Every thumbnail decoder stayed busy for ``DECODE_WAIT_SECONDS``: try again later (HTTP 503)."""


def media_type_of(head: bytes) -> str | None:
    """Return PNG, JPEG or WebP from the first bytes, else ``None``: the name and the stored type are not trusted."""
    for signature, media_type in _SIGNATURES:
        if head.startswith(signature):
            return media_type
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def _local_path(uri: str) -> str | None:
    """Return the local path a URI names (a plain absolute path or ``file:///...``), or ``None`` for another store."""
    parts = urlsplit(uri)
    if not parts.scheme:
        return uri
    if parts.scheme.lower() == "file" and not parts.netloc:
        return parts.path
    return None


def refusal(uri: str) -> str | None:
    """
    Return why the gallery will not read a stored URI, decided without any I/O; ``None`` when it will try.

    :param uri: the ``stored_uri`` an XCom names: an absolute local path or ``scheme://...``.
    """
    if "::" in uri or "\x00" in uri:
        return "chained or malformed storage URI"
    scheme = urlsplit(uri).scheme.lower()
    if not scheme and not uri.startswith("/"):
        return "a relative path names no stored image"
    if scheme and scheme not in STORAGE_SCHEMES:
        return f"the gallery does not read {scheme!r} URIs"
    local = _local_path(uri)
    roots = gallery_roots()
    if local is not None:
        if not local.startswith("/"):
            return "chained or malformed storage URI"
        normal = posixpath.normpath(local)
        admitted = any(isinstance(root, LocalRoot) and root.admits(normal) for root in roots)
    else:
        try:
            parsed = parse_object(uri)
        except ValueError:
            return "chained or malformed storage URI"
        admitted = any(isinstance(root, ObjectRoot) and root.admits(parsed) for root in roots)
    return None if admitted else NOT_UNDER_ROOTS


def storage_path(uri: str) -> ObjectStoragePath:
    """
    Return the ``ObjectStoragePath`` to read for a stored URI, if it lies under ``[imagen] gallery_roots``.

    A local path is read at its resolved location, once that is checked to be under a root's own resolved
    folder: a symlink inside a root that points outside it is refused.

    :param uri: the ``stored_uri`` an XCom names.
    :raises NotServable: for web URLs, other schemes, fsspec chains, relative paths and anything outside the roots.
    """
    from airflow.sdk import ObjectStoragePath

    reason = refusal(uri)
    if reason is not None:
        raise NotServable(reason)
    local = _local_path(uri)
    if local is not None:
        resolved = os.path.realpath(local)
        if not any(isinstance(root, LocalRoot) and root.admits_resolved(resolved) for root in gallery_roots()):
            raise NotServable(f"resolves to {resolved!r}, {NOT_UNDER_ROOTS}")
        path = ObjectStoragePath(resolved)
        if path.path != resolved:  # never read anything but what was checked
            raise NotServable("chained or malformed storage URI")
        return path
    parsed = parse_object(uri)
    path = ObjectStoragePath(uri)
    if (path.protocol, path.conn_id, path.path) != (parsed.scheme, parsed.conn_id, f"{parsed.bucket}/{parsed.key}"):
        raise NotServable("chained or malformed storage URI")
    return path


def open_image(uri: str) -> tuple[str, int, Iterator[bytes]]:
    """
    Open a stored image to stream it: its media type (from its bytes), its size, and its chunks.

    The chunks stop at the size ``stat`` gave, so an object that grows meanwhile is never read past it.

    :param uri: the stored URI from XCom.
    :raises NotServable: when the URI is refused, the object is missing, too large, or not an image.
    """
    path = storage_path(uri)
    try:
        size = int(path.stat().st_size)
        if size > MAX_SOURCE_BYTES:
            raise NotServable(f"the stored object is {size:,} bytes, over the gallery's {MAX_SOURCE_BYTES:,}")
        handle = path.open("rb")
    except (OSError, ValueError) as err:  # missing, no permission, unknown bucket, bad connection
        raise NotServable(f"cannot read the stored image ({type(err).__name__}: {err})") from None
    head = handle.read(16)
    media_type = media_type_of(head)
    if media_type is None:
        handle.close()
        raise NotServable("the stored object is not a PNG, JPEG or WebP image")

    def chunks() -> Iterator[bytes]:
        left = size - len(head)
        try:
            yield head
            while left > 0 and (chunk := handle.read(min(CHUNK, left))):
                left -= len(chunk)
                yield chunk
        finally:
            handle.close()

    return media_type, size, chunks()


def read_image(uri: str) -> bytes:
    """
    Return a stored image's bytes, checked to be an image, at most ``MAX_SOURCE_BYTES``.

    :param uri: the stored URI from XCom.
    :raises NotServable: as :func:`open_image`.
    """
    _, _, chunks = open_image(uri)
    return b"".join(chunks)


def make_thumbnail(data: bytes, longest: int = THUMBNAIL_PIXELS) -> bytes:
    """
    Return a JPEG no larger than ``longest`` pixels on its longer side, transparency flattened on white.

    The pixel bound is checked on the size the header declares, before any pixel is decoded. Nothing
    process-global is touched (no ``warnings.catch_warnings``, no change to ``Image.MAX_IMAGE_PIXELS``):
    requests run on many threads at once. Pillow's own guard still refuses a header over twice its limit.

    :param data: PNG, JPEG or WebP bytes.
    :param longest: the longer side's bound, in pixels.
    :raises NotServable: when Pillow cannot decode the image, or it has more than ``MAX_SOURCE_PIXELS``.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=("PNG", "JPEG", "WEBP")) as image:
            width, height = image.size
            if width * height > MAX_SOURCE_PIXELS:
                raise NotServable(f"the image has too many pixels to thumbnail ({width}x{height})")
            image.draft("RGB", (longest, longest))  # JPEG decodes at a smaller scale: much faster
            image.thumbnail((longest, longest))
            rgba = image.convert("RGBA")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # the warning, if a filter raises it
        raise NotServable("the image has too many pixels to thumbnail (Pillow's bound)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise NotServable(f"cannot decode the image ({type(err).__name__})") from None
    flat = Image.new("RGB", rgba.size, "white")
    flat.paste(rgba, mask=rgba.getchannel("A"))
    out = io.BytesIO()
    flat.save(out, "JPEG", quality=82, optimize=True)
    return out.getvalue()


class ThumbnailCache:
    """
    Thumbnails kept in memory, least recently used out first, bounded in bytes.

    Keyed by the stored URI and the object's size and modification time, so an image overwritten at the
    same path gets a new thumbnail.

    :param max_bytes: the bound on the thumbnails kept (about 20 KB each: 32 MiB holds ~1,500).
    """

    def __init__(self, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple[str, str], value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            self._size -= len(old) if old else 0
            self._items[key] = value
            self._size += len(value)
            while self._size > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._size -= len(evicted)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._size = 0


THUMBNAILS = ThumbnailCache()


def thumbnail(uri: str) -> bytes:
    """
    Return the cached thumbnail of a stored image, made on first request.

    :param uri: the stored URI from XCom.
    :raises NotServable: as :func:`open_image` and :func:`make_thumbnail`.
    :raises GalleryBusy: when no decoder became free within ``DECODE_WAIT_SECONDS``.
    """
    path = storage_path(uri)
    try:
        info = path.stat()
    except (OSError, ValueError) as err:
        raise NotServable(f"cannot read the stored image ({type(err).__name__})") from None
    key = (uri, f"{info.st_size}:{info.st_mtime}")
    cached = THUMBNAILS.get(key)
    if cached is None:
        # Reading and decoding both hold the image in memory: both count against the decode bound.
        if not DECODES.acquire(timeout=DECODE_WAIT_SECONDS):
            raise GalleryBusy(f"{MAX_CONCURRENT_DECODES} thumbnails were being made for {DECODE_WAIT_SECONDS} s")
        try:
            cached = make_thumbnail(read_image(uri))
        finally:
            DECODES.release()
        THUMBNAILS.put(key, cached)
    return cached
