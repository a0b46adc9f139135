"""
The text-to-image models Workers AI serves, each with Cloudflare's published input schema, so a pipeline can
switch models with one argument and have a model's own inputs (``seed``, ``steps``, ``negative_prompt``,
sizes) checked before any request is sent, and billed.

The schemas are data, in ``text_to_image_models.json`` beside this module, each with where it was read and
when (``docs/models.md`` is the table generated from it). The emulator reads the same file and checks it with
code of its own, so the two statements of a rule test each other.

- :func:`check_model_inputs`: a model's own inputs, checked against its schema.
- :func:`request_input`: the ``input`` object one request sends, ``aspect_ratio`` mapped to sizes.
- :func:`fit_inputs_for`: the inputs one model of a fallback chain takes, and the ones it drops.
- :func:`alternatives`: models to suggest when Cloudflare no longer serves one.
- :func:`body_form`, :func:`multipart_fields`: JSON, or the multipart form FLUX.2 takes.

Cheap to import (no httpx, no pydantic, no Airflow): the error type is imported when an error is raised.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast

from airflow_provider_imagen.constants import IMAGE_SIZES

FieldType = Literal["string", "integer", "number", "boolean", "array", "binary"]
#: How a model answers: a URL to download (proxied models), base64 in ``result.image``, or the image bytes.
OutputForm = Literal["url", "base64", "binary"]
BodyForm = Literal["json", "multipart"]
#: ``unknown`` where Cloudflare does not say (or says wrongly): sniff the bytes.
ImageFormat = Literal["png", "jpeg", "unknown"]
#: How a model is told its size: an ``aspect_ratio`` field, ``width``/``height`` in pixels, or not at all.
SizeControl = Literal["aspect_ratio", "width_height", "fixed"]
Route = Literal["proxied", "workers-ai"]

DATA_FILE = Path(__file__).with_name("text_to_image_models.json")

#: Inputs with a parameter of their own in the provider: never inside ``model_inputs``.
RESERVED_INPUTS: Mapping[str, str] = MappingProxyType(
    {
        "prompt": "the prompt parameter",
        "aspect_ratio": "the aspect_ratio parameter",
        "person_generation": "the person_generation parameter",
    }
)

#: Sizes are multiples of 64 pixels: SDXL needs multiples of 8, FLUX of 16, and Google's Imagen 4 sizes (which
#: :func:`size_for` reuses, so a fallback chain's images match) are all multiples of 64.
SIZE_MULTIPLE = 64
#: Pixels of the size an aspect ratio outside Imagen's table maps to: about one megapixel, as Imagen's.
_TARGET_PIXELS = 1024 * 1024
#: Aspect ratios a model sized in pixels can be given: Imagen's five and the wider ones Nano Banana takes.
SIZED_ASPECT_RATIOS: tuple[str, ...] = (*IMAGE_SIZES, "2:3", "3:2", "4:5", "5:4", "21:9")
#: The most bytes one binary input (a reference image) may hold: Cloudflare refuses bodies over 10 MB.
MAX_BINARY_BYTES = 10 * 1024 * 1024
#: Suggested for a model outside the catalog that Cloudflare does not serve, after its vendor's models.
DEFAULT_ALTERNATIVES: tuple[str, ...] = (
    "google/nano-banana-2",
    "@cf/black-forest-labs/flux-1-schnell",
    "@cf/leonardo/lucid-origin",
)
_MAX_ALTERNATIVES = 4


@dataclass(frozen=True)
class InputField:
    """
    One input of a model's schema.

    :param name: the field's name in the request.
    :param type: ``string``, ``integer``, ``number``, ``boolean``, ``array``, or ``binary`` (bytes, sent as a
        multipart file).
    :param minimum: the lowest number allowed.
    :param maximum: the highest number allowed.
    :param min_length: the fewest characters a string may have.
    :param max_length: the most characters a string may have.
    :param max_items: the most items an array may have.
    :param enum: the only strings allowed.
    :param default: the model's default when the field is left out (``None``: unstated).
    :param items: the schema of an array's items.
    :param description: what it does, in Cloudflare's words where they gave some.
    """

    name: str
    type: FieldType
    minimum: float | None = None
    maximum: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    max_items: int | None = None
    enum: tuple[str, ...] | None = None
    default: Any = None
    items: InputField | None = None
    description: str = ""

    def allowed(self) -> str:
        """Return what the field allows, in words: ``1-8``, ``one of 1K, 2K, 4K``, ``a string``."""
        if self.enum is not None:
            return "one of " + ", ".join(self.enum)
        if self.type in ("integer", "number"):
            what = "whole numbers" if self.type == "integer" else "numbers"
            if self.minimum is not None and self.maximum is not None:
                return f"{_number(self.minimum)}-{_number(self.maximum)}"
            if self.minimum is not None:
                return f"{what} from {_number(self.minimum)}"
            if self.maximum is not None:
                return f"{what} up to {_number(self.maximum)}"
            return what
        if self.type == "string":
            if self.max_length is not None:
                return f"a string of {self.min_length or 0}-{self.max_length} characters"
            return "a non-empty string" if self.min_length else "a string"
        if self.type == "boolean":
            return "true or false"
        if self.type == "binary":
            return f"image bytes (at most {MAX_BINARY_BYTES // (1024 * 1024)} MB)"
        items = f" of {self.items.allowed()}" if self.items is not None else ""
        most = f"at most {self.max_items} " if self.max_items is not None else ""
        return f"a list of {most}items{items}"


@dataclass(frozen=True)
class ModelSource:
    """
    Where a model's schema was read, and when.

    :param url: the page (or changelog, or issue) that states it.
    :param gathered: the date it was read (ISO).
    :param repository: the repository of the schema file, when it was read from one.
    :param path: the schema file's path in it.
    :param commit: the commit it was read at.
    :param schema_url: the raw JSON schema Cloudflare publishes for it.
    :param also: other versions or sources consulted.
    """

    url: str | None
    gathered: str
    repository: str | None = None
    path: str | None = None
    commit: str | None = None
    schema_url: str | None = None
    also: str | None = None

    def cite(self) -> str:
        """Return the source in one line: ``repository path@commit`` or the URL."""
        if self.repository and self.path:
            at = f"@{self.commit[:12]}" if self.commit else ""
            return f"{self.repository} {self.path}{at}"
        return self.url or "-"


@dataclass(frozen=True)
class TextToImageModel:
    """
    A text-to-image model of Workers AI and the schema of its input.

    :param id: the model id, as the request names it.
    :param label: its name for people.
    :param vendor: who makes it.
    :param route: ``proxied`` (third-party, ``POST .../ai/run`` with the model in the body, answers in the
        ``state`` shape) or ``workers-ai`` (Cloudflare's own, ``POST .../ai/run/{model}``, the v4 envelope).
    :param body: ``json``, or ``multipart`` (form data, as FLUX.2 takes even for a prompt alone).
    :param output: ``url``, ``base64`` (JSON ``result.image``) or ``binary`` (the image bytes as the body).
    :param image_format: ``png``, ``jpeg``, or ``unknown`` (sniff the bytes).
    :param sizes: ``aspect_ratio``, ``width_height`` or ``fixed``.
    :param fields: every input it takes, ``prompt`` included.
    :param required: the inputs it requires.
    :param alternatives: catalog models to suggest when it is not served.
    :param source: where its schema was read.
    :param fixed_size: ``(width, height)`` of a model whose size cannot be chosen.
    :param status: what its maker says of its future (e.g. a deprecation), if anything.
    :param notes: what the schema does not say, or says wrongly.
    """

    id: str
    label: str
    vendor: str
    route: Route
    body: BodyForm
    output: OutputForm
    image_format: ImageFormat
    sizes: SizeControl
    fields: Mapping[str, InputField]
    required: tuple[str, ...]
    alternatives: tuple[str, ...]
    source: ModelSource
    fixed_size: tuple[int, int] | None = None
    status: str = ""
    notes: str = ""

    def __hash__(self) -> int:
        # The generated hash would fail on the fields mapping; a model is known by its id.
        return hash(self.id)

    @property
    def takes_size(self) -> bool:
        """Whether the model takes ``width`` and ``height`` in pixels."""
        return self.sizes == "width_height"

    @property
    def model_inputs(self) -> tuple[str, ...]:
        """The inputs ``model_inputs`` may set: all but those with a parameter of their own."""
        return tuple(name for name in self.fields if name not in RESERVED_INPUTS)

    @property
    def aspect_ratios(self) -> tuple[str, ...]:
        """The ``aspect_ratio`` values the model can honour (none for a fixed size)."""
        field = self.fields.get("aspect_ratio")
        if field is not None and field.enum is not None:
            return tuple(ratio for ratio in field.enum if ratio != "match_input_image")
        return SIZED_ASPECT_RATIOS if self.takes_size else ()


# --- Loading the data ------------------------------------------------------------------------------------


def _field(name: str, raw: Mapping[str, Any]) -> InputField:
    unknown = set(raw) - {
        "type",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "maxItems",
        "enum",
        "default",
        "items",
        "description",
    }
    if unknown or raw.get("type") not in ("string", "integer", "number", "boolean", "array", "binary"):
        raise ValueError(
            f"{DATA_FILE.name}: field {name!r}: unknown keys {sorted(unknown)} or type {raw.get('type')!r}"
        )
    enum = raw.get("enum")
    items = raw.get("items")
    return InputField(
        name=name,
        type=raw["type"],
        minimum=raw.get("minimum"),
        maximum=raw.get("maximum"),
        min_length=raw.get("minLength"),
        max_length=raw.get("maxLength"),
        max_items=raw.get("maxItems"),
        enum=tuple(enum) if enum is not None else None,
        default=raw.get("default"),
        items=_field(f"{name}[]", items) if items is not None else None,
        description=raw.get("description", ""),
    )


def _model(raw: Mapping[str, Any]) -> TextToImageModel:
    fields = {name: _field(name, spec) for name, spec in raw["fields"].items()}
    fixed = raw.get("fixed_size")
    model = TextToImageModel(
        id=raw["id"],
        label=raw["label"],
        vendor=raw["vendor"],
        route=raw["route"],
        body=raw["body"],
        output=raw["output"],
        image_format=raw["image_format"],
        sizes=raw["sizes"],
        fields=MappingProxyType(fields),
        required=tuple(raw["required"]),
        alternatives=tuple(raw.get("alternatives", ())),
        source=ModelSource(**raw["source"]),
        fixed_size=(int(fixed[0]), int(fixed[1])) if fixed else None,
        status=raw.get("status", ""),
        notes=raw.get("notes", ""),
    )
    checks = {
        "route": model.route in ("proxied", "workers-ai"),
        "body": model.body in ("json", "multipart"),
        "output": model.output in ("url", "base64", "binary"),
        "image_format": model.image_format in ("png", "jpeg", "unknown"),
        "sizes": model.sizes in ("aspect_ratio", "width_height", "fixed"),
        "required": set(model.required) <= set(fields) and "prompt" in model.required,
        "width_height": not model.takes_size or {"width", "height"} <= set(fields),
        "fixed_size": (model.sizes == "fixed") == (model.fixed_size is not None),
        "route prefix": (model.route == "workers-ai") == model.id.startswith(("@cf/", "@hf/")),
    }
    broken = [name for name, ok in checks.items() if not ok]
    if broken:
        raise ValueError(f"{DATA_FILE.name}: model {model.id!r}: inconsistent {', '.join(broken)}")
    return model


def _load() -> tuple[str, Mapping[str, TextToImageModel]]:
    data = json.loads(DATA_FILE.read_text(encoding="utf-8"))
    models = {model.id: model for model in map(_model, data["models"])}
    for model in models.values():
        strangers = [other for other in model.alternatives if other not in models or other == model.id]
        if strangers:
            raise ValueError(f"{DATA_FILE.name}: model {model.id!r}: alternatives outside the catalog: {strangers}")
    return data["gathered"], MappingProxyType(models)


#: When the schemas were gathered (ISO date).
GATHERED: str
#: Every cataloged text-to-image model, by id, in the data file's order.
TEXT_TO_IMAGE_MODELS: Mapping[str, TextToImageModel]
GATHERED, TEXT_TO_IMAGE_MODELS = _load()


# --- Checking inputs -------------------------------------------------------------------------------------


def is_cataloged(model: str) -> bool:
    """Return whether ``model`` is in the catalog (its inputs are checked); others pass through unchecked."""
    return model in TEXT_TO_IMAGE_MODELS


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
    inputs = _as_mapping(model_inputs, field)
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
    Return the provider parameters that were set but that ``model`` cannot honour, for the caller's log:
    ``aspect_ratio`` for a model of fixed size, ``person_generation`` for a model without it.

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
    Return the inputs ``model`` takes out of ``model_inputs``, and the names it does not take (sorted), for a
    fallback chain whose models take different inputs: the caller logs what it dropped. The kept values are
    checked: call this for every model of a chain before its first request, so a value one fallback cannot
    take fails the task before anything is billed.

    :param model: the model id; a model outside the catalog keeps everything.
    :param model_inputs: the call's model inputs.
    :raises InvalidInputError: on a reserved name, or a kept value the model refuses.
    """
    inputs = _as_mapping(model_inputs, "model_inputs")
    spec = TEXT_TO_IMAGE_MODELS.get(model)
    if spec is None:
        return check_model_inputs(model, inputs), []
    dropped = sorted(key for key in inputs if key not in spec.fields and key not in RESERVED_INPUTS)
    kept = {key: value for key, value in inputs.items() if key not in dropped}
    return check_model_inputs(model, kept), dropped


def alternatives(model: str) -> list[str]:
    """
    Return cataloged models to suggest when Cloudflare says ``model`` does not exist or is no longer served:
    the catalog's choice for a cataloged model, else models of the same vendor, then general ones.

    :param model: the model id Cloudflare refused.
    """
    spec = TEXT_TO_IMAGE_MODELS.get(model)
    if spec is not None:
        return list(spec.alternatives)
    vendor = model.rsplit("/", 1)[0] + "/" if "/" in model else None
    same_vendor = [other for other in TEXT_TO_IMAGE_MODELS if vendor and other.startswith(vendor)]
    suggested = [other for other in (*same_vendor, *DEFAULT_ALTERNATIVES) if other != model]
    return list(dict.fromkeys(suggested))[:_MAX_ALTERNATIVES]


#: Cloudflare's codes for a model it does not serve: 5007 "No such model" (400), 3042 "Invalid model ID" (404).
#: 7003 means "Model not found" on a 404 only: on a 400 it is an input error.
_UNSERVED_CODES = frozenset({"5007", "3042"})


def is_unserved(status: int | None, code: int | str | None, message: str = "") -> bool:
    """
    Return whether Cloudflare's error says the model does not exist or is no longer served (never retried;
    see :func:`unserved_message`).

    :param status: the HTTP status.
    :param code: Cloudflare's error code.
    :param message: Cloudflare's message.
    """
    # A proxied model's failed state carries its code as a string.
    if str(code) in _UNSERVED_CODES or (str(code) == "7003" and status == 404):
        return True
    return status in (400, 404) and "no such model" in message.lower()


def unserved_message(model: str, cloudflare_message: str) -> str:
    """
    Return the plain-words error for a model Cloudflare does not serve, with the models to try instead.

    :param model: the model id Cloudflare refused.
    :param cloudflare_message: what Cloudflare said, kept at the end.
    """
    spec = TEXT_TO_IMAGE_MODELS.get(model)
    known = f" ({spec.status})" if spec is not None and spec.status else ""
    instead = ", ".join(alternatives(model))
    return (
        f"Cloudflare does not serve the model {model!r}, or no longer does{known}. "
        f"Pass another model, e.g. one of: {instead}. Cloudflare said: {cloudflare_message}"
    )


# --- The body --------------------------------------------------------------------------------------------


def body_form(model: str) -> BodyForm:
    """Return how ``model`` takes its input: ``json`` (every model outside the catalog too) or ``multipart``."""
    spec = TEXT_TO_IMAGE_MODELS.get(model)
    return spec.body if spec is not None else "json"


MultipartField = tuple[str, tuple[str | None, bytes, str | None]]


def multipart_fields(model: str, input: Mapping[str, Any]) -> list[MultipartField]:
    """
    Return ``input`` as the fields of a multipart form, in httpx's ``files=`` form: text fields without a
    file name (``(name, (None, b"value", None))``), bytes as files named after their field, typed by their
    first bytes. ``httpx.Client.build_request("POST", url, files=fields)`` makes the body and its boundary.

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


# --- docs/models.md --------------------------------------------------------------------------------------


def models_table() -> str:
    """Return ``docs/models.md``: the catalog as Markdown tables (``scripts/models_table.py`` writes it)."""
    lines = [
        "# Text-to-image models",
        "",
        "<!-- Generated by scripts/models_table.py from airflow_provider_imagen/_cloudflare/text_to_image_models.json;"
        " do not edit by hand. -->",
        "",
        f"The models the provider knows, with the inputs Cloudflare publishes for each (gathered {GATHERED}).",
        "`prompt`, `aspect_ratio` and `person_generation` are the provider's own parameters; every other input",
        "goes in `model_inputs` and is checked against the model's schema before any request. A model id not",
        "listed here is sent as given, unchecked.",
        "",
        "| model | vendor | body | answer | image | size | model_inputs |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in TEXT_TO_IMAGE_MODELS.values():
        size = {
            "aspect_ratio": "aspect_ratio",
            "width_height": "width/height from aspect_ratio",
            "fixed": "x".join(map(str, model.fixed_size or ())),
        }[model.sizes]
        inputs = ", ".join(f"`{name}`" for name in model.model_inputs) or "-"
        lines.append(
            f"| `{model.id}` | {model.vendor} | {model.body} | {model.output} | {model.image_format} | {size} "
            f"| {inputs} |"
        )
    for model in TEXT_TO_IMAGE_MODELS.values():
        lines += ["", f"## {model.label} (`{model.id}`)", ""]
        if model.status:
            lines += [f"Status: {model.status}", ""]
        lines += ["| input | type | allowed | default | required |", "|---|---|---|---|---|"]
        for field in model.fields.values():
            default = "-" if field.default is None else f"`{json.dumps(field.default)}`"
            required = "yes" if field.name in model.required else ""
            lines.append(f"| `{field.name}` | {field.type} | {field.allowed()} | {default} | {required} |")
        lines.append("")
        if model.notes:
            lines += [model.notes, ""]
        source = model.source
        where = source.cite()
        if source.url and where != source.url:
            where += f"; {source.url}"
        lines.append(f"Source: {where} (gathered {source.gathered}).")
    return "\n".join(lines) + "\n"


# --- Helpers ---------------------------------------------------------------------------------------------


def _invalid(message: str) -> Exception:
    # Imported here: errors.py imports Airflow, and this module must stay cheap to import.
    from airflow_provider_imagen.exceptions import InvalidInputError

    return InvalidInputError(message)


def _as_mapping(model_inputs: Any, field: str) -> Mapping[str, Any]:
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
    """What is wrong with ``value`` for ``field`` (``None`` if nothing), and the value to send."""
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
        return f"{_number(value)} is out of range"
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


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
