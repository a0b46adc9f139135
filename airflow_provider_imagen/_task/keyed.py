"""
A folder of keyed images, ``<key>.<ext>``, how the provider knows which inputs made each one, and the manifest.

Next to each image is a sidecar, ``<key>.<marker>.<model>.<width>x<height>.json``: everything the next run needs is in
its *name*, so one listing of the folder (not one request per item: object stores bill per call) tells which images
can be reused. The marker is a digest of the inputs that made the image (model chain, prompt, aspect ratio, person
generation, the gateway options that change the answer), the image's file name and its size; a sidecar vouches for
an image only when the listing shows that image with that size. Its content is a readable record of the same.

Order of writes, for one item: remove the item's old sidecars; store the image (atomically: a rename, or one
upload); write the new sidecar; remove an old image of another extension. A crash anywhere leaves either no sidecar
(the image is not trusted) or a sidecar that matches the image, never a sidecar over another image. A crash between
the image and its sidecar does not pay twice: the try's durable records
(:mod:`~airflow_provider_imagen._task.durable`) hold the image it paid for and where it was stored, so the retry
reuses it and writes the sidecar; a request in flight when the worker died is answered from the AI Gateway cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_imagen import _metrics
from airflow_provider_imagen._cloudflare.batch import as_item_error
from airflow_provider_imagen._task.job import ImageJob, Outcome

if TYPE_CHECKING:
    from collections.abc import Callable

    import httpx
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_imagen._task.dataset import Row
    from airflow_provider_imagen.hooks import CloudflareWorkersAIHook
    from airflow_provider_imagen.models import GeneratedImage

IMAGE_EXTENSIONS = (".png", ".jpg", ".webp", ".gif")
_SIDECAR = re.compile(r"(?P<key>.+)\.(?P<marker>[0-9a-f]{24})\.(?P<model>\d+)\.(?P<width>\d+)x(?P<height>\d+)\.json")


def image_size(path: str) -> tuple[int, int] | None:
    """Read a stored image's width and height from its header (PNG, JPEG, WebP), or ``None``."""
    with open(path, "rb") as image:
        head = image.read(32)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            if head[12:16] == b"VP8X":
                return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
            if head[12:16] == b"VP8 ":
                return int.from_bytes(head[26:28], "little") & 0x3FFF, int.from_bytes(head[28:30], "little") & 0x3FFF
            if head[12:16] == b"VP8L":
                bits = int.from_bytes(head[21:25], "little")
                return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
            return None
        if head[:2] != b"\xff\xd8":
            return None
        image.seek(2)
        while (marker := image.read(4)) and len(marker) == 4 and marker[0] == 0xFF:
            length = int.from_bytes(marker[2:4], "big")
            if 0xC0 <= marker[1] <= 0xCF and marker[1] not in (0xC4, 0xC8, 0xCC):  # a start of frame
                frame = image.read(5)
                return int.from_bytes(frame[3:5], "big"), int.from_bytes(frame[1:3], "big")
            image.seek(length - 2, 1)
    return None


def marker(inputs: str, image_name: str, size: int, model: int, width: int, height: int) -> str:
    """Digest the inputs of an image together with its file name, size, model and dimensions."""
    payload = json.dumps([inputs, image_name, size, model, width, height])
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


@dataclass
class Stored:
    """What the listing shows for one key: its images (name -> size) and its sidecars' names."""

    images: dict[str, int]
    sidecars: list[str]


@dataclass(frozen=True)
class Made:
    """A stored image that its sidecar vouches for: where, which model of the chain, its dimensions."""

    uri: str
    model: int
    width: int
    height: int


class FolderIndex:
    """
    What a folder of keyed images holds, from one listing.

    :param folder: the folder (``output_path``).
    """

    def __init__(self, folder: ObjectStoragePath) -> None:
        self.folder = folder
        self.keys: dict[str, Stored] = {}
        try:
            entries = folder.fs.ls(folder.path, detail=True, refresh=True)  # never a cached listing
        except FileNotFoundError:
            entries = []
        for entry in entries:
            if entry.get("type") == "directory":
                continue
            name = os.path.basename(str(entry["name"]).rstrip("/"))
            if name.startswith("."):  # a partial write (``.<name>.<id>.part``), never a key
                continue
            if (found := _SIDECAR.fullmatch(name)) is not None:
                self._at(found["key"]).sidecars.append(name)
            elif (ext := os.path.splitext(name)[1]) in IMAGE_EXTENSIONS:
                self._at(name[: -len(ext)]).images[name] = int(entry.get("size") or 0)

    def _at(self, key: str) -> Stored:
        if key not in self.keys:
            self.keys[key] = Stored({}, [])
        return self.keys[key]

    def made(self, row: Row) -> Made | None:
        """Return the stored image of ``row`` if its sidecar says it was made from ``row``'s inputs."""
        stored = self.keys.get(row.key)
        if stored is None:
            return None
        for sidecar in stored.sidecars:
            parts = _SIDECAR.fullmatch(sidecar)
            assert parts is not None
            numbers = [int(parts[name]) for name in ("model", "width", "height")]
            for image, size in stored.images.items():
                if marker(row.inputs, image, size, *numbers) == parts["marker"]:
                    return Made(str(self.folder / image), *numbers)
        return None

    def uris(self, key: str) -> list[str]:
        """Return the URIs of the images the folder holds for ``key``."""
        stored = self.keys.get(key)
        return [str(self.folder / name) for name in stored.images] if stored is not None else []

    def has(self, key: str) -> bool:
        """Tell whether the folder holds an image of ``key`` (whatever made it)."""
        stored = self.keys.get(key)
        return stored is not None and bool(stored.images)


class DatasetJob(ImageJob):
    """
    An :class:`~airflow_provider_imagen._task.job.ImageJob` whose items are keyed rows with their own inputs.

    :param index: the folder's listing.
    :param chain: the model and its fallbacks, in order (a sidecar names the model by its place here).
    :param max_bytes: refuse to store an image larger than this.
    :param api_host: returns the API's host (an image URL may be on it, when it is private).
    :param kwargs: :class:`~airflow_provider_imagen._task.job.ImageJob`'s arguments.
    """

    def __init__(
        self, index: FolderIndex, chain: tuple[str, ...], max_bytes: int, api_host: Callable[[], str], **kwargs: Any
    ) -> None:
        self.index = index
        self.chain = chain
        self.max_bytes = max_bytes
        self._api_host = api_host
        self.rows: dict[int, Row] = {}  # the rows in flight, by item index: what store() names files after
        self.sizes: dict[str, tuple[int, tuple[int, int] | None]] = {}  # bytes, dimensions of what this try stored
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        super().__init__(store=self._store_row, **kwargs)

    def _client(self) -> httpx.Client:
        """
        Return this thread's image client: one per thread, pooled, instead of one per image.

        A new client costs ~35 ms of CPU when its SSL context loads the CA bundle, under the GIL: the clients share
        the process's one context (:func:`~airflow_provider_imagen._cloudflare.transport.shared_ssl_context`) and
        pool their connections. One client per thread,
        because a download adds its URL guard to the client's hooks for its duration.
        """
        import httpx

        from airflow_provider_imagen._task.download import DEFAULT_DOWNLOAD_TIMEOUT, MAX_REDIRECTS
        from airflow_provider_imagen._task.egress import image_transport

        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            with self._lock:
                client = httpx.Client(
                    transport=image_transport(self._api_host()),  # the connection's proxy and CAs
                    follow_redirects=True,
                    max_redirects=MAX_REDIRECTS,
                    timeout=DEFAULT_DOWNLOAD_TIMEOUT,
                )
                self._clients.append(client)
            self._local.client = client
        return client

    def close(self) -> None:
        """Close the image clients."""
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()

    def api_host(self, image: GeneratedImage) -> str | None:
        """Return the API's host for an image at a URL (it may be private, as the emulator's is)."""
        return self._api_host() if image.url is not None else None

    def request_for(self, item: Any, regenerations: int) -> dict[str, Any]:
        """Return the hook's arguments for ``item``: a row's own aspect ratio and person generation."""
        request = super().request_for(item, regenerations)
        request.update(aspect_ratio=item.aspect_ratio, person_generation=item.person_generation)
        return request

    # --- Storing ------------------------------------------------------------------------------------------

    def _store_row(self, image: GeneratedImage, index: int | None) -> str | None:
        from airflow_provider_imagen._task.storage import _publish, store_image

        assert index is not None
        row = self.rows[index]
        self._remove(self.index.keys.get(row.key, Stored({}, [])).sidecars)  # never a sidecar over a new image
        with tempfile.TemporaryDirectory(prefix="imagen-") as scratch:
            # store_image's guarantees (streamed, capped, sniffed, retried, the URL checked), then one atomic move
            local = store_image(
                output_path=scratch + "/",
                prompt="image",
                inputs={"model": image.model},  # counted in the bytes stored per model
                url=image.url,
                data=image.data,
                client=self._client() if image.url is not None else None,
                max_bytes=self.max_bytes,
                api_host=self.api_host(image),
            )
            target = self.index.folder / f"{row.key}{os.path.splitext(local.path)[1]}"
            self.sizes[row.key] = (os.path.getsize(local.path), image_size(local.path))
            _publish(local.path, target)
        return str(target)

    def seal(self, row: Row, outcome: Outcome) -> Made:
        """Write the sidecar of ``row``'s stored image, then remove what its key had before."""
        assert outcome.stored is not None and outcome.image is not None
        from airflow.sdk import ObjectStoragePath

        stored = ObjectStoragePath(outcome.stored)
        size, dimensions = self.sizes.pop(row.key, (None, None))
        if size is None:  # stored by an earlier try (durable records): ask its size once
            size = int(stored.stat().st_size)
        image = outcome.image
        width, height = dimensions or (image.width, image.height)
        numbers = (self.chain.index(image.model) if image.model in self.chain else 0, width, height)
        model, width, height = (int(n or 0) for n in numbers)
        name = f"{row.key}.{marker(row.inputs, stored.name, size, model, width, height)}.{model}.{width}x{height}.json"
        before = self.index.keys.get(row.key, Stored({}, []))
        self._remove([s for s in before.sidecars if s != name])
        record = {"key": row.key, "image": stored.name, "bytes": size, "prompt": row.prompt, "inputs": row.inputs}
        record |= image.model_dump(mode="json", include={"model", "aspect_ratio", "person_generation"})
        (self.index.folder / name).write_text(json.dumps(record))
        self._remove([i for i in before.images if i != stored.name])
        return Made(str(stored), model, width, height)

    def _remove(self, names: list[str]) -> None:
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                (self.index.folder / name).unlink()

    # --- One row --------------------------------------------------------------------------------------------

    async def obtain(self, hook: CloudflareWorkersAIHook, row: Row) -> tuple[str, Outcome, Made | None]:
        """
        Obtain one row's image: reused from the folder, from an earlier try's records, or generated.

        :return: the row's status, the outcome, and the stored image once its sidecar is written.
        """
        if (made := self.index.made(row)) is not None:
            _metrics.reused(self.chain[made.model] if made.model < len(self.chain) else None, "dataset")
            return "reused", Outcome(stored=made.uri, reused=True), made
        outcome, regenerations = await asyncio.to_thread(self.reuse, row)
        # An image this request's earlier try stored (and died before sealing) is its own, not one it replaced.
        ours = outcome is not None and outcome.stored is not None and outcome.stored in self.index.uris(row.key)
        status = "replaced" if self.index.has(row.key) and not ours else "generated"
        if outcome is None:
            outcome = await self.agenerate(hook, row, regenerations)
            if outcome.error is not None:
                return "failed", outcome, None
        try:
            made = await asyncio.to_thread(self.seal, row, outcome)
        except Exception as err:
            _metrics.failure(err, outcome.image.model if outcome.image else self.model, "storage")
            return "failed", Outcome(outcome.image, error=as_item_error(err)), None
        return status, outcome, made


# --- The manifest --------------------------------------------------------------------------------------------


class Manifest:
    """
    The manifest of one task instance: JSONL, one line per item, spooled locally and published whole.

    :param target: where it is published (a file URI or path).
    """

    def __init__(self, target: ObjectStoragePath) -> None:
        self.target = target
        self._spool = tempfile.NamedTemporaryFile(  # noqa: SIM115 - open until publish()
            "w", encoding="utf-8", prefix="imagen-manifest-", suffix=".jsonl", delete=False
        )

    def add(self, row: Row, status: str, **fields: Any) -> None:
        """Append one item's line: its key, status, inputs and what was made, then its extra fields."""
        line: dict[str, Any] = {
            **row.extra,
            "key": row.key,
            "status": status,
            "stored_uri": fields.get("stored_uri"),
            "prompt": row.prompt,
            "model": fields.get("model"),
            "aspect_ratio": fields.get("aspect_ratio") or row.aspect_ratio,
            "person_generation": row.person_generation,
            "width": fields.get("width"),
            "height": fields.get("height"),
            "estimated_cost_usd": fields.get("estimated_cost_usd"),
        }
        if status == "failed":
            line["error"] = fields.get("error")
        self._spool.write(json.dumps(line, default=str) + "\n")

    def publish(self) -> str:
        """Put the manifest at its target in one atomic step (a rename, or one upload); return its URI."""
        from airflow_provider_imagen._task.storage import _publish

        self._spool.close()
        try:
            _publish(self._spool.name, self.target)
        finally:
            os.unlink(self._spool.name)
        return str(self.target)


def default_manifest_name(identity: dict[str, Any]) -> str:
    """Return ``manifests/<dag>/<run>/<task>[.<map index>].jsonl``, each part made safe as a file name."""

    def safe(value: object) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", str(value)).lstrip(".") or "_"

    task = safe(identity["task_id"]) + ("" if identity["map_index"] in (-1, None) else f".{identity['map_index']}")
    return f"manifests/{safe(identity['dag_id'])}/{safe(identity['run_id'])}/{task}.jsonl"
