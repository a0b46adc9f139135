"""
Where the gallery may read: the storage prefixes an admin lists in ``[imagen] gallery_roots``.

An XCom can be written by any task of the DAG and through the REST API, so the ``stored_uri`` it names is
never trusted as a place to read: the api-server reads only under a root the admin chose
(``AIRFLOW__IMAGEN__GALLERY_ROOTS="s3://aws_default@team-a-images/, /data/images/"``). Empty or unset, the
gallery reads nothing.

A root is a folder, never a string prefix: ``/data/images`` does not admit ``/data/images-other/x.png``,
nor ``s3://aws_default@bucket/team`` the key ``team-b/x.png``. An object-store root names its scheme,
connection id and bucket, and a URI must name the same three (another connection would read with other
credentials, another bucket is another tenant's). Local paths are compared lexically for the page's cards
and again after resolving symlinks when read, so a link inside a root that points outside it is refused.
"""

from __future__ import annotations

import logging
import os
import posixpath
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

#: Object stores a worker can write with ``output_path``; web (SSRF), ftp, sftp and any other scheme are refused.
STORAGE_SCHEMES = frozenset({"file", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "wasb", "wasbs"})
CONFIG_SECTION = "imagen"
CONFIG_OPTION = "gallery_roots"
ENV_VAR = "AIRFLOW__IMAGEN__GALLERY_ROOTS"
#: What a card says about a stored URI outside every root (and what the page says when there is no root).
NOT_UNDER_ROOTS = "not under [imagen] gallery_roots"


@dataclass(frozen=True)
class LocalRoot:
    """
    A folder of the api-server's file system, as the admin wrote it (normalised, absolute).

    :param folder: the absolute, normalised folder.
    """

    folder: str

    def admits(self, path: str) -> bool:
        """
        Whether a normalised absolute path is this folder or inside it.

        :param path: the path, already normalised.
        """
        return _inside(path, self.folder)

    def admits_resolved(self, resolved: str) -> bool:
        """
        Whether a path whose symlinks are resolved lies under this folder, its own symlinks resolved too.

        :param resolved: the ``os.path.realpath`` of the path to read.
        """
        return _inside(resolved, os.path.realpath(self.folder))


@dataclass(frozen=True)
class ObjectRoot:
    """
    A key prefix in one bucket, read with one Airflow connection.

    :param scheme: the object store's scheme, lower case (``s3``, ``gs``, ...).
    :param conn_id: the Airflow connection id in the URI (``None`` when it names none).
    :param bucket: the bucket (or container).
    :param prefix: the key prefix: empty (the whole bucket) or a folder ending in ``/``.
    """

    scheme: str
    conn_id: str | None
    bucket: str
    prefix: str

    def admits(self, uri: ObjectURI) -> bool:
        """
        Whether an object URI names the same store and bucket, under this prefix.

        :param uri: the parsed object URI.
        """
        return (
            uri.scheme == self.scheme
            and uri.conn_id == self.conn_id
            and uri.bucket == self.bucket
            and uri.key.startswith(self.prefix)
        )


@dataclass(frozen=True)
class ObjectURI:
    """An object-store URI split the way ``ObjectStoragePath`` reads it; only built by :func:`parse_object`."""

    scheme: str
    conn_id: str | None
    bucket: str
    key: str


Root = LocalRoot | ObjectRoot


def _inside(path: str, folder: str) -> bool:
    folder = folder.rstrip("/")
    return path == folder or path.startswith(folder + "/") or folder == ""


def parse_object(uri: str) -> ObjectURI:
    """
    Split an object-store URI into scheme, connection id, bucket and key, refusing anything ambiguous.

    What is refused could be read differently by the store than it is compared here: ``.`` or ``..``
    segments, empty segments, a query or fragment, a port, a password in the connection part.

    :param uri: ``scheme://[conn_id@]bucket/key``.
    :raises ValueError: naming what is wrong with it.
    """
    parts = urlsplit(uri)
    if parts.query or parts.fragment or "?" in uri or "#" in uri:
        raise ValueError("an object URI with a query or fragment")
    conn_id, has_conn, bucket = parts.netloc.rpartition("@")
    if ":" in bucket or ":" in conn_id or "@" in conn_id:
        raise ValueError("an object URI with a port or password")
    if not bucket:
        raise ValueError("an object URI without a bucket")
    key = parts.path.removeprefix("/")
    segments = key.split("/")
    if any(segment in {"", ".", ".."} for segment in segments[:-1]) or segments[-1] in {".", ".."}:
        raise ValueError("an object key with empty, '.' or '..' segments")
    return ObjectURI(parts.scheme.lower(), conn_id if has_conn and conn_id else None, bucket, key)


def parse_root(text: str) -> Root:
    """
    One entry of ``[imagen] gallery_roots``: an absolute local folder, ``file://`` URI, or object-store prefix.

    :param text: the entry, stripped.
    :raises ValueError: for a relative path, a web URL, or an object URI :func:`parse_object` refuses.
    """
    scheme = urlsplit(text).scheme.lower()
    if scheme == "file":
        parts = urlsplit(text)
        if parts.netloc:
            raise ValueError("a file:// URI with a host")
        text = parts.path
        scheme = ""
    if not scheme:
        if not text.startswith("/"):
            raise ValueError("a relative path")
        return LocalRoot(posixpath.normpath(text))
    if scheme not in STORAGE_SCHEMES:
        raise ValueError(f"the gallery does not read {scheme!r} URIs")
    parsed = parse_object(text)
    prefix = parsed.key if not parsed.key or parsed.key.endswith("/") else parsed.key + "/"
    return ObjectRoot(parsed.scheme, parsed.conn_id, parsed.bucket, prefix)


@lru_cache(maxsize=8)
def _parse_roots(raw: str) -> tuple[Root, ...]:
    """Parse the option once per distinct value, and warn once about each entry that is ignored."""
    roots: list[Root] = []
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        try:
            roots.append(parse_root(entry))
        except ValueError as err:
            log.warning("[%s] %s: ignoring %r: %s", CONFIG_SECTION, CONFIG_OPTION, entry, err)
    return tuple(roots)


def gallery_roots() -> tuple[Root, ...]:
    """Return the roots ``[imagen] gallery_roots`` lists now (read on each call: a changed config applies)."""
    from airflow.configuration import conf

    return _parse_roots(conf.get(CONFIG_SECTION, CONFIG_OPTION, fallback="") or "")
