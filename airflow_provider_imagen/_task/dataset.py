"""
One try of a dataset step: the items read (streaming), checked before any request, keyed, sharded, and run.

Items come from a ``.jsonl``/``.csv`` file (a local path, a URI or an ``ObjectStoragePath``, read line by line, twice:
once to check every row, once to generate) or a list of dicts (an XCom). Each has a ``key`` (it becomes a file name),
a ``prompt``, optionally ``aspect_ratio`` and ``person_generation``; every other field is carried to the manifest.
The folder the images go to, how a stored image is matched to its inputs, and the manifest are in
:mod:`~airflow_provider_imagen._task.keyed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import io
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_imagen._cloudflare.rules import imagen_input_problems, shown, unset_if_empty
from airflow_provider_imagen._task.job import Item
from airflow_provider_imagen.exceptions import InvalidInputError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from airflow.sdk import ObjectStoragePath

    from airflow_provider_imagen._task.keyed import DatasetJob, FolderIndex

#: A key is a file name: letters, digits, ``-``, ``_``, ``.``; never ``.``-first (hidden, or ``..``); 200 at most.
KEY_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")
#: The fields an item sets for itself; any other field is carried to the manifest untouched.
INPUT_FIELDS = ("key", "prompt", "aspect_ratio", "person_generation")
#: Fields the manifest writes: an item may not bring its own.
MANIFEST_FIELDS = ("status", "stored_uri", "model", "width", "height", "error", "estimated_cost_usd")
#: Bad rows named in the refusal (all are counted).
MAX_NAMED = 20


@dataclass(frozen=True)
class Row(Item):
    """
    One item of a dataset: an :class:`~airflow_provider_imagen._task.job.Item` with its key and its own inputs.

    ``fingerprint`` (what the durable records and the AI Gateway cache key use) covers the key as well as the inputs,
    so two rows with the same prompt are two images; ``inputs`` digests what made the image, key aside.
    """

    key: str = ""
    line: int = 0
    inputs: str = ""
    aspect_ratio: str | None = None
    person_generation: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def shard_of(key: str, shard_count: int) -> int:
    """Return the shard of ``key``: a hash that is the same in every process and Python version (not ``hash()``)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % shard_count


def check_shards(shard_index: object, shard_count: object) -> None:
    """Refuse a shard that is not one of ``shard_count`` (a whole number, at least 1)."""
    if isinstance(shard_count, bool) or not isinstance(shard_count, int) or shard_count < 1:
        raise InvalidInputError(f"Invalid shard_count: must be a whole number of at least 1, got {shown(shard_count)}")
    if isinstance(shard_index, bool) or not isinstance(shard_index, int) or not 0 <= shard_index < shard_count:
        raise InvalidInputError(
            f"Invalid shard_index: must be a whole number from 0 to {shard_count - 1}, got {shown(shard_index)}"
        )


# --- Reading ---------------------------------------------------------------------------------------------


class ItemSource:
    """
    Where the items are: iterated as often as needed, one ``(line, row)`` at a time, never all in memory from a file.

    :param items: a ``.jsonl``/``.ndjson``/``.csv`` path or URI, an ``ObjectStoragePath``, or a list of dicts.
    :raises InvalidInputError: for anything else, naming ``items``.
    """

    def __init__(self, items: object) -> None:
        self.rows: list[Any] | None = None
        self.path: str | ObjectStoragePath | None = None
        if isinstance(items, (list, tuple)):
            self.rows = list(items)
            self.kind = "list"
            return
        text = str(items).strip() if isinstance(items, str) or _is_storage_path(items) else None
        if not text:
            raise InvalidInputError(
                "Invalid items: expected a .jsonl or .csv path or URI, or a list of dicts with key and prompt, "
                f"got {shown(items)}"
            )
        suffix = text.lower().rsplit(".", 1)[-1]
        if suffix not in ("jsonl", "ndjson", "csv"):
            raise InvalidInputError(f"Invalid items {text!r}: the file must end in .jsonl, .ndjson or .csv")
        self.kind = "csv" if suffix == "csv" else "jsonl"
        self.path = items if _is_storage_path(items) else text  # type: ignore[assignment]

    def __str__(self) -> str:
        return str(self.path) if self.path is not None else f"a list of {len(self.rows or [])} items"

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        """Yield ``(line, row)``: the line in the file (the header is line 1 of a CSV), or the position in a list."""
        if self.rows is not None:
            yield from enumerate(self.rows, start=1)
            return
        with self._open() as text:
            if self.kind == "csv":
                reader = csv.DictReader(text)
                for row in reader:
                    yield reader.line_num, row
                return
            for line, raw in enumerate(text, start=1):
                if raw.strip():
                    try:
                        yield line, json.loads(raw)
                    except json.JSONDecodeError as err:
                        yield line, f"not JSON ({err.msg})"

    def _open(self) -> io.TextIOBase:
        path = self.path  # utf-8-sig: a spreadsheet's CSV export starts with a byte order mark
        if isinstance(path, str) and "://" not in path:
            return open(os.path.expanduser(path), encoding="utf-8-sig", newline="")
        from airflow.sdk import ObjectStoragePath

        remote = path if not isinstance(path, str) else ObjectStoragePath(path)
        return io.TextIOWrapper(remote.open("rb"), encoding="utf-8-sig", newline="")  # type: ignore[union-attr]


def _is_storage_path(value: object) -> bool:
    return type(value).__name__ == "ObjectStoragePath"


def row_problems(row: Any, seen: set[str]) -> list[str]:
    """Say what is wrong with one row (its key is added to ``seen`` when it is usable, to find duplicates)."""
    if isinstance(row, str):
        return [row]
    if not isinstance(row, dict):
        return [f"must be an object with key and prompt, got {shown(row)}"]
    key = row.get("key")
    if isinstance(key, int) and not isinstance(key, bool):
        key = str(key)
    if key is None or key == "":
        problems = ["key: missing"]
    elif not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        problems = [
            f"key: {shown(key)} is not a safe file name (letters, digits, '-', '_', '.', not '.' first, "
            "at most 200 characters)"
        ]
    elif key in seen:
        problems = [f"key: {key!r} appears more than once"]
    else:
        seen.add(key)
        problems = []
    if "prompt" not in row:
        problems.append("prompt: missing")
    else:
        ratio, people = (unset_if_empty(row.get(name)) for name in ("aspect_ratio", "person_generation"))
        problems += imagen_input_problems(row["prompt"], ratio, people)
    problems += [f"{name}: reserved for the manifest" for name in MANIFEST_FIELDS if name in row]
    return problems


def check_items(source: ItemSource, selected: Any = None) -> int:
    """
    Check every row of ``source`` before any request; return how many there are.

    :param selected: if given, called with each good row's key: counts the rows it selects instead.
    :raises InvalidInputError: naming up to :data:`MAX_NAMED` bad rows by line, and how many there are.
    """
    seen: set[str] = set()
    bad: list[str] = []
    count = total = 0
    for line, row in source:
        total += 1
        problems = row_problems(row, seen)
        if problems:
            bad.append(f"  line {line}: " + "; ".join(problems))
            continue
        if selected is None or selected(str(row["key"])):
            count += 1
    if bad:
        more = f"\n  ... and {len(bad) - MAX_NAMED} more" if len(bad) > MAX_NAMED else ""
        raise InvalidInputError(
            f"Invalid items in {source}: {len(bad)} of {total} rows refused before any request:\n"
            + "\n".join(bad[:MAX_NAMED])
            + more
        )
    return count


def to_row(index: int, line: int, raw: dict[str, Any], defaults: dict[str, Any], digest_inputs: Any) -> Row:
    """
    Make a checked ``raw`` row a :class:`Row`, with the operator's defaults where it sets nothing.

    :param digest_inputs: digests a prompt, aspect ratio and person generation with the operator's other inputs.
    """
    key = str(raw["key"])
    ratio = unset_if_empty(raw.get("aspect_ratio")) or defaults["aspect_ratio"]
    people = unset_if_empty(raw.get("person_generation")) or defaults["person_generation"]
    prompt = str(raw["prompt"]).strip()
    inputs = digest_inputs(prompt, ratio, people)
    digest = hashlib.sha256(json.dumps([inputs, key]).encode()).hexdigest()[:32]
    extra = {name: value for name, value in raw.items() if name not in INPUT_FIELDS}
    return Row(index, prompt, digest, 0, key, line, inputs, ratio, people, extra)


# --- One try of a dataset step ----------------------------------------------------------------------------------

#: Rows in flight at once are read this many at a time: a 100,000-row file is never 100,000 rows in memory.
CHUNK_ROWS = 4096


def row_digest(operator: Any, chain: tuple[str, ...]) -> Callable[[str, str | None, str | None], str]:
    """
    Return what digests a row's prompt, aspect ratio and person generation with ``operator``'s other inputs.

    The digest of a dataset's sidecars, a keyed batch's and a single file's: one rule for every stored image.

    :param chain: the model and its fallbacks.
    """
    from airflow_provider_imagen._task.durable import fingerprint
    from airflow_provider_imagen.models import GatewayOptions

    gateway = GatewayOptions.parse(operator.gateway_options)
    model_inputs = unset_if_empty(operator.model_inputs)

    def digest(prompt: str, ratio: str | None, people: str | None) -> str:
        return fingerprint(chain[0], prompt, ratio, people, gateway, chain[1:], model_inputs=model_inputs)

    return digest


def rows_job(
    operator: Any, context: Any, index: FolderIndex, chain: tuple[str, ...], rows: Iterable[Row]
) -> DatasetJob:
    """
    Set up the try of ``operator``'s keyed rows (a dataset's, or a batch's ``items``), its limits checked first.

    Before any request, ``max_images`` and ``max_cost_usd`` are checked against the rows that are neither in the
    folder nor in the try's records.

    :param index: the folder's listing.
    :param chain: the model and its fallbacks.
    :param rows: the rows to obtain (read once, for the limits).
    :raises SpendLimitError: when the rows to generate would exceed a limit.
    """
    from airflow_provider_imagen._task.download import api_authority
    from airflow_provider_imagen._task.durable import Ledger
    from airflow_provider_imagen._task.keyed import DatasetJob
    from airflow_provider_imagen.models import GatewayOptions

    op = operator
    # Read on the task's own thread: images are stored from worker threads, where Airflow's in-process task
    # runner cannot look a connection up.
    settings = op.get_hook().settings
    job = DatasetJob(
        index,
        chain,
        op.max_image_bytes,
        api_authority(settings.base_url),
        ledger=Ledger.open(context, retries=op.retries, durable=op.durable, log=op.log),
        model=chain[0],
        fallback_models=chain[1:],
        aspect_ratio=unset_if_empty(op.aspect_ratio),
        person_generation=unset_if_empty(op.person_generation),
        gateway_options=GatewayOptions.parse(op.gateway_options),
        output_path=str(index.folder),
        log=op.log,
        max_images=op.max_images,
        prices=settings.prices,
        max_cost_usd=op.max_cost_usd,
        model_inputs=unset_if_empty(op.model_inputs),
    )
    if op.max_images is not None or op.max_cost_usd is not None:
        unmade = (row for row in rows if index.made(row) is None)
        if not job.ledger.earlier_tries:  # a first try: nothing recorded to reuse
            job.check_budget(sum(1 for _ in unmade))
        else:
            job.check_budget(sum(1 for row in unmade if (job.ledger.get(row.fingerprint) or {}).get("image") is None))
    return job


def run_dataset(operator: Any, context: Any) -> dict[str, Any]:
    """
    Run one try of an :class:`~airflow_provider_imagen.operators.dataset.ImagenDatasetOperator`.

    Check every row, list the folder once, then for each row of this shard reuse, generate or replace its image,
    recording each in the manifest, which is published whole even when the try fails.

    :return: the counts per status and the manifest's URI.
    """
    from airflow_provider_imagen._cloudflare.batch import as_item_error, batch_error
    from airflow_provider_imagen._cloudflare.rules import model_chain
    from airflow_provider_imagen._task.job import Outcome
    from airflow_provider_imagen._task.keyed import FolderIndex, Manifest, default_manifest_name
    from airflow_provider_imagen._task.storage import resolve_output_path, task_instance_identity
    from airflow_provider_imagen.exceptions import CloudflareWorkersAIError, SpendLimitError

    op, log = operator, operator.log
    chain = model_chain(op.model, op.fallback_models)
    folder, _ = resolve_output_path(op.output_path)
    if op.manifest_path:
        target, is_folder = resolve_output_path(op.manifest_path)
        if is_folder:
            raise InvalidInputError(f"Invalid manifest_path {op.manifest_path!s}: it must name a file, not a folder")
    else:
        target = folder / default_manifest_name(task_instance_identity(context))
    source = ItemSource(op.items)
    defaults = {name: unset_if_empty(getattr(op, name)) for name in ("aspect_ratio", "person_generation")}
    digest_inputs = row_digest(op, chain)

    def selected(key: str) -> bool:
        return bool(op.shard_count == 1 or shard_of(key, op.shard_count) == op.shard_index)

    def rows() -> Iterator[Row]:
        index = 0
        for line, raw in source:
            if selected(str(raw["key"])):
                yield to_row(index, line, raw, defaults, digest_inputs)
                index += 1

    total = check_items(source, selected)  # every row, before any request
    folder_index = FolderIndex(folder, selected if op.shard_count > 1 else None)  # this shard's keys only
    job = rows_job(op, context, folder_index, chain, rows())
    log.info("%d items for shard %d of %d, from %s", total, op.shard_index, op.shard_count, source)

    manifest = Manifest(target)
    counts = dict.fromkeys(("generated", "reused", "replaced", "failed"), 0)
    failures: list[tuple[Row, CloudflareWorkersAIError]] = []
    hook = op.get_hook()
    hook.settings  # noqa: B018 - read synchronously: see CloudflareWorkersAIHook.generate_images

    def record(row: Row, status: str, outcome: Outcome, made: Any) -> None:
        counts[status] += 1
        image, cost = outcome.image, job.spend.cost_of(outcome)
        if status == "failed":
            error = outcome.error or CloudflareWorkersAIError("no image")
            failures.append((row, error))
            manifest.add(row, status, error=str(error), model=image.model if image else None, estimated_cost_usd=cost)
            return
        if status == "replaced" and counts["replaced"] <= MAX_NAMED:
            log.info("Replaced %s: its inputs changed since it was made", made.uri)
        model = chain[made.model] if made.model < len(chain) else None
        width, height = made.width or None, made.height or None
        aspect = image.aspect_ratio if image else None
        fields = {"stored_uri": made.uri, "model": model, "width": width, "height": height, "aspect_ratio": aspect}
        manifest.add(row, status, **fields, estimated_cost_usd=cost)

    async def run_all() -> None:
        places = asyncio.Semaphore(job.open_loop(op.max_concurrency))  # rows read ahead wait for a place here
        unrecorded: list[tuple[list[Row], list[asyncio.Task[tuple[str, Outcome, Any]]]]] = []  # oldest first

        async def one(row: Row) -> tuple[str, Outcome, Any]:
            try:
                return await job.obtain(hook, row)
            except Exception as err:  # one row's failure, whatever it is, is that row's result
                return "failed", Outcome(error=as_item_error(err)), None
            finally:
                places.release()

        async def started(chunk: list[Row]) -> list[asyncio.Task[tuple[str, Outcome, Any]]]:
            job.rows.update((row.index, row) for row in chunk)
            tasks = []
            for row in chunk:
                await places.acquire()
                tasks.append(asyncio.create_task(one(row)))
            return tasks

        async def record_oldest() -> None:
            chunk, tasks = unrecorded[0]
            results = await asyncio.gather(*tasks)  # a row's failure is its result; a worker's death is not
            unrecorded.pop(0)
            for row, (status, outcome, made) in zip(chunk, results, strict=True):
                record(row, status, outcome, made)
                del job.rows[row.index]

        async def settle(chunk: list[Row], tasks: list[asyncio.Task[tuple[str, Outcome, Any]]]) -> None:
            # After an error: wait for the chunk's rows (a generation in flight is paid for), note what they made.
            results = await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):  # the manifest may be what failed: the folder holds the images
                for row, result in zip(chunk, results, strict=True):
                    if isinstance(result, tuple):
                        record(row, *result)

        pending = iter(rows())
        try:
            # The next chunk starts while the last rows of the one before finish: the API never waits for a
            # chunk's slowest row. The manifest keeps the rows' order (two chunks in memory at most).
            while chunk := await asyncio.to_thread(lambda: list(itertools.islice(pending, CHUNK_ROWS))):
                unrecorded.append((chunk, await started(chunk)))
                if len(unrecorded) > 1:
                    await record_oldest()
            while unrecorded:
                await record_oldest()
        finally:
            for chunk, tasks in unrecorded:  # only after an error (reading the rows, writing the manifest)
                await settle(chunk, tasks)
            await hook.aclose()  # the clients belong to this loop, which ends here; nothing is in flight now
            await job.aclose()
            job.close()

    try:
        asyncio.run(run_all())
    finally:
        uri = manifest.publish()  # a failed try's manifest too: what it did, for the retry and for people
    billing = job.billing()
    summary = {**counts, "total": total, "manifest": uri, "estimated_cost_usd": billing["estimated_cost_usd"]}
    log.info("%s; manifest at %s", ", ".join(f"{n} {status}" for status, n in counts.items()), uri)
    log.info("%s", job.describe())
    context["ti"].xcom_push(key="billing", value=billing)
    for _, error in failures:
        if isinstance(error, SpendLimitError):
            raise error
    if failures and op.fail_on_error:
        lines = "\n".join(f"  {row.key} (line {row.line}): {error}" for row, error in failures[:MAX_NAMED])
        more = f"\n  ... and {len(failures) - MAX_NAMED} more" if len(failures) > MAX_NAMED else ""
        raise batch_error(
            [error for _, error in failures],
            f"{len(failures)} of {total} items failed (the others are stored, and a rerun reuses them; "
            f"manifest at {uri}):\n{lines}{more}",
        )
    return summary
