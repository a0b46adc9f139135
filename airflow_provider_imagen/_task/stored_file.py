"""
One image at a file ``output_path``: reused when it was made from the same inputs, never silently overwritten.

A dataset's rule (:mod:`~airflow_provider_imagen._task.keyed`) for one file. Next to ``<key>.<ext>`` (``<key>`` is the
file's name without an image extension) the provider writes a sidecar ``<key>.<marker>.<model>.<width>x<height>.json``
whose marker digests the inputs that made the image (model chain, prompt, aspect ratio, person generation, model
inputs, the gateway options that change the answer: the digest a dataset uses) with the file's name and size. So a
file stored by the single-image operator and a dataset's item in the same folder vouch for each other, and one
listing (filtered by the key's prefix where the store can) tells what the file is:

- made from the same inputs: reused, no request (unless ``regenerate``);
- made by the provider from other inputs: generated again and replaced atomically, logged;
- a file with no record of what made it (someone put it there, or changed it since): refused before any request,
  unless ``regenerate``;
- nothing there: generated.

Order of writes: the file's old sidecars go, the image is stored (a rename, or one upload), its sidecar is written. A
crash between the image and its sidecar does not pay twice nor refuse the retry's own file: the try's durable records
(:mod:`~airflow_provider_imagen._task.durable`) say that this request paid for the image and stored it there.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import posixpath
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_imagen import _metrics
from airflow_provider_imagen._task.keyed import _SIDECAR, IMAGE_EXTENSIONS, Made, image_size, marker
from airflow_provider_imagen.exceptions import InvalidInputError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from airflow.sdk import Context, ObjectStoragePath

    from airflow_provider_imagen._task.job import ImageJob, Item, Outcome

#: How much of a stored object is read for its dimensions: a PNG or WebP header, a JPEG's first frame marker.
HEADER_BYTES = 64 * 1024
#: What ``status`` a single image's XCom summary says, as a dataset's manifest does.
GENERATED, REUSED, REPLACED = "generated", "reused", "replaced"


def file_key(name: str) -> str:
    """Return the key of the file ``name``: its name without an image extension (``SKU-1.png`` -> ``SKU-1``)."""
    stem, ext = os.path.splitext(name)
    return stem if stem and ext in IMAGE_EXTENSIONS else name


@dataclass
class StoredFile:
    """
    What one listing shows at a file ``output_path``: the file's size (``None``: no file) and its key's sidecars.

    :param target: the file.
    :param chain: the model and its fallbacks, in order (a sidecar names the model by its place here).
    :param inputs: the digest of the inputs the task makes its image from.
    """

    target: ObjectStoragePath
    chain: tuple[str, ...]
    inputs: str = ""
    size: int | None = None
    sidecars: list[str] = field(default_factory=list)
    #: What becomes of the file: ``generated`` (none was there), ``replaced`` or ``reused``.
    status: str = GENERATED
    _read: dict[str, dict[str, Any] | None] | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        """Return the file's key, the first part of its sidecars' names."""
        return file_key(self.target.name)

    @classmethod
    def look(cls, target: ObjectStoragePath, chain: tuple[str, ...]) -> StoredFile:
        """List what is at ``target`` and its sidecars, once."""
        found = cls(target, chain)
        key = found.key
        for name, size in _listing(target, key):
            if name == target.name:
                found.size, found.status = size, REPLACED
            elif (parts := _SIDECAR.fullmatch(name)) is not None and parts["key"] == key:
                found.sidecars.append(name)
        return found

    def made(self) -> Made | None:
        """Return the file if a sidecar vouches that it was made from this task's inputs."""
        if self.size is None:
            return None
        for name in self.sidecars:
            parts = _SIDECAR.fullmatch(name)
            assert parts is not None
            numbers = [int(parts[part]) for part in ("model", "width", "height")]
            if marker(self.inputs, self.target.name, self.size, *numbers) == parts["marker"]:
                return Made(str(self.target), *numbers)
        return None

    def decide(self, job: ImageJob, item: Item, regenerate: bool) -> Outcome | None:
        """
        Apply the rule before any request: the stored image to reuse, or ``None`` to generate one.

        :param regenerate: generate a new image whatever is stored.
        :raises InvalidInputError: naming the path, when a file with no record of what made it is there.
        """
        from airflow_provider_imagen._task.job import Outcome

        if self.size is None:
            return None
        made = None if regenerate else self.made()
        if made is not None:
            image = made.as_image(self.chain, item.prompt, job.aspect_ratio, job.person_generation)
            self.status = REUSED
            _metrics.reused(image.model, "stored_file")
            job.log.info(
                "Reused %s: it was made from the same inputs (model, prompt, aspect ratio, person generation, model "
                "inputs), so no request was sent; regenerate=True makes a new one",
                self.target,
            )
            return Outcome(image, str(self.target), reused=True)
        # The durable records say this request already paid for an image to store here: its own file, or one that
        # an earlier try of it was about to replace.
        ours = job.ledger.get(item.fingerprint, item.occurrence) is not None
        if regenerate:
            job.log.info("Replacing %s with a new image: regenerate=True", self.target)
        if regenerate or ours:
            return None
        if any(record is not None for record in self._vouching()):
            job.log.info("Replacing %s: it was made from other inputs", self.target)
            return None
        raise InvalidInputError(
            f"Invalid output_path {self.target}: a file is already there, and nothing records that this provider "
            "made it (no sidecar of its matches the file's name and size: someone put it there, or changed it "
            "since), so it is not overwritten. Set regenerate=True to replace it with a new image, or choose "
            "another output_path"
        )

    def forget(self) -> None:
        """Remove the sidecars that speak for the file: called just before a new image is stored there."""
        records = self._records()
        gone = {name for name, record in records.items() if record is None or record.get("image") == self.target.name}
        for name in gone:
            with contextlib.suppress(FileNotFoundError):
                (self.target.parent / name).unlink()
        self.sidecars = [name for name in records if name not in gone]

    def seal(self, outcome: Outcome) -> Outcome:
        """Write the sidecar of the image just stored (or reused from the try's records) at the file."""
        image = outcome.image
        if outcome.stored is None or image is None or outcome.stored != str(self.target):
            return outcome
        size = int(self.target.stat().st_size)
        width, height = _dimensions(self.target) or (image.width or 0, image.height or 0)
        model = self.chain.index(image.model) if image.model in self.chain else 0
        name = (
            f"{self.key}.{marker(self.inputs, self.target.name, size, model, width, height)}"
            f".{model}.{width}x{height}.json"
        )
        record = {"key": self.key, "image": self.target.name, "bytes": size, "prompt": image.prompt}
        record |= {"inputs": self.inputs}
        record |= image.model_dump(mode="json", include={"model", "aspect_ratio", "person_generation"})
        _write(self.target.parent / name, json.dumps(record))
        self.size = size
        self.sidecars = [s for s in self.sidecars if s != name]
        self.forget()  # any left from before: they no longer speak for the file
        self.sidecars.append(name)
        return outcome

    def _records(self) -> dict[str, dict[str, Any] | None]:
        """Read the sidecars once: ``None`` for one that is not a JSON object (half-written, or not ours)."""
        if self._read is not None and list(self._read) == self.sidecars:
            return self._read
        records: dict[str, dict[str, Any] | None] = {}
        for name in self.sidecars:
            try:
                record = json.loads((self.target.parent / name).read_text())
            except FileNotFoundError:
                continue
            except (ValueError, UnicodeDecodeError):
                record = None
            records[name] = record if isinstance(record, dict) else None
        self._read = records
        return records

    def _vouching(self) -> Iterable[dict[str, Any] | None]:
        """Yield the records of sidecars that vouch for the file as it is, whatever inputs made it."""
        for name, record in self._records().items():
            parts = _SIDECAR.fullmatch(name)
            if record is None or parts is None or self.size is None or not isinstance(record.get("inputs"), str):
                continue
            numbers = [int(parts[part]) for part in ("model", "width", "height")]
            if marker(record["inputs"], self.target.name, self.size, *numbers) == parts["marker"]:
                yield record


def file_job(operator: Any, context: Context) -> tuple[ImageJob, Item, StoredFile | None]:
    """
    Set up one try of a single-image ``operator``: its job, its one item, and what is at a file ``output_path``.

    The stored file (``None`` without ``output_path`` or for a folder) is listed once; its old sidecars are removed
    before the job stores a new image there.
    """
    from airflow_provider_imagen._cloudflare.rules import model_chain
    from airflow_provider_imagen._task.job import job_for
    from airflow_provider_imagen._task.storage import resolve_output_path

    stored = None
    if operator.output_path is not None:
        target, is_folder = resolve_output_path(operator.output_path)
        if not is_folder:
            stored = StoredFile.look(target, model_chain(operator.model, operator.fallback_models))
    job = job_for(operator, context, before_store=stored.forget if stored is not None else None)
    (item,) = job.items([operator.prompt])
    if stored is not None:
        # An image's durable fingerprint digests the inputs a dataset's sidecars do, with the same function.
        stored.inputs = item.fingerprint
    return job, item, stored


def _listing(target: ObjectStoragePath, key: str) -> Iterable[tuple[str, int]]:
    """
    Yield ``(name, size)`` of the files beside ``target`` whose name starts with ``key``: one listing.

    Object stores that filter by prefix (s3fs, gcsfs) list only those, not a folder of 100,000 images.
    """
    fs, parent = target.fs, posixpath.dirname(target.path)
    try:
        if "prefix" in inspect.signature(fs.find).parameters:
            entries: Iterable[dict[str, Any]] = fs.find(parent, prefix=key, detail=True).values()
        else:
            entries = fs.ls(parent, detail=True, refresh=True)  # never a cached listing
    except FileNotFoundError:
        return
    for entry in entries:
        path = str(entry["name"]).rstrip("/")
        name = posixpath.basename(path)
        # A nested path (a prefix listing is flat) or a partial write (``.<name>.<id>.part``) is not the file's.
        if entry.get("type") == "directory" or posixpath.dirname(path) != parent or not name.startswith(key):
            continue
        yield name, int(entry.get("size") or 0)


def _dimensions(target: ObjectStoragePath) -> tuple[int, int] | None:
    """Read the stored image's width and height from its header (a ranged read of an object), or ``None``."""
    if target.protocol in ("", "file", "local"):
        return image_size(target.path)
    head = target.fs.cat_file(target.path, start=0, end=HEADER_BYTES)
    with tempfile.NamedTemporaryFile(suffix=".head") as spool:
        spool.write(head)
        spool.flush()
        return image_size(spool.name)


def _write(path: ObjectStoragePath, text: str) -> None:
    """Write a sidecar whole or not at all (a rename, or one upload)."""
    from airflow_provider_imagen._task.storage import _publish

    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".json", delete=False) as spool:
        spool.write(text)
    try:
        _publish(spool.name, path)
    finally:
        os.unlink(spool.name)
