"""
Keyed images written to a local folder with plain file calls: the dataset's fast path.

An ``ObjectStoragePath`` costs more CPU per image (made, joined, stat-ed, opened through fsspec) than the rest of a row
does; a local folder needs none of it. The writes are those of :mod:`~airflow_provider_imagen._task.keyed`, in the same
order: a partial file synced, then renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

    from airflow.sdk import ObjectStoragePath

_LOCAL_PROTOCOLS = {"", "file", "local"}


def local_path(folder: ObjectStoragePath) -> str | None:
    """Return the path of ``folder`` when it is on the local filesystem, else ``None``."""
    return str(folder.path) if folder.protocol in _LOCAL_PROTOCOLS else None


def write_image(folder: str, name: str, data: bytes, *, replacing: bool) -> None:
    """
    Put ``data`` at ``folder/name`` whole or not at all: a partial file, synced, renamed into place.

    :param replacing: a file of that name is there: the folder is synced too, so the rename is on disk before the
        sidecar that vouches for the new image is (after a power loss, a new sidecar over the old image of the same
        name and size would vouch for it). A new name needs no sync: a sidecar never vouches for a missing image.
    """
    os.makedirs(folder, exist_ok=True)
    final = os.path.join(folder, name)
    partial = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.part")  # a dot name: never listed as a key
    try:
        with open(partial, "wb") as sink:
            sink.write(data)
            sink.flush()
            os.fsync(sink.fileno())  # the bytes are on disk before the name points at them
        os.replace(partial, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
    if replacing:
        fsync_folder(folder)


def fsync_folder(folder: str) -> None:
    """Make the renames in ``folder`` survive a crash, where the filesystem can."""
    with contextlib.suppress(OSError):  # some filesystems cannot open or sync a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text(folder: str, name: str, text: str) -> None:
    """Write a small file (a sidecar): its name is what counts, its content is for people."""
    with open(os.path.join(folder, name), "w", encoding="utf-8") as sink:
        sink.write(text)


def remove(folder: str, names: Iterable[str]) -> None:
    """Remove ``names`` from ``folder``, those already gone included."""
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(folder, name))
