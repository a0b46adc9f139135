"""
A model's own inputs, checked against its cataloged schema, and the request body shaped from them.

- :func:`check_model_inputs`: a model's own inputs, checked against its schema.
- :func:`request_input`: the ``input`` object one request sends, ``aspect_ratio`` mapped to sizes.
- :func:`fit_inputs_for`: the inputs one model of a fallback chain takes, and the ones it drops.
- :func:`ignored_parameters`: the provider parameters a model cannot honour, for the caller's log.
- :func:`multipart_fields`: the multipart form FLUX.2 takes, in httpx's ``files=`` form.

Cheap to import (no httpx, no pydantic, no Airflow): the error type is imported when an error is raised.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, cast

from airflow_provider_imagen._cloudflare.catalog import (
    MAX_BINARY_BYTES,
    RESERVED_INPUTS,
    SIZED_ASPECT_RATIOS,
    TEXT_TO_IMAGE_MODELS,
    InputField,
    TextToImageModel,
    number_text,
)
from airflow_provider_imagen.constants import IMAGE_SIZES

#: Sizes are multiples of 64 pixels: SDXL needs multiples of 8, FLUX of 16, and Google's Imagen 4 sizes (which
#: :func:`size_for` reuses, so a fallback chain's images match) are all multiples of 64.
SIZE_MULTIPLE = 64
#: Pixels of the size an aspect ratio outside Imagen's table maps to: about one megapixel, as Imagen's.
_TARGET_PIXELS = 1024 * 1024


def check_model_inputs(
    model: str, model_inputs: Mapping[str, Any] | None, *, field: str = "model_inputs"
) -> dict[str, Any]:
    """
    Check a model's own inputs against its schema, before any request.

    Every problem is reported at once, each naming the field and what is allowed. A value of ``None`` means
    "not set" and is left out (a template may render to it). A model outside the catalog gets its inputs
    unchecked, but for their form (a mapping with string keys) and the reserved names.

    :param model: the model id.
    :param model_inputs: inputs such as ``{"seed": 42, "steps": 4}``.
    :param field: the argument's name in messages (``model_inputs``, or ``model_inputs[2]`` in a batch).
    :return: the inputs to send, a plain ``dict`` of copies.
    :raises InvalidInputError: on an unknown field, a reserved one, a wrong type or a value out of range.
    """
    inputs = as_mapping(model_inputs, field)
    spec = TEXT_TO_IMAGE_MODELS.get(model)
    problems: list[str] = []
    checked: dict[str, Any] = {}
    for key, value in inputs.items():
        if key in RESERVED_INPUTS:
            problems.append(f"{field}[{key!r}]: give it as {RESERVED_INPUTS[key]}, not inside {field}")
        elif value is None:
            continue
        elif spec is None:
            checked[key] = value
        elif key not in spec.fields:
            problems.append(f"{field}[{key!r}]: {model} takes no {key!r}; {_takes(spec)}")
        else:
            problem, value = _check_value(spec.fields[key], value)
            if problem:
                problems.append(f"{field}[{key!r}]: {problem} for {model}: allowed {spec.fields[key].allowed()}")
            checked[key] = value
    if problems:
        raise _invalid("; ".join(problems))
    return checked


def request_input(
    model: str,
    prompt: str,
    aspect_ratio: str | None = None,
    person_generation: str | None = None,
    model_inputs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """
    Return the ``input`` object of one request to ``model``.

    - ``aspect_ratio`` goes as it is to a model with an ``aspect_ratio`` input; a model sized in pixels gets the
      ``width`` and ``height`` of :func:`size_for` instead, unless ``model_inputs`` set them (explicit sizes
      win); a model of fixed size ignores it (see :func:`ignored_parameters`).
    - ``person_generation`` goes only to a model that takes it.
    - A model outside the catalog gets everything as given, unchecked (the caller warns once).

    :param model: the model id.
    :param prompt: what to draw; sent stripped.
    :param aspect_ratio: e.g. ``16:9``; the model's default when ``None``.
    :param person_generation: ``dont_allow``, ``allow_adult`` or ``allow_all``, for models that take it.
    :param model_inputs: the model's own inputs (:func:`check_model_inputs`).
    :raises InvalidInputError: naming each bad field.
    """
    inputs = check_model_inputs(model, model_inputs)
    spec = TEXT_TO_IMAGE_MODELS.get(model)
    if spec is None:
        body: dict[str, Any] = {"prompt": prompt}
        if aspect_ratio is not None:
            body["aspect_ratio"] = aspect_ratio
        if person_generation is not None:
            body["person_generation"] = person_generation
        return {**body, **inputs}
    problems = _parameter_problems(spec, prompt, aspect_ratio, person_generation)
    if problems:
        raise _invalid(f"Invalid input for {model}: " + "; ".join(problems))
    body = {"prompt": prompt.strip()}
    if aspect_ratio is not None:
        if "aspect_ratio" in spec.fields:
            body["aspect_ratio"] = aspect_ratio
        elif spec.takes_size:
            width, height = size_for(model, aspect_ratio)
            inputs.setdefault("width", width)
            inputs.setdefault("height", height)
    if person_generation is not None and "person_generation" in spec.fields:
        body["person_generation"] = person_generation
    return {**body, **inputs}


def ignored_parameters(model: str, aspect_ratio: str | None = None, person_generation: str | None = None) -> list[str]:
    """
    Return the provider parameters that were set but that ``model`` cannot honour, for the caller's log.

    That is ``aspect_ratio`` for a model of fixed size, ``person_generation`` for a model without it.

    :param model: the model id (a model outside the catalog honours everything as far as we know).
    :param aspect_ratio: the call's aspect ratio.
    :param person_generation: the call's person generation setting.
    """
    spec = TEXT_TO_IMAGE_MODELS.get(model)
    if spec is None:
        return []
    ignored = []
    if aspect_ratio is not None and not spec.aspect_ratios:
        ignored.append("aspect_ratio")
    if person_generation is not None and "person_generation" not in spec.fields:
        ignored.append("person_generation")
    return ignored


def size_for(model: str, aspect_ratio: str) -> tuple[int, int]:
    """
    Return the ``(width, height)`` a model sized in pixels is asked for, for ``aspect_ratio``.

    Imagen 4's 1K size for its five ratios (so the images of a fallback chain match), else about one
    megapixel of that ratio; each side the nearest multiple of :data:`SIZE_MULTIPLE` within the model's
    bounds, scaled down together when one side would exceed them.

    :param model: a cataloged model that takes ``width`` and ``height``.
    :param aspect_ratio: one of :data:`SIZED_ASPECT_RATIOS`.
    :raises InvalidInputError: for another model or aspect ratio.
    """
    spec = TEXT_TO_IMAGE_MODELS.get(model)
    if spec is None or not spec.takes_size:
        raise _invalid(f"aspect_ratio: {model} is not sized in pixels")
    if aspect_ratio not in SIZED_ASPECT_RATIOS:
        raise _invalid(f"aspect_ratio: {aspect_ratio!r} is not one of {', '.join(SIZED_ASPECT_RATIOS)}")
    if aspect_ratio in IMAGE_SIZES:
        width, height = IMAGE_SIZES[aspect_ratio]
    else:
        across, down = (int(part) for part in aspect_ratio.split(":"))
        width = round(math.sqrt(_TARGET_PIXELS * across / down))
        height = round(width * down / across)
    w_field, h_field = spec.fields["width"], spec.fields["height"]
    scale = min([1.0, *(f.maximum / side for f, side in ((w_field, width), (h_field, height)) if f.maximum)])
    return _fit_side(width * scale, w_field), _fit_side(height * scale, h_field)


def fit_inputs_for(model: str, model_inputs: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """
    Return the inputs ``model`` takes out of ``model_inputs``, and the names it does not take (sorted).

    For a fallback chain whose models take different inputs: the caller logs what it dropped. The kept values are
    checked: call this for every model of a chain before its first request, so a value one fallback cannot
    take fails the task before anything is billed.

    :param model: the model id; a model outside the catalog keeps everything.
    :param model_inputs: the call's model inputs.
    :raises InvalidInputError: on a reserved name, or a kept value the model refuses.
    """
    inputs = as_mapping(model_inputs, "model_inputs")
    spec = TEXT_TO_IMAGE_MODELS.get(model)
    if spec is None:
        return check_model_inputs(model, inputs), []
    dropped = sorted(key for key in inputs if key not in spec.fields and key not in RESERVED_INPUTS)
    kept = {key: value for key, value in inputs.items() if key not in dropped}
    return check_model_inputs(model, kept), dropped


MultipartField = tuple[str, tuple[str | None, bytes, str | None]]


def multipart_fields(model: str, input: Mapping[str, Any]) -> list[MultipartField]:
    """
    Return ``input`` as the fields of a multipart form, in httpx's ``files=`` form.

    Text fields go without a file name (``(name, (None, b"value", None))``), bytes as files named after their
    field, typed by their first bytes. ``httpx.Client.build_request("POST", url, files=fields)`` makes the
    body and its boundary.

    :param model: the model id (for messages).
    :param input: the input object (:func:`request_input`).
    :raises InvalidInputError: for a value a form cannot carry (a list, a mapping).
    """
    fields: list[MultipartField] = []
    for name, value in input.items():
        if isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
            fields.append((name, (name, data, _sniff(data))))
        elif isinstance(value, bool):
            fields.append((name, (None, b"true" if value else b"false", None)))
        elif isinstance(value, (str, int, float)):
            fields.append((name, (None, str(value).encode("utf-8"), None)))
        else:
            kind = type(value).__name__
            raise _invalid(f"model_inputs[{name!r}]: {model} takes a multipart form, which cannot carry a {kind}")
    return fields


# --- Helpers ----------------------------------------------------------------------------------------------------


def _invalid(message: str) -> Exception:
    # Imported here: the exceptions import Airflow, and this module must stay cheap to import.
    from airflow_provider_imagen.exceptions import InvalidInputError

    return InvalidInputError(message)


def as_mapping(model_inputs: Any, field: str) -> Mapping[str, Any]:
    """Return ``model_inputs`` as a mapping with string keys (``None``: empty), or refuse it naming ``field``."""
    if model_inputs is None:
        return {}
    if not isinstance(model_inputs, Mapping):
        raise _invalid(
            f"{field}: expected a mapping of the model's own inputs such as {{'seed': 42}}, "
            f"got {type(model_inputs).__name__}"
        )
    bad = [key for key in model_inputs if not isinstance(key, str)]
    if bad:
        raise _invalid(f"{field}: input names must be strings, got {_shown(bad[0])}")
    return cast("Mapping[str, Any]", model_inputs)


def _takes(spec: TextToImageModel) -> str:
    names = spec.model_inputs
    if not names:
        return "it takes nothing beyond prompt, aspect_ratio and person_generation"
    return "it takes: " + ", ".join(names)


def _check_value(field: InputField, value: Any) -> tuple[str | None, Any]:
    """Say what is wrong with ``value`` for ``field`` (``None`` if nothing), and return the value to send."""
    kind = field.type
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{_shown(value)} is not a whole number", value
        return _range_problem(field, value), value
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"{_shown(value)} is not a finite number", value
        return _range_problem(field, value), value
    if kind == "boolean":
        return (None if isinstance(value, bool) else f"{_shown(value)} is not true or false"), value
    if kind == "string":
        if not isinstance(value, str):
            return f"{_shown(value)} is not a string", value
        if field.enum is not None and value not in field.enum:
            return f"{_shown(value)} is not allowed", value
        if field.min_length is not None and len(value.strip()) < field.min_length:
            return f"{_shown(value)} is too short", value
        if field.max_length is not None and len(value) > field.max_length:
            return f"{len(value)} characters is too long", value
        return None, value
    if kind == "binary":
        if not isinstance(value, (bytes, bytearray, memoryview)):
            return f"{_shown(value)} is not bytes", value
        data = bytes(value)
        if not data or len(data) > MAX_BINARY_BYTES:
            return f"{len(data)} bytes is out of range", value
        return None, data
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        return f"{_shown(value)} is not a list", value
    if field.max_items is not None and len(value) > field.max_items:
        return f"{len(value)} items is too many", value
    if field.items is not None:
        for index, item in enumerate(value):
            problem, _ = _check_value(field.items, item)
            if problem:
                return f"item {index}: {problem}", value
    return None, list(value)


def _range_problem(field: InputField, value: float) -> str | None:
    low, high = field.minimum, field.maximum
    if (low is not None and value < low) or (high is not None and value > high):
        return f"{number_text(value)} is out of range"
    return None


def _fit_side(side: float, field: InputField) -> int:
    step = SIZE_MULTIPLE
    low = math.ceil(max(field.minimum or 0, step) / step) * step
    high = math.floor(field.maximum / step) * step if field.maximum is not None else None
    fitted = max(low, round(side / step) * step)
    if high is not None:
        fitted = min(fitted, high)
    return int(fitted)


def _parameter_problems(spec: TextToImageModel, prompt: Any, aspect_ratio: Any, person_generation: Any) -> list[str]:
    problems = []
    if not isinstance(prompt, str) or not prompt.strip():
        problems.append(f"prompt: must be a non-blank string (got {_shown(prompt)})")
    else:
        limit = spec.fields["prompt"].max_length
        if limit is not None and len(prompt.strip()) > limit:
            problems.append(f"prompt: {spec.id} takes at most {limit} characters (got {len(prompt.strip())})")
    if aspect_ratio is not None:
        allowed = spec.aspect_ratios or SIZED_ASPECT_RATIOS  # a fixed size ignores any well-formed ratio
        if aspect_ratio not in allowed:
            problems.append(f"aspect_ratio: {_shown(aspect_ratio)} is not one of {', '.join(allowed)}")
    people = spec.fields.get("person_generation")
    if person_generation is not None and people is not None and people.enum and person_generation not in people.enum:
        problems.append(f"person_generation: {_shown(person_generation)} is not one of {', '.join(people.enum)}")
    return problems


def _sniff(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
