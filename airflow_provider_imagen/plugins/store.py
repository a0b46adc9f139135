"""
Reading a stored image for the gallery: only where a run's XCom says it is, only if it is an image.

The api-server reads with the same Airflow connections the worker wrote with (``ObjectStoragePath``). What it
will not do: fetch a web URL (that would let an XCom make the api-server call any host), follow an fsspec
chain (``zip::s3://...``), or serve bytes that are not a PNG, JPEG or WebP image (so a path that names a
config file or an HTML page yields nothing, and nothing is ever served as a page on Airflow's origin).
"""

from __future__ import annotations

import io
import threading
import warnings
from collections import OrderedDict
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from airflow_provider_imagen.constants import MAX_IMAGE_BYTES

if TYPE_CHECKING:
    from collections.abc import Iterator

    from airflow.sdk import ObjectStoragePath

#: Object stores a worker can write with ``output_path``; web (SSRF), ftp, sftp and any other scheme are refused.
STORAGE_SCHEMES = frozenset({"file", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "wasb", "wasbs"})
THUMBNAIL_PIXELS = 320  # the longer side of a thumbnail
MAX_SOURCE_PIXELS = 50_000_000  # Imagen's largest images are ~2 MP; this stops a decompression bomb early
CHUNK = 256 * 1024

_SIGNATURES: tuple[tuple[bytes, str], ...] = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"))


class NotServable(Exception):
    """The stored object may not or cannot be served; the message says why, without its contents."""


def media_type_of(head: bytes) -> str | None:
    """PNG, JPEG or WebP from the first bytes, else ``None``: the name and the stored type are not trusted."""
    for signature, media_type in _SIGNATURES:
        if head.startswith(signature):
            return media_type
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def refusal(uri: str) -> str | None:
    """
    Why the gallery will not read a stored URI, decided from the URI alone; ``None`` when it will try.

    :param uri: the ``stored_uri`` the operator pushed: an absolute local path or ``scheme://...``.
    """
    if "::" in uri or "\x00" in uri:
        return "chained or malformed storage URI"
    scheme = urlsplit(uri).scheme.lower()
    if not scheme:
        return None if uri.startswith("/") else "a relative path names no stored image"
    return None if scheme in STORAGE_SCHEMES else f"the gallery does not read {scheme!r} URIs"


def storage_path(uri: str) -> ObjectStoragePath:
    """
    The ``ObjectStoragePath`` of a stored URI from XCom, if it names an object store the gallery reads.

    :param uri: the ``stored_uri`` the operator pushed.
    :raises NotServable: for web URLs, other schemes, fsspec chains and relative paths.
    """
    from airflow.sdk import ObjectStoragePath

    reason = refusal(uri)
    if reason is not None:
        raise NotServable(reason)
    return ObjectStoragePath(uri)


def open_image(uri: str) -> tuple[str, int, Iterator[bytes]]:
    """
    Open a stored image to stream it: its media type (from its bytes), its size, and its chunks.

    :param uri: the stored URI from XCom.
    :raises NotServable: when the URI is refused, the object is missing or too large, or is not an image.
    """
    path = storage_path(uri)
    try:
        size = int(path.stat().st_size)
        handle = path.open("rb")
    except (OSError, ValueError) as err:  # missing, no permission, unknown bucket, bad connection
        raise NotServable(f"cannot read the stored image ({type(err).__name__})") from None
    if size > MAX_IMAGE_BYTES:
        handle.close()
        raise NotServable("the stored object is larger than any image the provider stores")
    head = handle.read(16)
    media_type = media_type_of(head)
    if media_type is None:
        handle.close()
        raise NotServable("the stored object is not a PNG, JPEG or WebP image")

    def chunks() -> Iterator[bytes]:
        try:
            yield head
            while chunk := handle.read(CHUNK):
                yield chunk
        finally:
            handle.close()

    return media_type, size, chunks()


def read_image(uri: str) -> bytes:
    """
    A stored image's bytes, checked to be an image, at most ``MAX_IMAGE_BYTES``.

    :param uri: the stored URI from XCom.
    :raises NotServable: as :func:`open_image`.
    """
    _, _, chunks = open_image(uri)
    data = b"".join(chunks)
    if len(data) > MAX_IMAGE_BYTES:  # grew since stat()
        raise NotServable("the stored object is larger than any image the provider stores")
    return data


def make_thumbnail(data: bytes, longest: int = THUMBNAIL_PIXELS) -> bytes:
    """
    A JPEG no larger than ``longest`` pixels on its longer side, transparency flattened on white.

    :param data: PNG, JPEG or WebP bytes.
    :param longest: the longer side's bound, in pixels.
    :raises NotServable: when Pillow cannot decode the image, or it is implausibly large.
    """
    from PIL import Image, UnidentifiedImageError

    too_many_pixels = NotServable("the image has too many pixels to thumbnail")
    try:
        with warnings.catch_warnings():
            # Pillow only warns about a bomb below twice its limit: refuse it instead of logging it.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.format not in {"PNG", "JPEG", "WEBP"}:
                    raise NotServable("not a PNG, JPEG or WebP image")
                if image.width * image.height > MAX_SOURCE_PIXELS:
                    raise too_many_pixels
                image.draft("RGB", (longest, longest))  # JPEG decodes at a smaller scale: much faster
                image.thumbnail((longest, longest))
                rgba = image.convert("RGBA")
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise too_many_pixels from None
    except (UnidentifiedImageError, OSError) as err:
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
    The cached thumbnail of a stored image, made on first request.

    :param uri: the stored URI from XCom.
    :raises NotServable: as :func:`open_image` and :func:`make_thumbnail`.
    """
    path = storage_path(uri)
    try:
        info = path.stat()
    except (OSError, ValueError) as err:
        raise NotServable(f"cannot read the stored image ({type(err).__name__})") from None
    key = (uri, f"{info.st_size}:{info.st_mtime}")
    cached = THUMBNAILS.get(key)
    if cached is None:
        cached = make_thumbnail(read_image(uri))
        THUMBNAILS.put(key, cached)
    return cached
