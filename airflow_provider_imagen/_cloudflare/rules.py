"""
The input rules, as plain functions: the one statement of each, with one message each.

The pydantic models, the hook and the operators (at DAG-parse time, for literal values) all call these, so
a value gets the same words wherever it is checked. Cheap to import: no pydantic, no httpx.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from airflow_provider_imagen.constants import (
    ASPECT_RATIOS,
    CLOUDFLARE_MODEL_PREFIXES,
    IMAGEN_4,
    MAX_PROMPT_CHARS,
    PERSON_GENERATION,
)
from airflow_provider_imagen.exceptions import InvalidInputError

MAX_MODEL_ID_CHARS = 200
#: The most models one call may try: the model and up to four fallbacks (each may spend its retries).
MAX_MODELS = 5

# Segments of letters, digits, '-', '_' and '.', none starting with '.', so neither '.' nor '..' can be one:
# httpx resolves dot segments, and a model id goes into the path of a request that carries the API token.
_SEGMENT = r"[A-Za-z0-9_-][A-Za-z0-9._-]*"
_PROXIED_MODEL = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})+")
_CLOUDFLARE_MODEL = re.compile(rf"@(?:cf|hf)/{_SEGMENT}(?:/{_SEGMENT})*")


def shown(value: Any) -> str:
    """``repr(value)``, cut to 80 characters for messages."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def prompt_problem(value: Any) -> str | None:
    """Say what is wrong with ``value`` as a prompt, or return ``None``. Measured after stripping, as it is sent."""
    if not isinstance(value, str):
        return f"must be a string (got {shown(value)})"
    stripped = value.strip()
    if not stripped:
        return "must not be blank"
    if len(stripped) > MAX_PROMPT_CHARS:
        return f"must be at most {MAX_PROMPT_CHARS} characters (got {len(stripped)})"
    return None


def choice_problem(value: Any, allowed: tuple[str, ...]) -> str | None:
    """Say what is wrong with ``value`` as one of ``allowed`` (``None`` meaning unset is fine), or return ``None``."""
    if value is None or value in allowed:
        return None
    return f"must be one of {', '.join(allowed)} (got {shown(value)})"


def imagen_input_problems(
    prompt: Any, aspect_ratio: Any, person_generation: Any, aspect_ratios: tuple[str, ...] = ASPECT_RATIOS
) -> list[str]:
    """
    Return every problem of an Imagen input, one ``field: problem`` line each.

    :param aspect_ratios: the ratios the call's models take (:func:`chain_aspect_ratios`); Imagen's by default.
    """
    problems = [
        ("prompt", prompt_problem(prompt)),
        ("aspect_ratio", choice_problem(aspect_ratio, aspect_ratios)),
        ("person_generation", choice_problem(person_generation, PERSON_GENERATION)),
    ]
    return [f"{name}: {problem}" for name, problem in problems if problem]


def check_model_id(model: Any, field: str = "model") -> str:
    """
    Return ``model`` if it is a well-formed Workers AI model id.

    That is ``vendor/model`` for third-party models such as ``google/imagen-4``, ``@cf/...`` or ``@hf/...`` for
    Cloudflare's own.

    :raises InvalidInputError: naming ``field`` and what is allowed.
    """
    if isinstance(model, str) and len(model) <= MAX_MODEL_ID_CHARS:
        pattern = _CLOUDFLARE_MODEL if model.startswith("@") else _PROXIED_MODEL
        if pattern.fullmatch(model):
            return model
    raise InvalidInputError(
        f"Invalid {field}: expected a Workers AI model id such as {IMAGEN_4!r} or '@cf/vendor/model' "
        f"(letters, digits, '-', '_', '.' in '/'-separated parts, none starting with '.'), got {shown(model)}"
    )


def model_chain(model: Any, fallback_models: Any) -> tuple[str, ...]:
    """
    Return the models one call tries, in order: ``model``, then each of ``fallback_models``.

    :raises InvalidInputError: naming the bad id (``fallback_models[1]``), a model named twice, or a chain
        longer than :data:`MAX_MODELS`.
    """
    chain = [check_model_id(model)]
    if fallback_models is None:
        return tuple(chain)
    if isinstance(fallback_models, str) or not isinstance(fallback_models, (list, tuple)):
        raise InvalidInputError(
            f"Invalid fallback_models: expected a list of model ids such as ['@cf/black-forest-labs/flux-1-schnell'], "
            f"got {shown(fallback_models)}"
        )
    for index, fallback in enumerate(fallback_models):
        if check_model_id(fallback, f"fallback_models[{index}]") in chain:
            raise InvalidInputError(f"Invalid fallback_models[{index}]: {fallback!r} is already in the chain {chain}")
        chain.append(fallback)
    if len(chain) > MAX_MODELS:
        raise InvalidInputError(
            f"Invalid fallback_models: at most {MAX_MODELS - 1} fallbacks (each may spend its retries), "
            f"got {len(chain) - 1}"
        )
    return tuple(chain)


def chain_aspect_ratios(chain: tuple[str, ...]) -> tuple[str, ...]:
    """
    Return the aspect ratios every model of ``chain`` takes, in the first model's order.

    A cataloged model takes its own (:func:`.catalog.aspect_ratios_for`: Nano Banana takes more than Imagen); a model
    outside the catalog, Imagen's.
    """
    from airflow_provider_imagen._cloudflare import catalog  # not at import: DAG parsing rarely needs it

    # Imagen's ratios are the constants: the common chain is checked at parse time without reading the catalog.
    allowed = [
        ASPECT_RATIOS if model == IMAGEN_4 else catalog.aspect_ratios_for(model) or ASPECT_RATIOS for model in chain
    ]
    return tuple(ratio for ratio in allowed[0] if all(ratio in other for other in allowed[1:]))


def check_aspect_ratio(aspect_ratio: Any, chain: tuple[str, ...]) -> None:
    """
    Check ``aspect_ratio`` against the models of ``chain`` (``None`` means the model's default).

    :raises InvalidInputError: naming the ratios every model of the chain takes.
    """
    problem = choice_problem(aspect_ratio, chain_aspect_ratios(chain))
    if problem:
        raise InvalidInputError(f"Invalid Imagen input: aspect_ratio: {problem}")


def returns_bytes(model: str) -> bool:
    """Cloudflare's own text-to-image models answer with image bytes or base64, not a URL."""
    return model.startswith(CLOUDFLARE_MODEL_PREFIXES)


def first_bytes_model(chain: tuple[str, ...]) -> tuple[int, str] | None:
    """
    Find the first model of ``chain`` that answers with image bytes.

    :return: its index and the argument that named it (``model`` or ``fallback_models[i]``); ``None`` when
        every model answers with a URL.
    """
    for index, model in enumerate(chain):
        if returns_bytes(model):
            return index, "model" if index == 0 else f"fallback_models[{index - 1}]"
    return None


def _is_literal(value: object) -> bool:
    """Tell whether ``value`` is a plain string that no template will change (checked at DAG parse time)."""
    return isinstance(value, str) and "{{" not in value and "{%" not in value


def check_literal_inputs(
    prompt: object,
    aspect_ratio: object,
    person_generation: object,
    model: object,
    fallback_models: object = None,
    model_inputs: object = None,
) -> None:
    """
    Reject plainly wrong literal arguments when the DAG is parsed, long before a run.

    The words are the same as a rendered value gets in ``execute()``. ``aspect_ratio`` and ``model_inputs`` are
    checked against the chain's models once the chain is literal (Nano Banana takes more ratios than Imagen).
    """
    literal = [value if _is_literal(value) else None for value in (prompt, aspect_ratio, person_generation)]
    chain: tuple[str, ...] | None = (IMAGEN_4,) if model is None else None  # None: the operators' default
    if _is_literal(model):
        check_model_id(model)
        if not _has_template(fallback_models):
            chain = model_chain(model, fallback_models)
    # A templated chain: any ratio some model takes, until execute() knows the models.
    if chain is not None:
        ratios = chain_aspect_ratios(chain)
    else:
        from airflow_provider_imagen._cloudflare.catalog import SIZED_ASPECT_RATIOS as ratios
    problems = imagen_input_problems(literal[0] if literal[0] is not None else "-", literal[1], literal[2], ratios)
    if problems:
        raise InvalidInputError("Invalid Imagen input: " + "; ".join(problems))
    # Imagen alone, without model_inputs, has nothing more to check: the common DAG never reads the catalog here.
    plain_imagen = chain == (IMAGEN_4,) and not model_inputs
    if chain is not None and not plain_imagen and _is_literal_mapping(model_inputs):
        from airflow_provider_imagen._cloudflare.fallback import chain_inputs

        chain_inputs(chain, "-", literal[1], literal[2], model_inputs)  # type: ignore[arg-type]


def _is_literal_mapping(value: object) -> bool:
    """Tell whether ``value`` is a mapping (or ``None``) whose keys and values no template will change."""
    if value is None:
        return True
    if not isinstance(value, Mapping):
        return not _has_template(value)  # a non-mapping is refused by the check, naming the field
    return not any(_has_template(key) or _has_template(item) for key, item in value.items())


def _has_template(value: object) -> bool:
    """Tell whether a template (a string, or a list or mapping holding one) may still change when rendered."""
    if isinstance(value, (list, tuple)):
        return any(_has_template(item) for item in value)
    if isinstance(value, Mapping):
        return any(_has_template(key) or _has_template(item) for key, item in value.items())
    return isinstance(value, str) and not _is_literal(value)


def check_max_images(max_images: object) -> None:
    """Check that a spend limit is a whole number of images, at least one."""
    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1):
        raise InvalidInputError(f"Invalid max_images: must be a whole number of at least 1, got {max_images!r}")


def unset_if_empty(value: Any) -> Any:
    """Read a template that renders to ``""`` as "not set"; any other value is validated as it is."""
    return None if value == "" else value
