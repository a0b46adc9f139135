"""
Run one try of an Imagen operator.

Reuse what earlier tries of the same request paid for (see :mod:`~airflow_provider_imagen._task.durable`), generate only
what is missing, store it, and keep a record of each image the moment it exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_imagen import _metrics
from airflow_provider_imagen._cloudflare.batch import as_item_error, in_flight, run_each
from airflow_provider_imagen._cloudflare.fallback import with_earlier
from airflow_provider_imagen._cloudflare.transport import AIOHTTP_WANTED
from airflow_provider_imagen._task.storage import discard_kept, exists_at, keep_bytes, read_kept, storage_failure
from airflow_provider_imagen.exceptions import CloudflareWorkersAIError, ImageDownloadError, SpendLimitError
from airflow_provider_imagen.models import GatewayOptions, GeneratedImage, SkippedModel

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from airflow.sdk import Context

    from airflow_provider_imagen._task.durable import Ledger
    from airflow_provider_imagen.hooks import CloudflareWorkersAIHook
    from airflow_provider_imagen.operators.base import ImagenBaseOperator

#: What an expired image URL answers: the one case where an image already paid for is generated again.
EXPIRED_STATUSES = frozenset({403, 404, 410})
#: How long AI Gateway keeps an answer under a durable cache key: longer than a few retry delays, so the
#: request a killed worker left behind is answered from the cache when the next try sends it again.
DURABLE_CACHE_TTL = 3600


@dataclass(frozen=True)
class Item:
    """One image to obtain: a prompt, its place in the batch, and what identifies it across tries."""

    index: int
    prompt: str
    fingerprint: str
    occurrence: int  # which of several equal prompts of one batch


@dataclass
class Outcome:
    """What a try obtained for one item: an image (reused or generated) and where it is stored, or an error."""

    image: GeneratedImage | None = None
    stored: str | None = None
    reused: bool = False
    error: CloudflareWorkersAIError | None = None


class ImageJob:
    """
    The images of one try, the ledger of what earlier tries paid for, and this try's accounting.

    :param ledger: the records of this request (one that keeps nothing when ``durable`` is off).
    :param model: the model id.
    :param fallback_models: the models tried when the one before is unavailable
        (:mod:`~airflow_provider_imagen._cloudflare.fallback`).
    :param aspect_ratio: shared by every image.
    :param person_generation: shared by every image.
    :param gateway_options: the user's AI Gateway options.
    :param output_path: where images are stored, or ``None``.
    :param store: stores one image (the item's index, or ``None`` for a single image) and returns its URI.
    :param log: the operator's logger.
    :param max_images: the most images all tries of this request may generate, or ``None``.
    :param model_inputs: the model's own inputs (:mod:`~airflow_provider_imagen._cloudflare.catalog_inputs`).
    :param prices: the connection's price of one image of each model, over the catalog's defaults.
    :param max_cost_usd: the most all tries of this request may spend, in estimated US dollars, or ``None``.
    """

    def __init__(
        self,
        ledger: Ledger,
        *,
        model: str,
        aspect_ratio: str | None,
        person_generation: str | None,
        gateway_options: GatewayOptions | None,
        output_path: object,
        store: Callable[[GeneratedImage, int | None], str | None],
        log: Any,
        max_images: int | None = None,
        fallback_models: tuple[str, ...] = (),
        model_inputs: Mapping[str, Any] | None = None,
        prices: Mapping[str, float] | None = None,
        max_cost_usd: float | None = None,
    ) -> None:
        from airflow_provider_imagen._task.spend import Spend

        self.ledger = ledger
        self.spend = Spend(ledger, prices, (model, *fallback_models), max_cost_usd)
        self.model_inputs = model_inputs
        self.model = model
        self.fallback_models = fallback_models
        self.aspect_ratio = aspect_ratio
        self.person_generation = person_generation
        self.gateway_options = gateway_options
        self.output_path = None if output_path is None else str(output_path)
        self._store = store
        self.log = log
        self.max_images = max_images
        self.generated = 0
        self.reused = 0
        self._in_flight = 0
        #: Set in a batch's event loop: at most this many generations at once, however many items are in flight
        #: (the others download and store what was generated, without holding a generation's place).
        self.generations: asyncio.Semaphore | None = None
        self._lock = threading.Lock()

    def items(self, prompts: Sequence[str]) -> list[Item]:
        from airflow_provider_imagen._task.durable import fingerprint

        seen: dict[str, int] = {}
        items = []
        inputs = (self.aspect_ratio, self.person_generation, self.gateway_options, self.fallback_models)
        for index, prompt in enumerate(prompts):
            digest = fingerprint(self.model, prompt, *inputs, model_inputs=self.model_inputs)
            items.append(Item(index, prompt, digest, seen.get(digest, 0)))
            seen[digest] = seen.get(digest, 0) + 1
        return items

    # --- Reuse ------------------------------------------------------------------------------------------

    def reuse(self, item: Item, single: bool = False) -> tuple[Outcome | None, int]:
        """
        Reuse what an earlier try left for ``item``, storing it at ``output_path`` if it is not yet.

        :return: an :class:`Outcome`, or ``None`` and the number of regenerations so far when ``item`` must be
            generated (again).

        :raises CloudflareWorkersAIError: when storing the reused image fails for another reason than expiry.
        """
        record = self.ledger.get(item.fingerprint, item.occurrence)
        if record is None:
            return None, 0
        regenerations = int(record.get("regenerations") or 0)
        if record.get("image") is None:  # its URL expired and the regeneration did not complete
            return None, regenerations
        image = GeneratedImage.model_validate(record["image"])
        stored = record.get("stored_uri")
        in_place = bool(stored) and record.get("output_path") == self.output_path and exists_at(str(stored))
        if self.output_path is not None and not in_place:
            if image.url is None:  # bytes: stored from where an earlier try on this machine kept them, if it did
                data = read_kept(record.get("kept"))
                if data is None:
                    return None, regenerations
                image = image.model_copy(update={"data": data})
            try:
                stored = self._store(image, None if single else item.index)
            except ImageDownloadError as err:
                if err.status_code not in EXPIRED_STATUSES:
                    raise storage_failure(err, image, self.output_path) from err
                self.log.warning(
                    "The image of prompt %r that try %s generated has expired (HTTP %s from its URL): "
                    "generating it again",
                    item.prompt[:80],
                    record.get("try"),
                    err.status_code,
                )
                self.ledger.put(item.fingerprint, item.occurrence, image=None, regenerations=regenerations + 1)
                return None, regenerations + 1
            except Exception as err:
                raise storage_failure(err, image, self.output_path, record.get("kept")) from err
            self._record_stored(item, image, stored, regenerations, record.get("kept"))
        elif self.output_path is None:
            stored = None
        with self._lock:
            self.reused += 1
        _metrics.reused(image.model, "stored" if in_place else "durable")
        return Outcome(image, stored, reused=True), regenerations

    # --- Generation -------------------------------------------------------------------------------------

    def options_for(self, item: Item, regenerations: int, as_dict: bool = False) -> Any:
        """
        Return the gateway options of ``item``'s request.

        They are the user's, plus a cache key that is the same in every try of this request (see
        :meth:`~airflow_provider_imagen._task.durable.Request.cache_key`), unless durable is off or the user chose
        their own caching.

        :param as_dict: a plain dict (or ``None``), for a trigger's serialized kwargs.
        """
        request = self.ledger.request
        options = self.gateway_options
        if request is not None and (options is None or (options.cache_key is None and not options.skip_cache)):
            extra: dict[str, Any] = {"cache_key": request.cache_key(item.fingerprint, item.occurrence, regenerations)}
            if options is None or options.cache_ttl is None:
                extra["cache_ttl"] = DURABLE_CACHE_TTL
            options = (options or GatewayOptions()).model_copy(update=extra)
        if as_dict:
            return options.model_dump(exclude_none=True) if options is not None else None
        return options

    def request_for(self, item: Item, regenerations: int) -> dict[str, Any]:
        """Return the hook's arguments for ``item``'s generation: the same for the sync and async calls."""
        return {
            "prompt": item.prompt,
            "aspect_ratio": self.aspect_ratio,
            "person_generation": self.person_generation,
            "model": self.model,
            "fallback_models": self.fallback_models,
            "gateway_options": self.options_for(item, regenerations),
            "model_inputs": self.model_inputs,
        }

    def check_budget(self, needed: int, *, reserve: bool = False) -> None:
        """
        Fail before generating ``needed`` more images would exceed ``max_images`` or ``max_cost_usd``.

        ``reserve`` holds them (and their cost) for generations about to start (a batch runs several at once).

        :raises SpendLimitError: saying how many images (or dollars) this task instance has generated.
        """
        self.spend.check(needed, reserve=reserve)
        if self.max_images is None:
            return
        with self._lock:
            if self.ledger.billed + self._in_flight + needed <= self.max_images:
                self._in_flight += needed if reserve else 0
                return
        if reserve:
            self.spend.release()
        raise SpendLimitError(
            f"max_images={self.max_images}: this task instance has generated {self.ledger.billed} image(s) "
            f"in its tries so far and would need {needed} more; not generating them"
        )

    def release(self) -> None:
        """Give back a reserved generation that failed (it was not billed), or whose cost is now recorded."""
        self.spend.release()
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)

    def generated_one(self, item: Item, image: GeneratedImage, regenerations: int) -> str | None:
        """
        Record a fresh image before anything else can fail: a later try reuses it instead of paying again.

        Bytes (no URL to fetch them again) are first kept on this machine until stored; returns where, if they are.
        """
        kept = None
        if image.data is not None and self.output_path is not None:
            request = self.ledger.request
            name = request.cache_key(item.fingerprint, item.occurrence, regenerations) if request else uuid.uuid4().hex
            kept = keep_bytes(image.data, name)
        key, cost = (item.fingerprint, item.occurrence), self.spend.record(image.model)  # a fallback: its own price
        self.ledger.put(*key, image=image, generated=True, regenerations=regenerations, kept=kept, cost_usd=cost)
        with self._lock:
            self.generated += 1
        _metrics.generated(image.model)
        self.release()
        return kept

    def stored_one(
        self, item: Item, image: GeneratedImage, single: bool, regenerations: int, kept: str | None = None
    ) -> str | None:
        """Store a fresh image and record where; a failure says what was kept (its URL, or its bytes' place)."""
        try:
            stored = self._store(image, None if single else item.index)
        except Exception as err:
            raise storage_failure(err, image, self.output_path, kept) from err
        self._record_stored(item, image, stored, regenerations, kept)
        return stored

    def _record_stored(self, item: Item, image: GeneratedImage, stored: str | None, regen: int, kept: object) -> None:
        if stored is not None:
            output_path, key = self.output_path, (item.fingerprint, item.occurrence)
            self.ledger.put(*key, image=image, stored_uri=stored, output_path=output_path, regenerations=regen)
        discard_kept(kept)  # the stored copy is what a later try reuses

    def generate_one(
        self, hook: CloudflareWorkersAIHook, item: Item, regenerations: int, skipped: Sequence[SkippedModel] = ()
    ) -> Outcome:
        """
        Generate, record and store one image, synchronously.

        :param skipped: models a trigger already found unavailable for this item: passed over, as it reported them.
        """
        self.check_budget(1, reserve=True)
        hook.unavailable_models.note(skipped)
        try:
            image = hook.generate_image(**self.request_for(item, regenerations))
        except CloudflareWorkersAIError as err:
            self.release()
            _metrics.failure(err, self.model)
            # The trigger's attempts come first, as it reported them.
            passed = with_earlier(skipped, [SkippedModel.model_validate(s) for s in err.skipped_models])
            raise err.replace(skipped_models=[s.model_dump(mode="json") for s in passed])  # noqa: B904
        except BaseException:
            self.release()
            raise
        if skipped:  # the trigger's attempts, rather than this try's "skipped without a request"
            image = image.model_copy(update={"skipped_models": with_earlier(skipped, image.skipped_models)})
        kept = self.generated_one(item, image, regenerations)
        return Outcome(image, self.stored_one(item, image, True, regenerations, kept))

    def resume(self, item: Item, event_image: dict[str, Any]) -> Outcome:
        """Take a deferred generation's image from its trigger event: record it first, then store it."""
        image = GeneratedImage.model_validate(event_image)
        record = self.ledger.get(item.fingerprint, item.occurrence)
        regenerations = int(record.get("regenerations") or 0) if record else 0
        self.generated_one(item, image, regenerations)
        return Outcome(image, self.stored_one(item, image, True, regenerations))

    def open_loop(self, max_concurrency: int) -> int:
        """
        Set up the running event loop for this try's items; return how many items to keep in flight.

        At most ``max_concurrency`` generations at once (:attr:`generations`), as many more items storing what they
        made (:func:`~airflow_provider_imagen._cloudflare.batch.in_flight`), a thread for each (records and stores
        block: not the default 6 threads on 2 cores), and aiohttp for the loop's API client.
        """
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(min(max_concurrency, 64)))
        AIOHTTP_WANTED.set(True)  # less CPU a request than httpcore
        self.generations = asyncio.Semaphore(max_concurrency)
        return in_flight(max_concurrency)

    async def agenerate_recorded(
        self, hook: CloudflareWorkersAIHook, item: Any, regenerations: int
    ) -> tuple[GeneratedImage, str | None]:
        """
        Reserve one generation within the limits, generate ``item``'s image and record it, in the batch's event loop.

        :return: the image, and where its bytes are kept until stored (:meth:`generated_one`).
        """
        async with self.generations or contextlib.nullcontext():  # held until the image is recorded
            if self.max_images is None and self.spend.max_cost_usd is None:
                self.check_budget(1, reserve=True)  # no limit: nothing to read
            else:  # the limits read the records: off the loop
                await asyncio.to_thread(self.check_budget, 1, reserve=True)
            try:
                image = await hook.agenerate_image(**self.request_for(item, regenerations))
            except BaseException as err:
                self.release()
                _metrics.failure(err, self.model)
                raise
            if self.ledger.backend is None and image.data is None:  # a count only: nothing written
                return image, self.generated_one(item, image, regenerations)
            return image, await asyncio.to_thread(self.generated_one, item, image, regenerations)

    async def agenerate(self, hook: CloudflareWorkersAIHook, item: Any, regenerations: int) -> Outcome:
        """
        Generate, record and store one item of a batch, in the batch's event loop.

        :return: the image and where it is stored, or the image and the error that kept it from being stored.
        """
        image, kept = await self.agenerate_recorded(hook, item, regenerations)
        try:  # fsspec writes and state store calls block: keep them off the loop
            stored = await asyncio.to_thread(self.stored_one, item, image, False, regenerations, kept)
        except Exception as err:
            return Outcome(image, error=as_item_error(err))
        return Outcome(image, stored)

    def run_batch(self, hook: CloudflareWorkersAIHook, items: list[Item], max_concurrency: int) -> list[Outcome]:
        """
        Obtain every item of a batch, at most ``max_concurrency`` at a time.

        Each is reused where an earlier try left it, generated otherwise; each image recorded as soon as it exists, so a
        crash keeps what completed. A prompt's failure is its :class:`Outcome`'s error, never the batch's.
        """
        # A first try has no records to read (each read may be a call to the task state store).
        earlier = self.ledger.earlier_tries
        plans = [self.ledger.get(item.fingerprint, item.occurrence) if earlier else None for item in items]
        # Before any request: what has no record must be generated (an expired URL is found only later).
        self.check_budget(sum(1 for plan in plans if plan is None or plan.get("image") is None))
        hook.settings  # noqa: B018 - read synchronously: see CloudflareWorkersAIHook.generate_images

        async def one(item: Item) -> Outcome:
            # A first try goes straight to the generations' gate, so the items reach it in order (one at a time
            # with max_concurrency=1, as a user expects); a retry looks up each item's record first.
            outcome, regenerations = await asyncio.to_thread(self.reuse, item) if earlier else (None, 0)
            return outcome if outcome is not None else await self.agenerate(hook, item, regenerations)

        async def run_all() -> list[Outcome]:
            places = self.open_loop(max_concurrency)
            try:
                return await run_each(items, one, lambda _, err: Outcome(error=err), places)
            finally:
                await hook.aclose()  # the client belongs to this loop, which ends here

        outcomes = asyncio.run(run_all())
        # max_images is a hard stop: the task fails without retries once every request in flight has ended.
        for outcome in outcomes:
            if isinstance(outcome.error, SpendLimitError):
                raise outcome.error
        return outcomes

    # --- Accounting -------------------------------------------------------------------------------------

    def billing(self) -> dict[str, Any]:
        """Return this try's accounting, for XCom: images generated (billed), reused, all tries' total, and cost."""
        return {
            "generated": self.generated,
            "reused": self.reused,
            "generated_by_all_tries": self.ledger.billed,
            **self.spend.totals(),
            "durable": self.ledger.where,
        }

    def describe(self) -> str:
        """Put the accounting in words: ``Generated 3 images, reused 7 from earlier tries (durable)``."""
        where = f"durable, kept in {self.ledger.where}" if self.ledger.where else "not durable"
        plural = "" if self.generated == 1 else "s"
        return f"Generated {self.generated} image{plural}, reused {self.reused} from earlier tries ({where})"


def job_for(
    operator: ImagenBaseOperator,
    context: Context,
    max_images: int | None = None,
    before_store: Callable[[], None] | None = None,
) -> ImageJob:
    """
    Set up the images of one try of an Imagen ``operator``.

    It knows what earlier tries of the same request left (:mod:`~airflow_provider_imagen._task.durable`), and has a
    store that names each image after its inputs and task instance (:mod:`~airflow_provider_imagen._task.storage`).

    :param before_store: called before each image is stored (:mod:`~airflow_provider_imagen._task.stored_file`).
    """
    from airflow_provider_imagen._cloudflare.rules import model_chain, unset_if_empty
    from airflow_provider_imagen._task.download import api_authority
    from airflow_provider_imagen._task.durable import Ledger
    from airflow_provider_imagen._task.storage import image_store, task_instance_identity

    # The API's host (an image on that same private host is the emulator's): read here, on the task's own thread,
    # as a batch stores from worker threads, where Airflow's in-process task runner cannot look a connection up.
    settings = operator.get_hook().settings
    host = api_authority(settings.base_url) if operator.output_path is not None else ""
    store = image_store(
        output_path=operator.output_path,
        max_bytes=operator.max_image_bytes,
        identity=task_instance_identity(context),
        api_host=host,
        before=before_store,
    )
    return ImageJob(
        Ledger.open(context, retries=operator.retries, durable=operator.durable, log=operator.log),
        model=operator.model,
        fallback_models=model_chain(operator.model, operator.fallback_models)[1:],
        aspect_ratio=unset_if_empty(operator.aspect_ratio),
        person_generation=unset_if_empty(operator.person_generation),
        gateway_options=GatewayOptions.parse(operator.gateway_options),
        output_path=operator.output_path,
        store=store,
        log=operator.log,
        max_images=max_images,
        model_inputs=unset_if_empty(operator.model_inputs),
        prices=settings.prices,
        max_cost_usd=operator.max_cost_usd,
    )
