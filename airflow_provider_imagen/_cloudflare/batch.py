"""
The one batch engine: many calls at a bounded concurrency, results in order, each failure its own item's.

Used by :meth:`~airflow_provider_imagen.hooks.CloudflareWorkersAIHook.agenerate_images` and by a batch task's
try (:meth:`~airflow_provider_imagen._task.job.ImageJob.run_batch`). Every generation is billed, so an
exception in one item, of whatever type, never cancels the others' requests in flight: it becomes that item's
result. Only cancellation itself (and ``KeyboardInterrupt``/``SystemExit``) stops the batch.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, TypeVar

from airflow_provider_imagen.exceptions import CloudflareRateLimitError, CloudflareWorkersAIError, ImagesRefusedError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

T = TypeVar("T")
R = TypeVar("R")


def as_item_error(err: Exception) -> CloudflareWorkersAIError:
    """
    Return ``err`` as the provider's error for one item: itself when it is one, else a wrapped copy.

    An unexpected exception may have come after a billed generation, so a wrapped one counts as maybe billed:
    no fallback model is paid for that item.
    """
    if isinstance(err, CloudflareWorkersAIError):
        return err
    return CloudflareWorkersAIError(f"{type(err).__name__}: {err}", maybe_billed=True)


def is_final(errors: Sequence[CloudflareWorkersAIError]) -> bool:
    """Say whether no retry of the task can change any of ``errors`` (input, policy, quota)."""
    from airflow.providers.common.compat.sdk import AirflowFailException

    return all(isinstance(error, AirflowFailException) for error in errors)


def batch_error(errors: Sequence[CloudflareWorkersAIError], message: str) -> CloudflareWorkersAIError:
    """
    Return the error that fails a task because some of its items failed, saying what a retry of the task can expect.

    Every failure final: :class:`ImagesRefusedError`, which fails the task at once (a retry would only pay again).
    Every failure a retryable rate limit or capacity refusal: a :class:`CloudflareRateLimitError` carrying the longest
    ``Retry-After``, so that a retry policy waits as long. Otherwise a retryable error, maybe billed when any item's
    generation may have been.

    :param errors: the failed items' errors (at least one).
    :param message: what failed, item by item.
    """
    if is_final(errors):
        return ImagesRefusedError(message)
    waits = [error.retry_after for error in errors if error.retry_after is not None]
    retry_after = max(waits) if waits else None
    if all(isinstance(error, CloudflareRateLimitError) and error.retryable for error in errors):
        return CloudflareRateLimitError(message, retryable=True, retry_after=retry_after)
    maybe_billed = any(error.maybe_billed for error in errors)
    return CloudflareWorkersAIError(message, retryable=True, retry_after=retry_after, maybe_billed=maybe_billed)


def in_flight(max_concurrency: int) -> int:
    """
    Return how many items a batch keeps in flight: ``max_concurrency`` generating, as many storing.

    An item that holds a generation's place while its image downloads and is written keeps the API idle for that
    long (~40 ms a row on a busy machine, against a 100 ms answer); the generations have their own gate
    (:attr:`~airflow_provider_imagen._task.job.ImageJob.generations`).
    """
    return 2 * max_concurrency


async def run_each(
    items: Sequence[T],
    one: Callable[[T], Awaitable[R]],
    failed: Callable[[T, CloudflareWorkersAIError], R],
    max_concurrency: int,
) -> list[R]:
    """
    Run ``one(item)`` for every item, at most ``max_concurrency`` at a time, and return the results in order.

    :param items: what to run, in the order the results come back.
    :param one: the work of one item.
    :param failed: the result of an item whose work raised (the error as :func:`as_item_error` gives it).
    :param max_concurrency: how many items run at once.
    """
    gate = asyncio.Semaphore(max_concurrency)

    async def guarded(item: T) -> R:
        async with gate:
            try:
                return await one(item)
            except Exception as err:  # one item's failure, whatever it is, is that item's result
                return failed(item, as_item_error(err))

    return list(await asyncio.gather(*(guarded(item) for item in items)))
