"""
Cloudflare's input schema of each text-to-image model, and the form and size of each model's answer.

The schemas are enforced as Cloudflare enforces them. They are read from the same data file as the provider's
catalog (``_cloudflare/text_to_image_models.json``: Cloudflare's published schemas, with their sources) but
checked here by code of the emulator's own, in the words of Cloudflare's JSON-schema errors, so that the
provider's checks are tested against an independent reading of the same statement. Stricter than Cloudflare
may be in one way: a field the schema does not list is refused (Cloudflare may ignore it), so a test catches
an input that a model would silently drop.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_FILE = Path(__file__).resolve().parent.parent / "_cloudflare" / "text_to_image_models.json"
#: The emulator's own statement of Imagen 4's 1K sizes, per aspect ratio.
IMAGEN_SIZES = {
    "1:1": (1024, 1024),
    "3:4": (896, 1280),
    "4:3": (1280, 896),
    "9:16": (768, 1408),
    "16:9": (1408, 768),
}
#: How much larger than 1K the ``image_size``/``resolution`` tiers of Google's models are.
_TIERS = {"1K": 1, "2K": 2, "4K": 4}
_INTEGER = re.compile(r"-?\d{1,18}")


@dataclass(frozen=True)
class Model:
    """One model as the emulator serves it: its raw schema, and how it answers."""

    id: str
    route: str
    body: str
    output: str
    image_format: str
    sizes: str
    fields: dict[str, dict[str, Any]]
    required: tuple[str, ...]
    fixed_size: tuple[int, int] | None

    @property
    def proxied(self) -> bool:
        """Whether Cloudflare runs the model through AI Gateway (a third-party model)."""
        return self.route == "proxied"

    @property
    def multipart(self) -> bool:
        """Whether the model takes its input as a multipart form rather than JSON."""
        return self.body == "multipart"


def _load() -> dict[str, Model]:
    data = json.loads(DATA_FILE.read_text(encoding="utf-8"))
    models = {}
    for raw in data["models"]:
        fixed = raw.get("fixed_size")
        models[raw["id"]] = Model(
            id=raw["id"],
            route=raw["route"],
            body=raw["body"],
            output=raw["output"],
            image_format=raw["image_format"],
            sizes=raw["sizes"],
            fields=raw["fields"],
            required=tuple(raw["required"]),
            fixed_size=(fixed[0], fixed[1]) if fixed else None,
        )
    return models


MODELS: dict[str, Model] = _load()


def unlisted(model: Model, payload: Any) -> list[str]:
    """Return the inputs of ``payload`` that ``model``'s schema does not list, sorted."""
    return sorted(set(payload) - set(model.fields)) if isinstance(payload, dict) else []


def input_problem(model: Model, payload: Any) -> str | None:
    """Return what Cloudflare would say is wrong with ``payload`` as ``model``'s input, or ``None``."""
    if not isinstance(payload, dict):
        return "Type mismatch of '/', 'object' expected"
    missing = [name for name in model.required if name not in payload]
    if missing:
        return f"required properties at '/' are {', '.join(repr(name) for name in missing)}"
    extra = sorted(set(payload) - set(model.fields))
    if extra:
        return f"additional properties not allowed at '/': {', '.join(extra)}"
    for name, value in payload.items():
        problem = _value_problem(f"/{name}", model.fields[name], value)
        if problem:
            return problem
    return None


def _value_problem(path: str, schema: dict[str, Any], value: Any) -> str | None:
    kind = schema["type"]
    if kind == "integer" and (isinstance(value, bool) or not isinstance(value, int)):
        return f"Type mismatch of '{path}', 'integer' expected"
    if kind == "number" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return f"Type mismatch of '{path}', 'number' expected"
    if kind == "boolean" and not isinstance(value, bool):
        return f"Type mismatch of '{path}', 'boolean' expected"
    if kind == "binary" and not isinstance(value, bytes):
        return f"Type mismatch of '{path}', a file expected"
    if kind == "string":
        if not isinstance(value, str):
            return f"Type mismatch of '{path}', 'string' expected"
        if "enum" in schema and value not in schema["enum"]:
            return f"'{path}' must be one of {', '.join(schema['enum'])}"
        if len(value) < schema.get("minLength", 0) or (path == "/prompt" and not value.strip()):
            return f"'{path}' must be a non-empty string"
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            return f"'{path}' must NOT have more than {schema['maxLength']} characters"
    if kind in ("integer", "number"):
        if "minimum" in schema and value < schema["minimum"]:
            return f"'{path}' must be >= {schema['minimum']}"
        if "maximum" in schema and value > schema["maximum"]:
            return f"'{path}' must be <= {schema['maximum']}"
    if kind == "array":
        if not isinstance(value, list):
            return f"Type mismatch of '{path}', 'array' expected"
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            return f"'{path}' must NOT have more than {schema['maxItems']} items"
        for index, item in enumerate(value):
            problem = _value_problem(f"{path}/{index}", schema.get("items", {"type": type_name(item)}), item)
            if problem:
                return problem
    return None


def type_name(value: Any) -> str:
    """Return the JSON-schema type of ``value`` (for items a schema leaves open)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string" if isinstance(value, str) else "array"


def form_to_input(model: Model, form: dict[str, str | bytes]) -> tuple[dict[str, Any], str | None]:
    """
    Read a multipart form as ``model``'s input.

    Text fields are typed by the schema (forms carry only text), files are bytes. The second item is
    Cloudflare's words for a field that cannot be read.
    """
    payload: dict[str, Any] = {}
    for name, raw in form.items():
        kind = model.fields.get(name, {}).get("type", "string")
        if isinstance(raw, bytes):
            payload[name] = raw
        elif kind == "integer":
            if not _INTEGER.fullmatch(raw.strip()):
                return payload, f"Type mismatch of '/{name}', 'integer' expected"
            payload[name] = int(raw)
        elif kind == "number":
            try:
                payload[name] = float(raw)
            except ValueError:
                return payload, f"Type mismatch of '/{name}', 'number' expected"
            if not math.isfinite(payload[name]):
                return payload, f"Type mismatch of '/{name}', 'number' expected"
        elif kind == "boolean":
            if raw not in ("true", "false"):
                return payload, f"Type mismatch of '/{name}', 'boolean' expected"
            payload[name] = raw == "true"
        else:
            payload[name] = raw
    return payload, None


def image_size(model: Model, payload: dict[str, Any]) -> tuple[int, int]:
    """Return the ``(width, height)`` of the image ``model`` makes for ``payload``."""
    if model.fixed_size is not None:
        return model.fixed_size
    if model.sizes == "width_height":
        width = payload.get("width", model.fields["width"].get("default", 1024))
        height = payload.get("height", model.fields["height"].get("default", 1024))
        return max(1, width), max(1, height)
    ratio = payload.get("aspect_ratio") or "1:1"
    if ratio == "match_input_image":
        ratio = "1:1"
    if ratio in IMAGEN_SIZES:
        width, height = IMAGEN_SIZES[ratio]
    else:
        across, down = (int(part) for part in ratio.split(":"))
        width = round(math.sqrt(1024 * 1024 * across / down) / 64) * 64
        height = round(width * down / across / 64) * 64
    tier = _TIERS.get(payload.get("image_size") or payload.get("resolution") or "1K", 1)
    return width * tier, height * tier


def image_format(model: Model, payload: dict[str, Any]) -> str:
    """Return the Pillow format of ``model``'s image: ``output_format`` where the model takes it, else its own."""
    chosen = payload.get("output_format")
    if chosen:
        return {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[chosen]
    # "unknown" is served as PNG: the provider must sniff the bytes either way.
    return "JPEG" if model.image_format == "jpeg" else "PNG"
