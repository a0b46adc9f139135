"""
Reading the catalog's data file, ``text_to_image_models.json``, and checking that every model in it is whole.

Imported by :mod:`.catalog` on first use of the catalog, never at DAG-parse time for a plain Imagen DAG.
"""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from airflow_provider_imagen._cloudflare.catalog import DATA_FILE, InputField, ModelPrice, ModelSource, TextToImageModel

if TYPE_CHECKING:
    from collections.abc import Mapping


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
    price = raw.get("price")
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
        price=ModelPrice(**price) if price is not None else None,
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
        "price": model.price is None or (0 <= model.price.usd_per_image < 10 and bool(model.price.basis)),
    }
    broken = [name for name, ok in checks.items() if not ok]
    if broken:
        raise ValueError(f"{DATA_FILE.name}: model {model.id!r}: inconsistent {', '.join(broken)}")
    return model


def load() -> tuple[str, Mapping[str, TextToImageModel]]:
    """Read the data file and check it: when the schemas were gathered, and every model by id, in file order."""
    data = json.loads(DATA_FILE.read_text(encoding="utf-8"))
    models = {model.id: model for model in map(_model, data["models"])}
    for model in models.values():
        strangers = [other for other in model.alternatives if other not in models or other == model.id]
        if strangers:
            raise ValueError(f"{DATA_FILE.name}: model {model.id!r}: alternatives outside the catalog: {strangers}")
    return data["gathered"], MappingProxyType(models)
