"""
Model fallback: when a model cannot serve now, the next model of the call's chain makes the image.

A model is passed over only for an error that says it is unavailable once its retries are spent
(:func:`.retry.is_unavailable`): out of capacity or throttled, ``provider_unavailable``, HTTP 503, or not
available via unified billing; or once Cloudflare says it does not serve the model (:func:`is_unserved_error`,
nothing ran). Any other error fails the call at once: the next model would
get the same input and the same token, and a request whose outcome is unknown may have made a billed image
that a second model would be paid to make again.

- A model with a fallback counts "capacity exceeded" (3040) refusals as attempts: its capacity is spent when its
  retries are, rather than after ``max_rate_limit_wait`` seconds of waiting for it. Other refusals by a rate
  limit (we send too fast) are paced as always, and fall back only once that budget is spent.
- Every model after the first gets its own AI Gateway cache key (the call's key and the model's digest), so no
  model is ever answered with another model's cached image.
- The models of a chain take different inputs: :func:`chain_inputs` gives each its own request body, every one
  checked before the first request, and :func:`chain_notes` what to log about the fields each model left out.
- A hook remembers for :data:`UNAVAILABLE_SECONDS` the models it found unavailable, so the other prompts of a
  batch skip them without a request. The chain's last model is always tried.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import TYPE_CHECKING, Any

from airflow_provider_imagen._cloudflare.catalog import RESERVED_INPUTS, TEXT_TO_IMAGE_MODELS, is_cataloged, is_unserved
from airflow_provider_imagen._cloudflare.catalog_inputs import (
    as_mapping,
    check_model_inputs,
    fit_inputs_for,
    ignored_parameters,
    request_input,
)
from airflow_provider_imagen._cloudflare.retry import is_unavailable
from airflow_provider_imagen._cloudflare.rules import (
    chain_aspect_ratios,
    check_aspect_ratio,
    first_bytes_model,
    imagen_input_problems,
)
from airflow_provider_imagen.exceptions import InvalidInputError
from airflow_provider_imagen.models import GatewayOptions, GeneratedImage, ImagenInput, SkippedModel

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping, Sequence

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
        if last or not (is_unavailable(err) or is_unserved_error(err)):
            raise err.replace(skipped_models=[skipped.model_dump(mode="json") for skipped in self.skipped])
        skipped = skipped_from(model, err)
        self.skipped.append(skipped)
        self.unavailable.note([skipped])
        why = "is not served by Cloudflare" if is_unserved_error(err) else "is unavailable"
        self.log.warning("%s %s after %d attempt(s) (%s): falling back", model, why, err.attempts, skipped.reason)

    def made(self, image: GeneratedImage) -> GeneratedImage:
        """Return the image, noting the models passed over before the one that made it."""
        return image.model_copy(update={"skipped_models": tuple(self.skipped)}) if self.skipped else image


def is_unserved_error(err: CloudflareWorkersAIError) -> bool:
    """
    Tell whether ``err`` says Cloudflare does not serve the model (no longer, or never did).

    Nothing ran and nothing was billed, so the next model of the chain may serve, as after an unavailable one.
    """
    return not err.maybe_billed and is_unserved(err.status_code, err.code, err.message)


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


#: Models outside the catalog already warned about in this process: the warning is said once.
_WARNED_UNCATALOGED: set[str] = set()


def chain_inputs(
    chain: Sequence[str],
    prompt: str,
    aspect_ratio: str | None,
    person_generation: str | None,
    model_inputs: Mapping[str, Any] | None,
) -> dict[str, dict[str, Any]]:
    """
    Return the ``input`` object each model of ``chain`` is sent, every model checked before the first request.

    A field some model of the chain takes is dropped for the others (see :func:`chain_notes`); a field no model
    of the chain takes is refused, as a typo would be, unless a model outside the catalog (unchecked) may take it.

    :param chain: the models of one call, in order.
    :param prompt: what to draw.
    :param aspect_ratio: the call's aspect ratio.
    :param person_generation: the call's person generation setting.
    :param model_inputs: the call's model inputs.
    :raises InvalidInputError: naming the field, the model and what it allows.
    """
    inputs = as_mapping(model_inputs, "model_inputs")
    if all(is_cataloged(model) for model in chain):
        taken = {name for model in chain for name in TEXT_TO_IMAGE_MODELS[model].fields}
        unknown = {key: value for key, value in inputs.items() if key not in taken and key not in RESERVED_INPUTS}
        if unknown:
            check_model_inputs(chain[0], unknown)  # raises, saying what the first model takes
    bodies = {}
    for model in chain:
        kept, _ = fit_inputs_for(model, inputs)
        bodies[model] = request_input(model, prompt, aspect_ratio, person_generation, kept)
    return bodies


def chain_notes(
    chain: Sequence[str],
    aspect_ratio: str | None,
    person_generation: str | None,
    model_inputs: Mapping[str, Any] | None,
) -> list[tuple[str, str]]:
    """
    Return what the caller should log about a chain, as ``(level, message)`` pairs.

    Which fields each model drops, which provider parameters it ignores, and (once per process) that a model is
    outside the catalog, so its inputs go unchecked.

    :param chain: the models of one call, in order.
    :param aspect_ratio: the call's aspect ratio.
    :param person_generation: the call's person generation setting.
    :param model_inputs: the call's model inputs (already checked by :func:`chain_inputs`).
    """
    inputs = as_mapping(model_inputs, "model_inputs")
    notes: list[tuple[str, str]] = []
    for model in chain:
        if not is_cataloged(model):
            if model not in _WARNED_UNCATALOGED:
                _WARNED_UNCATALOGED.add(model)
                notes.append(
                    (
                        "warning",
                        f"{model} is not in the provider's catalog of text-to-image models (docs/models.md, "
                        f"e.g. {', '.join(list(TEXT_TO_IMAGE_MODELS)[:3])}): its model_inputs are sent unchecked",
                    )
                )
            continue
        _, dropped = fit_inputs_for(model, inputs)
        if dropped:
            notes.append(("info", f"{model} takes no {', '.join(dropped)}: left out of its request"))
        ignored = ignored_parameters(model, aspect_ratio, person_generation)
        if ignored:
            notes.append(("info", f"{model} cannot honour {' or '.join(ignored)}: left out of its request"))
    return notes


def prepare_call(
    prompt: Any,
    aspect_ratio: Any,
    person_generation: Any,
    chain: tuple[str, ...],
    model_inputs: Any,
    log: Any,
    logged: set[str] | None = None,
) -> tuple[ImagenInput, dict[str, dict[str, Any]]]:
    """
    Check one call's input for every model of its chain, and return the body each model is sent.

    The aspect ratio is checked against the chain's models (Nano Banana takes more ratios than Imagen), in the words
    :class:`~airflow_provider_imagen.models.ImagenInput` uses; what each model leaves out is logged.

    :param logged: notes already logged (by the hook, for the other prompts of a batch): not logged again.
    :raises InvalidInputError: before any request, naming each bad field.
    """
    problems = imagen_input_problems(prompt, aspect_ratio, person_generation, chain_aspect_ratios(chain))
    if problems:
        raise InvalidInputError("Invalid Imagen input: " + "; ".join(problems))
    image_input = ImagenInput.parse(prompt=prompt, person_generation=person_generation)
    image_input = image_input.model_copy(update={"aspect_ratio": aspect_ratio})
    bodies = chain_inputs(chain, image_input.prompt, aspect_ratio, person_generation, model_inputs)
    log_notes(log, chain, aspect_ratio, person_generation, model_inputs, logged)
    return image_input, bodies


def prepare_batch(
    inputs: list[ImagenInput],
    aspect_ratio: Any,
    chain: tuple[str, ...],
    model_inputs: Any,
    log: Any,
    logged: set[str] | None = None,
) -> tuple[list[ImagenInput], list[dict[str, dict[str, Any]]]]:
    """
    Check a batch's input for every model of its chain; return each prompt's input and bodies (:func:`prepare_call`).

    :param inputs: the batch's prompts, parsed without an aspect ratio (checked here, per model).
    :raises InvalidInputError: before any request, naming each bad field.
    """
    check_aspect_ratio(aspect_ratio, chain)  # per model: Nano Banana takes more ratios than Imagen
    inputs = [image.model_copy(update={"aspect_ratio": aspect_ratio}) for image in inputs]
    people = inputs[0].person_generation if inputs else None
    bodies = [chain_inputs(chain, image.prompt, aspect_ratio, people, model_inputs) for image in inputs]
    log_notes(log, chain, aspect_ratio, people, model_inputs, logged)
    return inputs, bodies


def log_notes(
    log: Any,
    chain: tuple[str, ...],
    aspect_ratio: Any,
    person_generation: Any,
    model_inputs: Any,
    logged: set[str] | None = None,
) -> None:
    """Log what each model of ``chain`` leaves out of its request (:func:`chain_notes`), each note once."""
    for level, note in chain_notes(chain, aspect_ratio, person_generation, model_inputs):
        if logged is None or note not in logged:
            (log.warning if level == "warning" else log.info)("%s", note)
            if logged is not None:
                logged.add(note)


def inputs_taken_by(chain: tuple[str, ...], model_inputs: Any) -> Any:
    """
    Return the part of ``model_inputs`` some model of ``chain`` takes (all of it if one is outside the catalog).

    For a trigger, which tries the chain's first models only: the rest go to the models the task tries after it.
    Anything but a mapping is returned as it is, for the checks to refuse.
    """
    if not isinstance(model_inputs, dict) or not all(is_cataloged(model) for model in chain):
        return model_inputs
    taken = {name for model in chain for name in TEXT_TO_IMAGE_MODELS[model].fields}
    return {key: value for key, value in model_inputs.items() if key in taken or key in RESERVED_INPUTS} or None
