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
import io
import json
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_imagen import _metrics
from airflow_provider_imagen._cloudflare.batch import as_item_error
from airflow_provider_imagen._task.download import AsyncImageFetcher
from airflow_provider_imagen._task.image_header import image_size, size_of
from airflow_provider_imagen._task.job import ImageJob, Outcome
from airflow_provider_imagen._task.local_folder import local_path, remove, write_image, write_text
from airflow_provider_imagen._task.manifest import Manifest, default_manifest_name
from airflow_provider_imagen._task.storage import storage_failure
from airflow_provider_imagen.exceptions import ImageDownloadError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import httpx
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_imagen._task.dataset import Row
    from airflow_provider_imagen.hooks import CloudflareWorkersAIHook
    from airflow_provider_imagen.models import GeneratedImage

__all__ = ["DatasetJob", "FolderIndex", "Made", "Manifest", "Stored", "default_manifest_name", "image_size", "marker"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".webp", ".gif")
_SIDECAR = re.compile(r"(?P<key>.+)\.(?P<marker>[0-9a-f]{24})\.(?P<model>\d+)\.(?P<width>\d+)x(?P<height>\d+)\.json")


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

    def as_image(
        self, chain: tuple[str, ...], prompt: str, aspect_ratio: str | None, person_generation: str | None
    ) -> GeneratedImage:
        """Describe the stored image as its sidecar and the inputs that made it say (no URL: it was reused)."""
        from airflow_provider_imagen.models import GeneratedImage

        return GeneratedImage(
            model=chain[self.model] if self.model < len(chain) else chain[0],
            prompt=prompt,
            aspect_ratio=aspect_ratio,
            person_generation=person_generation,
            width=self.width or None,
            height=self.height or None,
            attempts=0,
        )


class FolderIndex:
    """
    What a folder of keyed images holds, from one listing.

    :param folder: the folder (``output_path``).
    :param selected: keep only the keys it selects (a shard's); every key when ``None``.
    """

    def __init__(self, folder: ObjectStoragePath, selected: Callable[[str], bool] | None = None) -> None:
        self.folder = folder
        self.keys: dict[str, Stored] = {}
        path = local_path(folder)
        # A local folder is scanned as a stream, and only the selected keys are kept: a shard's memory is its
        # own rows', not the folder's (100,000 images and their sidecars are 200,000 entries).
        for name, size in _scan(path) if path is not None else _list(folder):
            if name.startswith("."):  # a partial write (``.<name>.<id>.part``), never a key
                continue
            if (found := _SIDECAR.fullmatch(name)) is not None:
                if selected is None or selected(found["key"]):
                    self._at(found["key"]).sidecars.append(name)
            elif (ext := os.path.splitext(name)[1]) in IMAGE_EXTENSIONS:
                key = name[: -len(ext)]
                if selected is None or selected(key):
                    self._at(key).images[name] = size()

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


def _scan(path: str) -> Iterator[tuple[str, Callable[[], int]]]:
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                if not entry.is_dir():
                    yield entry.name, lambda entry=entry: entry.stat().st_size  # type: ignore[misc]
    except FileNotFoundError:
        return


def _list(folder: ObjectStoragePath) -> Iterator[tuple[str, Callable[[], int]]]:
    try:
        entries = folder.fs.ls(folder.path, detail=True, refresh=True)  # never a cached listing
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.get("type") != "directory":
            size = int(entry.get("size") or 0)
            yield os.path.basename(str(entry["name"]).rstrip("/")), lambda size=size: size  # type: ignore[misc]


class DatasetJob(ImageJob):
    """
    An :class:`~airflow_provider_imagen._task.job.ImageJob` whose items are keyed rows with their own inputs.

    :param index: the folder's listing.
    :param chain: the model and its fallbacks, in order (a sidecar names the model by its place here).
    :param max_bytes: refuse to store an image larger than this.
    :param api_host: the API's host, read on the task's thread (an image URL may be on it, when it is private).
    :param kwargs: :class:`~airflow_provider_imagen._task.job.ImageJob`'s arguments.
    """

    def __init__(
        self, index: FolderIndex, chain: tuple[str, ...], max_bytes: int, api_host: str, **kwargs: Any
    ) -> None:
        self.index = index
        self.chain = chain
        self.max_bytes = max_bytes
        self._api_host = api_host
        self.rows: dict[int, Row] = {}  # the rows in flight, by item index: what store() names files after
        self.sizes: dict[str, tuple[int, tuple[int, int] | None]] = {}  # bytes, dimensions of what this try stored
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self.folder = local_path(index.folder)  # a local folder is written with plain file calls
        self._base_uri = str(index.folder).rstrip("/") + "/"
        self._images: AsyncImageFetcher | None = None
        self._images_made = False
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
                    transport=image_transport(self._api_host),  # the connection's proxy and CAs
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

    async def aclose(self) -> None:
        """Close the image fetcher, in the event loop that used it."""
        if self._images is not None:
            await self._images.aclose()
            self._images = None

    def api_host(self, image: GeneratedImage) -> str | None:
        """Return the API's host for an image at a URL (it may be private, as the emulator's is)."""
        return self._api_host if image.url is not None else None

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

    def sidecar(
        self, row: Row, image: GeneratedImage, image_name: str, size: int, dimensions: tuple[int, int] | None
    ) -> tuple[str, str, tuple[int, int, int]]:
        """Return the name and content of the sidecar of ``row``'s image, and its model's place and dimensions."""
        width, height = dimensions or (image.width, image.height)
        numbers = (self.chain.index(image.model) if image.model in self.chain else 0, width, height)
        model, width, height = (int(n or 0) for n in numbers)
        name = f"{row.key}.{marker(row.inputs, image_name, size, model, width, height)}.{model}.{width}x{height}.json"
        record = {"key": row.key, "image": image_name, "bytes": size, "prompt": row.prompt, "inputs": row.inputs}
        record |= image.model_dump(mode="json", include={"model", "aspect_ratio", "person_generation"})
        return name, json.dumps(record), (model, width, height)

    def seal(self, row: Row, outcome: Outcome) -> Made:
        """Write the sidecar of ``row``'s stored image, then remove what its key had before."""
        assert outcome.stored is not None and outcome.image is not None
        from airflow.sdk import ObjectStoragePath

        stored = ObjectStoragePath(outcome.stored)
        size, dimensions = self.sizes.pop(row.key, (None, None))
        if size is None:  # stored by an earlier try (durable records): ask its size once
            size = int(stored.stat().st_size)
        name, content, numbers = self.sidecar(row, outcome.image, stored.name, size, dimensions)
        before = self.index.keys.get(row.key, Stored({}, []))
        self._remove([s for s in before.sidecars if s != name])
        (self.index.folder / name).write_text(content)
        self._remove([i for i in before.images if i != stored.name])
        return Made(str(stored), *numbers)

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
        if not self.ledger.earlier_tries:  # a first try: no records of earlier tries to look up
            outcome, regenerations = None, 0
        else:
            outcome, regenerations = await asyncio.to_thread(self.reuse, row)
        # An image this request's earlier try stored (and died before sealing) is its own, not one it replaced.
        ours = outcome is not None and outcome.stored is not None and outcome.stored in self.index.uris(row.key)
        status = "replaced" if self.index.has(row.key) and not ours else "generated"
        if outcome is None and self.folder is not None and (fetcher := self._fetcher()) is not None:
            return await self._generate_local(hook, row, regenerations, status, fetcher)
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

    # --- The fast path: a local folder, images fetched in the event loop ------------------------------------

    def _fetcher(self) -> AsyncImageFetcher | None:
        if not self._images_made:  # once: None (a proxy applies) is an answer too
            self._images_made = True
            self._images = AsyncImageFetcher.open(self._api_host)
        return self._images

    async def _generate_local(
        self, hook: CloudflareWorkersAIHook, row: Row, regenerations: int, status: str, fetcher: AsyncImageFetcher
    ) -> tuple[str, Outcome, Made | None]:
        """
        Do what :meth:`agenerate`, then :meth:`seal`, do, with one thread hop for the disk instead of four.

        The order holds: the image recorded as generated, stored, recorded as stored, then sealed.
        """
        image, kept = await self.agenerate_recorded(hook, row, regenerations)
        try:
            data, media_type = await self._fetch(image, fetcher)
        except Exception as err:
            return "failed", Outcome(image, error=storage_failure(err, image, self.output_path, kept)), None
        return await asyncio.to_thread(self._put_local, row, image, data, media_type, regenerations, kept, status)

    async def _fetch(self, image: GeneratedImage, fetcher: AsyncImageFetcher) -> tuple[bytes, str]:
        from airflow_provider_imagen._task.storage import DOWNLOAD_ATTEMPTS, checked_bytes

        if image.url is None:
            return image.data or b"", checked_bytes(image.data or b"", self.max_bytes)
        for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
            try:
                return await fetcher.fetch(image.url, self.max_bytes)
            except ImageDownloadError as err:
                if not err.retryable or attempt == DOWNLOAD_ATTEMPTS:
                    raise
                await asyncio.sleep(min(5.0, 0.5 * 2 ** (attempt - 1)))
        raise AssertionError("unreachable")

    def _put_local(
        self,
        row: Row,
        image: GeneratedImage,
        data: bytes,
        media_type: str,
        regenerations: int,
        kept: str | None,
        status: str,
    ) -> tuple[str, Outcome, Made | None]:
        from airflow_provider_imagen._task.storage import EXTENSIONS, storage_failure

        assert self.folder is not None
        before = self.index.keys.get(row.key, Stored({}, []))
        name = row.key + EXTENSIONS.get(media_type, ".img")
        uri = self._base_uri + name
        try:
            remove(self.folder, before.sidecars)  # never a sidecar over a new image
            write_image(self.folder, name, data, replacing=name in before.images)
        except Exception as err:
            return "failed", Outcome(image, error=storage_failure(err, image, self.output_path, kept)), None
        _metrics.stored_bytes(len(data), image.model)
        try:
            self._record_stored(row, image, uri, regenerations, kept)
            sidecar, content, numbers = self.sidecar(row, image, name, len(data), size_of(io.BytesIO(data)))
            write_text(self.folder, sidecar, content)
            remove(self.folder, [i for i in before.images if i != name])
        except Exception as err:
            return "failed", Outcome(image, error=as_item_error(err)), None
        return status, Outcome(image, uri), Made(uri, *numbers)
