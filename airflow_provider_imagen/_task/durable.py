"""
What a task instance already paid for, kept across its tries.

Every generation is billed. When a try fails after Cloudflare made an image (the download failed, the worker
died, some prompts of a batch failed), the image's URL, and where it was stored, are kept here under a
fingerprint of the inputs that made it; the next try of the same request reuses them instead of paying again.

Where the records live:

- ``[imagen] durable_cache_path``, when set (on every Airflow version): an ObjectStorage folder, one subfolder
  per DAG, run, task and map index.
- Otherwise, Airflow 3.3+: the task state store (``context["task_state_store"]``), scoped to the task instance.
- Neither: nothing is kept; the log says so once per try.

A retry and a rerun are told apart by the *request*: the first try number of the current series of tries,
``max_tries - retries + 1`` (the number Airflow's own sensors use for the same question). A retry leaves
``max_tries`` as it is; a clear (UI or REST) sets it to ``try_number + retries``, so the request moves on to
the next try number and records of the old request are never reused. The task instance's id is no help: Airflow
3 gives every try a new one, retries and clears alike.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_imagen._task.record_stores import CONFIG_OPTION, CONFIG_SECTION, BestEffort, open_backend

if TYPE_CHECKING:
    from collections.abc import Mapping

    from airflow.sdk import Context

    from airflow_provider_imagen._task.record_stores import Backend
    from airflow_provider_imagen.models import GatewayOptions, GeneratedImage

#: Prefix of every key this module writes to the task state store (and of every file in the fallback folder).
KEY_PREFIX = "imagen_durable"


def fingerprint(
    model: str,
    prompt: str,
    aspect_ratio: str | None,
    person_generation: str | None,
    gateway_options: GatewayOptions | None,
    fallback_models: tuple[str, ...] = (),
    model_inputs: Mapping[str, Any] | None = None,
) -> str:
    """
    Digest every input that changes the image: a re-rendered template or an edited DAG gets a new one.

    Of the gateway options only ``gateway_id`` and ``cache_key`` can change the answer (another gateway, another
    cached answer); TTLs, metadata, timeouts and logging cannot. The fallback models count too (the image may be
    theirs), and so do the model's own inputs (a seed, a step count, a reference image's bytes, by digest); none
    leaves the digest of a request without them as it was.
    """
    options = gateway_options
    payload: dict[str, Any] = {
        "model": model,
        "prompt": prompt.strip(),
        "aspect_ratio": aspect_ratio or None,
        "person_generation": person_generation or None,
        "gateway_id": options.gateway_id if options is not None else None,
        "cache_key": options.cache_key if options is not None else None,
        "fallback_models": list(fallback_models),
    }
    if model_inputs:
        payload["model_inputs"] = {key: _digestible(value) for key, value in model_inputs.items()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def _digestible(value: Any) -> Any:
    """Return ``value`` as JSON can hold it: bytes (a reference image) by their digest."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "sha256:" + hashlib.sha256(bytes(value)).hexdigest()
    if isinstance(value, (list, tuple)):
        return [_digestible(item) for item in value]
    return value


@dataclass(frozen=True)
class Request:
    """
    One request for the images of a task instance: every try up to the next clear.

    :param dag_id: the DAG.
    :param run_id: the DAG run.
    :param task_id: the task.
    :param map_index: the map index (-1 when not mapped).
    :param try_number: this try.
    :param first_try: the first try of this request; a clear moves it on, a retry does not.
    """

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    try_number: int
    first_try: int

    @classmethod
    def of(cls, context: Context, retries: int | None) -> Request | None:
        """Return the request ``context`` runs for; ``None`` outside a real task run (e.g. a mocked ``ti``)."""
        ti = context.get("ti")
        names, numbers = (
            [getattr(ti, n, None) for n in ("dag_id", "run_id", "task_id")],
            [getattr(ti, n, None) for n in ("map_index", "try_number", "max_tries")],
        )
        if not all(isinstance(v, str) for v in names) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in numbers
        ):
            return None
        dag_id, run_id, task_id = (str(v) for v in names)
        map_index, try_number, max_tries = (int(v) for v in numbers)  # type: ignore[arg-type]
        # The first try after the last clear (Airflow's sensors ask the same); never after this try.
        first_try = max(1, min(try_number, max_tries - (retries or 0) + 1))
        return cls(dag_id, run_id, task_id, map_index, try_number, first_try)

    def cache_key(self, image_fingerprint: str, occurrence: int = 0, regeneration: int = 0) -> str:
        """
        Return the AI Gateway cache key of one image of this request: the same in every try.

        Thus the request a killed worker left behind is answered from the gateway's cache (not billed) when the next try
        sends it again; new after a clear, and new for each regeneration of an expired URL.
        """
        name = [self.dag_id, self.run_id, self.task_id, self.map_index, self.first_try]
        digest = hashlib.sha256(json.dumps([*name, image_fingerprint, occurrence, regeneration]).encode())
        return f"airflow-imagen-{digest.hexdigest()[:40]}"


class Ledger:
    """
    The records of one request of a task instance: each image it paid for, and how many it paid for.

    Thread-safe: a batch records each prompt's image as it completes, from worker threads. Each image's record is
    written by the thread that made it; the running count of what was billed is written by one thread at a time,
    the newest count each time, so that a thread whose count a later write already holds returns without writing
    (a 10,000-row dataset's threads would otherwise queue for a write each).

    :param backend: where records live; ``None`` keeps nothing.
    :param request: the request; ``None`` outside a real task run.
    """

    def __init__(self, backend: Backend | None, request: Request | None) -> None:
        self.backend = backend
        self.request = request
        self._lock = threading.Lock()
        self._summary: dict[str, Any] = {"first_try": request.first_try if request else 0, "billed": 0}
        self._loaded = False
        self._changes = 0  # changes made to the summary (under _lock)
        self._saving = threading.Lock()
        self._saved = 0  # changes the backend holds (under _saving)

    @classmethod
    def open(cls, context: Context, *, retries: int | None, durable: bool, log: Any) -> Ledger:
        """Open the ledger of the request ``context`` runs for, or one that keeps nothing when ``durable`` is off."""
        request = Request.of(context, retries)
        if not durable and request is not None:
            # Nothing is kept across tries, but a request of this try keeps one AI Gateway cache key wherever it
            # is sent from: a triggerer that restarts a trigger re-sends it under the same key, not a new one.
            request = dataclasses.replace(request, first_try=request.try_number)
        backend = open_backend(context, request) if durable and request is not None else None
        if backend is not None:
            backend = BestEffort(backend, log)
        elif durable and request is not None:
            # A warning only where it matters: a task that will be retried. Without retries it is plain news.
            say = log.warning if retries else log.info
            say(
                "durable=True but there is nowhere to keep generated images across tries (no task state store "
                "before Airflow 3.3, and [%s] %s is not set): a retry will generate, and pay for, them again",
                CONFIG_SECTION,
                CONFIG_OPTION,
            )
        return cls(backend, request)

    @property
    def where(self) -> str | None:
        """Where records are kept, for the log; ``None`` when nothing is."""
        return self.backend.name if self.backend is not None else None

    def _image_key(self, image_fingerprint: str, occurrence: int) -> str:
        return f"{KEY_PREFIX}_image_{image_fingerprint}_{occurrence}"

    def _load(self) -> dict[str, Any]:
        if not self._loaded and self.backend is not None and self.request is not None:
            saved = self.backend.get(f"{KEY_PREFIX}_ledger")
            # A summary of an earlier request (the task was cleared since) is not this request's: that request
            # ended, so its records can go (nothing else would remove them before Airflow 3.3).
            if isinstance(saved, dict) and saved.get("first_try") == self.request.first_try:
                self._summary = saved
            elif isinstance(saved, dict):
                self.backend.forget_earlier()
        self._loaded = True
        return self._summary

    @property
    def earlier_tries(self) -> bool:
        """
        Tell whether an earlier try of this request may have left records: not on its first try.

        A dataset asks before reading a record a row: each read is a call to the task state store.
        """
        return (
            self.backend is not None and self.request is not None and self.request.try_number > self.request.first_try
        )

    @property
    def billed(self) -> int:
        """Images generated by all tries of this request so far (this try included)."""
        with self._lock:
            return int(self._load().get("billed", 0))

    @property
    def spent(self) -> tuple[float, int]:
        """What all tries of this request generated so far: its estimated US dollars, and the images with no price."""
        with self._lock:
            summary = self._load()
            return float(summary.get("cost_usd", 0.0)), int(summary.get("unpriced", 0))

    def get(self, image_fingerprint: str, occurrence: int = 0) -> dict[str, Any] | None:
        """
        Return the record an earlier try of this request left for this image, or ``None``.

        :param image_fingerprint: :func:`fingerprint` of the image's inputs.
        :param occurrence: which of several equal prompts in one batch (0 for the first).
        """
        if self.backend is None or self.request is None:
            return None
        with self._lock:
            self._load()
        record = self.backend.get(self._image_key(image_fingerprint, occurrence))
        if not isinstance(record, dict) or record.get("first_try") != self.request.first_try:
            return None
        if record.get("fingerprint") != image_fingerprint:
            return None
        return record

    def put(
        self,
        image_fingerprint: str,
        occurrence: int,
        *,
        image: GeneratedImage | None,
        stored_uri: str | None = None,
        output_path: str | None = None,
        generated: bool = False,
        regenerations: int = 0,
        kept: str | None = None,
        cost_usd: float | None = None,
    ) -> None:
        """
        Keep what this try obtained for one image; count it as billed when it was ``generated`` just now.

        :param image: the image (its URL is what a later try reuses); ``None`` after its URL expired.
        :param stored_uri: where it was stored, once it is.
        :param output_path: the ``output_path`` it was stored under: another one needs storing again.
        :param regenerations: how many times an expired URL made it generate again (part of the cache key).
        :param kept: where its bytes wait on this machine until stored (``storage.keep_bytes``), for bytes models.
        :param cost_usd: what a ``generated`` image cost (``None``: its model has no price).
        """
        with self._lock:
            summary = self._load()
            if generated:
                summary["billed"] = int(summary.get("billed", 0)) + 1
                if cost_usd is None:
                    summary["unpriced"] = int(summary.get("unpriced", 0)) + 1
                else:
                    summary["cost_usd"] = float(summary.get("cost_usd", 0.0)) + cost_usd
                self._changes += 1
            change = self._changes
        if self.backend is None or self.request is None:
            return
        key = self._image_key(image_fingerprint, occurrence)
        # Image bytes are never kept here: a stored copy of them, or their copy kept on the machine, is reused.
        if image is None or image.url is not None or stored_uri is not None or kept is not None:
            self._write_image(key, image_fingerprint, image, stored_uri, output_path, regenerations, kept)
        if generated:
            self._save_summary(change)

    def _save_summary(self, change: int) -> None:
        """Return once the backend holds the summary as of ``change``: written now, or by a thread before."""
        assert self.backend is not None
        with self._saving:
            if self._saved >= change:  # a later summary was written while this thread waited
                return
            with self._lock:
                summary, newest = dict(self._summary), self._changes
            self.backend.set(f"{KEY_PREFIX}_ledger", summary)
            self._saved = newest

    def _write_image(
        self,
        key: str,
        image_fingerprint: str,
        image: GeneratedImage | None,
        stored_uri: str | None,
        output_path: str | None,
        regenerations: int,
        kept: str | None = None,
    ) -> None:
        assert self.backend is not None and self.request is not None
        self.backend.set(
            key,
            {
                "first_try": self.request.first_try,
                "try": self.request.try_number,
                "fingerprint": image_fingerprint,
                "image": image.to_xcom() if image is not None else None,
                "stored_uri": stored_uri,
                "output_path": output_path,
                "regenerations": regenerations,
                "kept": kept,
            },
        )
