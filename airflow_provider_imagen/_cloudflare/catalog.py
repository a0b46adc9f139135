"""
The text-to-image models Workers AI serves, each with Cloudflare's published input schema: the data and its lookups.

A pipeline switches models with one argument; a model's own inputs (``seed``, ``steps``, ``negative_prompt``, sizes)
are checked against its schema before any request is sent, and billed
(:mod:`~airflow_provider_imagen._cloudflare.catalog_inputs`).

The schemas are data, in ``text_to_image_models.json`` beside this module, each with where it was read and when
(``docs/models.md`` is the table ``scripts/models_table.py`` generates from it). The emulator reads the same file and
checks it with code of its own, so the two statements of a rule test each other.

- :data:`TEXT_TO_IMAGE_MODELS`: every cataloged model, by id; :func:`is_cataloged`.
- :func:`aspect_ratios_for`: the aspect ratios a model honours.
- :func:`alternatives`, :func:`is_unserved`, :func:`unserved_message`: when Cloudflare no longer serves a model.
- :func:`body_form`: JSON, or the multipart form FLUX.2 takes.

Cheap to import (no httpx, no pydantic, no Airflow).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from airflow_provider_imagen.constants import IMAGE_SIZES

if TYPE_CHECKING:
    from collections.abc import Iterator

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
                return f"{number_text(self.minimum)}-{number_text(self.maximum)}"
            if self.minimum is not None:
                return f"{what} from {number_text(self.minimum)}"
            if self.maximum is not None:
                return f"{what} up to {number_text(self.maximum)}"
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
class ModelPrice:
    """
    What one image of a model costs by default, from its published price, with where and when it was read.

    :param usd_per_image: the estimate, in US dollars, for the image that ``basis`` describes.
    :param basis: how the published unit prices make that figure (the size and step count it assumes).
    :param url: the page that publishes the unit prices.
    :param gathered: the date it was read (ISO).
    """

    usd_per_image: float
    basis: str
    url: str
    gathered: str


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
    :param price: its default price per image, where one is published (``None``: no estimate).
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
    price: ModelPrice | None = None

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


class _Catalog(Mapping[str, TextToImageModel]):
    """The catalog, read from its data file on first use: a DAG that never asks pays nothing at parse time."""

    def __init__(self) -> None:
        self._models: Mapping[str, TextToImageModel] | None = None
        self._gathered = ""

    def _data(self) -> Mapping[str, TextToImageModel]:
        if self._models is None:  # two threads may both read it: the same data, and the last one wins
            from airflow_provider_imagen._cloudflare.catalog_data import load

            self._gathered, self._models = load()
        return self._models

    @property
    def gathered(self) -> str:
        """Return when the schemas were gathered (ISO date)."""
        self._data()
        return self._gathered

    def __getitem__(self, model: str) -> TextToImageModel:
        return self._data()[model]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data())

    def __len__(self) -> int:
        return len(self._data())


#: Every cataloged text-to-image model, by id, in the data file's order.
TEXT_TO_IMAGE_MODELS: Mapping[str, TextToImageModel] = _Catalog()


def __getattr__(name: str) -> Any:
    # GATHERED, read with the catalog on first use.
    if name == "GATHERED":
        return TEXT_TO_IMAGE_MODELS.gathered  # type: ignore[attr-defined]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- Lookups ---------------------------------------------------------------------------------------------------


def is_cataloged(model: str) -> bool:
    """Return whether ``model`` is in the catalog (its inputs are checked); others pass through unchecked."""
    return model in TEXT_TO_IMAGE_MODELS


def aspect_ratios_for(model: str) -> tuple[str, ...] | None:
    """
    Return the ``aspect_ratio`` values ``model`` takes, or ``None`` for a model outside the catalog.

    A model of fixed size takes any ratio a model sized in pixels takes, and ignores it (the caller logs that).

    :param model: the model id.
    """
    spec = TEXT_TO_IMAGE_MODELS.get(model)
    if spec is None:
        return None
    return spec.aspect_ratios or SIZED_ASPECT_RATIOS


def alternatives(model: str) -> list[str]:
    """
    Return cataloged models to suggest when Cloudflare says ``model`` does not exist or is no longer served.

    The catalog's choice for a cataloged model, else models of the same vendor, then general ones.

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
    Return whether Cloudflare's error says the model does not exist or is no longer served.

    Such an error is never retried; a fallback chain moves on after it (see :func:`unserved_message`).

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


def body_form(model: str) -> BodyForm:
    """Return how ``model`` takes its input: ``json`` (every model outside the catalog too) or ``multipart``."""
    spec = TEXT_TO_IMAGE_MODELS.get(model)
    return spec.body if spec is not None else "json"


def number_text(value: float) -> str:
    """Return ``value`` as text, without ``.0`` for a whole number."""
    return str(int(value)) if float(value).is_integer() else str(value)
