"""
Model fallback: when a model cannot serve now, the next model of the call's chain makes the image.

A model is passed over only for an error that says it is unavailable once its retries are spent
(:func:`.retry.is_unavailable`): out of capacity or throttled, ``provider_unavailable``, HTTP 503, or not
available via unified billing. Any other error fails the call at once: the next model would
get the same input and the same token, and a request whose outcome is unknown may have made a billed image
that a second model would be paid to make again.

- A model with a fallback counts "capacity exceeded" (3040) refusals as attempts: its capacity is spent when its
  retries are, rather than after ``max_rate_limit_wait`` seconds of waiting for it. Other refusals by a rate
  limit (we send too fast) are paced as always, and fall back only once that budget is spent.
- Every model after the first gets its own AI Gateway cache key (the call's key and the model's digest), so no
  model is ever answered with another model's cached image.
- A hook remembers for :data:`UNAVAILABLE_SECONDS` the models it found unavailable, so the other prompts of a
  batch skip them without a request. The chain's last model is always tried.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import TYPE_CHECKING, Any

from airflow_provider_imagen._cloudflare.retry import is_unavailable
from airflow_provider_imagen._cloudflare.rules import first_bytes_model
from airflow_provider_imagen.models import GatewayOptions, GeneratedImage, SkippedModel

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from airflow_provider_imagen.exceptions import CloudflareWorkersAIError

#: Seconds a hook skips a model it found unavailable, before trying it again.
UNAVAILABLE_SECONDS = 60.0
_MAX_CACHE_KEY = 1024  # AI Gateway's limit on cf-aig-cache-key


class UnavailableModels:
    """The models a hook found unavailable lately, and why: later calls pass over them without a request."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[float, SkippedModel]] = {}
        self._lock = threading.Lock()

    def note(self, skipped: Iterable[SkippedModel]) -> None:
        """Remember these models as unavailable from now on (a trigger's findings, resumed on a worker)."""
        with self._lock:
            for model in skipped:
                self._seen[model.model] = (time.monotonic(), model)

    def recent(self, model: str) -> tuple[float, SkippedModel] | None:
        """How many seconds ago ``model`` was found unavailable, and why; ``None`` if not lately."""
        with self._lock:
            seen = self._seen.get(model)
        if seen is None or time.monotonic() - seen[0] > UNAVAILABLE_SECONDS:
            return None
        return time.monotonic() - seen[0], seen[1]


class ModelWalk:
    """
    Walk one call along its chain of models.

    It knows which model to try next, with which gateway options, and which were passed over and why.

    :param chain: the models, in order (:func:`~airflow_provider_imagen._cloudflare.rules.model_chain`).
    :param options: the call's AI Gateway options.
    :param unavailable: the hook's record of models found unavailable lately.
    :param log: where each fallback is logged.
    """

    def __init__(
        self, chain: tuple[str, ...], options: GatewayOptions | None, unavailable: UnavailableModels, log: Any
    ) -> None:
        self.chain = chain
        self.options = options
        self.unavailable = unavailable
        self.log = log
        self.skipped: list[SkippedModel] = []

    def steps(self) -> Iterator[tuple[str, GatewayOptions | None, bool]]:
        """Each model to try, its gateway options, and whether it is the last (whose refusals are waited out)."""
        for index, model in enumerate(self.chain):
            last = index == len(self.chain) - 1
            known = None if last else self.unavailable.recent(model)
            if known is not None:
                age, why = known
                reason = f"found unavailable {age:.0f} s earlier by this task, not tried again yet: {why.reason}"
                self.skipped.append(why.model_copy(update={"attempts": 0, "reason": reason}))
                self.log.info("Passing over %s: %s", model, reason)
                continue
            if index > 0:
                self.log.info("Trying fallback model %s", model)
            yield model, cache_key_for(self.options, model, first=index == 0), last

    def failed(self, model: str, err: CloudflareWorkersAIError, last: bool) -> None:
        """
        Pass over ``model`` when ``err`` says it is unavailable and another model follows.

        Otherwise re-raise ``err``, listing the models passed over before it.
        """
        if last or not is_unavailable(err):
            raise err.replace(skipped_models=[skipped.model_dump(mode="json") for skipped in self.skipped])
        skipped = skipped_from(model, err)
        self.skipped.append(skipped)
        self.unavailable.note([skipped])
        self.log.warning(
            "%s is unavailable after %d attempt(s) (%s): falling back", model, err.attempts, skipped.reason
        )

    def made(self, image: GeneratedImage) -> GeneratedImage:
        """Return the image, noting the models passed over before the one that made it."""
        return image.model_copy(update={"skipped_models": tuple(self.skipped)}) if self.skipped else image


def cache_key_for(options: GatewayOptions | None, model: str, *, first: bool) -> GatewayOptions | None:
    """``options`` for ``model``: a fallback's cache key is the call's key and the model's digest."""
    if first or options is None or options.cache_key is None:
        return options
    digest = hashlib.sha256(model.encode()).hexdigest()[:12]
    key = options.cache_key
    if len(key) + len(digest) + 1 > _MAX_CACHE_KEY:
        key = hashlib.sha256(key.encode()).hexdigest()
    return options.model_copy(update={"cache_key": f"{key}-{digest}"})


def skipped_from(model: str, err: CloudflareWorkersAIError) -> SkippedModel:
    """How ``err`` made ``model`` be passed over."""
    return SkippedModel(
        model=model, reason=err.describe(), code=err.code, status_code=err.status_code, attempts=err.attempts
    )


def passed_over(err: CloudflareWorkersAIError) -> list[SkippedModel]:
    """Every model a failed call passed over, the one that raised ``err`` last."""
    earlier = [SkippedModel.model_validate(skipped) for skipped in err.skipped_models]
    return [*earlier, skipped_from(err.model or "", err)]


def split_for_triggerer(chain: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """
    Split ``chain`` into the models a trigger tries and the rest, which the task tries on its worker.

    The trigger tries those that answer with a URL, up to the first that answers with bytes; the task tries the
    rest if the trigger's are unavailable: a trigger event carries a URL, never an image's bytes.
    """
    found = first_bytes_model(chain)
    return (chain, ()) if found is None else (chain[: found[0]], chain[found[0] :])


def with_earlier(earlier: Sequence[SkippedModel], later: Sequence[SkippedModel]) -> tuple[SkippedModel, ...]:
    """``later``, each model that ``earlier`` also passed over told as ``earlier`` saw it (with its attempts)."""
    known = {skipped.model: skipped for skipped in earlier}
    return tuple(known.get(skipped.model, skipped) for skipped in later)
