"""Typed shapes of what goes to Cloudflare Workers AI and what comes back."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from airflow_provider_imagen._cloudflare.rules import imagen_input_problems, shown
from airflow_provider_imagen.constants import (
    ASPECT_RATIOS,
    IMAGE_SIZES,
    IMAGEN_4,
    PERSON_GENERATION,
)
from airflow_provider_imagen.exceptions import InvalidInputError

__all__ = [
    "ASPECT_RATIOS",
    "IMAGEN_4",
    "IMAGE_SIZES",
    "PERSON_GENERATION",
    "GatewayOptions",
    "GeneratedImage",
    "ImagenInput",
    "RunResult",
    "SkippedModel",
]

MAX_CONCURRENCY = 1000


def _describe(exc: ValidationError, what: str) -> str:
    """Turn a pydantic error into one line per field naming the field, the problem and the allowed values."""
    lines = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(part) for part in err["loc"]) or what
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        message = message.removeprefix("Value error, ")
        lines.append(f"{field}: {message} (got {shown(err.get('input'))})")
    return f"Invalid {what}: " + "; ".join(lines)


class ImagenInput(BaseModel):
    """
    The ``input`` object of an Imagen 4 request, checked before anything is sent.

    :param prompt: what to draw; required, not blank, at most 2,000 characters.
    :param aspect_ratio: one of ``1:1``, ``3:4``, ``4:3``, ``9:16``, ``16:9``; the model's default when omitted.
    :param person_generation: one of ``dont_allow``, ``allow_adult``, ``allow_all``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    prompt: str
    aspect_ratio: str | None = None
    person_generation: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _check(cls, values: Any) -> Any:
        # The rules live in airflow_provider_imagen._cloudflare.rules, so literal arguments checked at DAG-parse time
        # get the same words.
        if isinstance(values, dict):
            problems = imagen_input_problems(
                values.get("prompt"), values.get("aspect_ratio"), values.get("person_generation")
            )
            if problems:
                raise ValueError("; ".join(problems))
            if isinstance(values.get("prompt"), str):
                values = {**values, "prompt": values["prompt"].strip()}
        return values

    @classmethod
    def parse(cls, **values: Any) -> ImagenInput:
        """Validate ``values``, raising :class:`InvalidInputError` that names each bad field."""
        unknown = sorted(set(values) - set(cls.model_fields))
        problems = [f"{name}: unknown field" for name in unknown]
        problems += imagen_input_problems(
            values.get("prompt"), values.get("aspect_ratio"), values.get("person_generation")
        )
        if problems:
            raise InvalidInputError("Invalid Imagen input: " + "; ".join(problems))
        return cls(**values)

    @classmethod
    def parse_batch(
        cls,
        prompts: Sequence[str],
        aspect_ratio: str | None,
        person_generation: str | None,
        gateway_options: GatewayOptions | dict[str, Any] | None,
        max_concurrency: int,
    ) -> tuple[list[ImagenInput], GatewayOptions | None]:
        """Parse a batch's inputs and gateway options, all checked before its first request."""
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int):
            max_concurrency = 0
        if not 1 <= max_concurrency <= MAX_CONCURRENCY:
            raise InvalidInputError(f"Invalid max_concurrency: must be a whole number from 1 to {MAX_CONCURRENCY}")
        inputs = cls.parse_many(prompts, aspect_ratio, person_generation)
        options = GatewayOptions.parse(gateway_options)
        if options is not None and options.cache_key is not None and len(inputs) > 1:
            raise InvalidInputError("Invalid gateway_options: cache_key would give every prompt the same image")
        return inputs, options

    @classmethod
    def parse_many(
        cls, prompts: Sequence[str], aspect_ratio: str | None, person_generation: str | None
    ) -> list[ImagenInput]:
        """One input per prompt, every prompt checked; the error lists the first five bad ones by index."""
        if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
            raise InvalidInputError(f"Invalid prompts: expected a non-empty list of strings, got {shown(prompts)}")
        inputs, problems = [], []
        for index, prompt in enumerate(prompts):
            try:
                inputs.append(cls.parse(prompt=prompt, aspect_ratio=aspect_ratio, person_generation=person_generation))
            except InvalidInputError as err:
                problems.append(f"prompts[{index}]: {err}")
        if problems:
            more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
            raise InvalidInputError("; ".join(problems[:5]) + more)
        return inputs

    def to_request(self) -> dict[str, str]:
        """Return the JSON ``input`` object, leaving out what the caller did not set."""
        return self.model_dump(exclude_none=True)

    @property
    def size(self) -> tuple[int, int] | None:
        """``(width, height)`` Imagen 4 renders for this aspect ratio, when one is set."""
        return IMAGE_SIZES.get(self.aspect_ratio) if self.aspect_ratio else None


class GatewayOptions(BaseModel):
    """
    Per-request AI Gateway options, sent as Cloudflare's ``cf-aig-*`` headers.

    :param gateway_id: the AI Gateway to route through (``cf-aig-gateway-id``); the account's
        ``default`` gateway when omitted.
    :param cache_ttl: seconds the gateway may cache the response (``cf-aig-cache-ttl``).
    :param skip_cache: bypass the gateway cache for this request (``cf-aig-skip-cache``).
    :param cache_key: a custom cache key (``cf-aig-cache-key``).
    :param metadata: up to 5 string, number or boolean values logged with the request (``cf-aig-metadata``).
    :param request_timeout: milliseconds the gateway waits for the model (``cf-aig-request-timeout``).
    :param collect_log: whether the gateway keeps a log of this request (``cf-aig-collect-log``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    gateway_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    cache_ttl: int | None = Field(default=None, ge=0, le=2_592_000)
    skip_cache: bool | None = None
    cache_key: str | None = Field(default=None, min_length=1, max_length=1024)
    metadata: dict[str, str | int | float | bool] | None = Field(default=None, max_length=5)
    request_timeout: int | None = Field(default=None, gt=0, le=3_600_000)
    collect_log: bool | None = None

    @field_validator("cache_key")
    @classmethod
    def _header_safe(cls, value: str | None) -> str | None:
        # It travels as an HTTP header: a non-ASCII letter fails to encode, a newline would split the header.
        if value is not None and not all("!" <= ch <= "~" for ch in value):
            raise ValueError("must be printable ASCII without spaces (letters, digits, punctuation): sent as a header")
        return value

    @field_validator("cache_ttl", "request_timeout", "skip_cache", "collect_log", mode="before")
    @classmethod
    def _from_rendered_text(cls, value: Any) -> Any:
        # A templated value renders to a string: "3600" means 3600 and "true" means true. Nothing else is
        # guessed ("yes", "1.5" and floats are still refused, naming the field).
        if isinstance(value, str):
            text = value.strip()
            if text.isdigit():
                return int(text)
            if text.lower() in ("true", "false"):
                return text.lower() == "true"
        return value

    @classmethod
    def parse(cls, value: GatewayOptions | dict[str, Any] | None) -> GatewayOptions | None:
        """Accept an instance, a plain dict (e.g. from a template) or ``None``."""
        if value is None or isinstance(value, GatewayOptions):
            return value
        if not isinstance(value, dict):
            raise InvalidInputError(
                f"Invalid gateway options: expected a dict of {sorted(cls.model_fields)}, got {type(value).__name__}"
            )
        try:
            return cls(**value)
        except ValidationError as exc:
            raise InvalidInputError(_describe(exc, "gateway options")) from None

    def to_headers(self) -> dict[str, str]:
        """Return the AI Gateway request headers (``cf-aig-*``) for the options that are set."""
        headers: dict[str, str] = {}
        if self.gateway_id is not None:
            headers["cf-aig-gateway-id"] = self.gateway_id
        if self.cache_ttl is not None:
            headers["cf-aig-cache-ttl"] = str(self.cache_ttl)
        if self.skip_cache is not None:
            headers["cf-aig-skip-cache"] = "true" if self.skip_cache else "false"
        if self.cache_key is not None:
            headers["cf-aig-cache-key"] = self.cache_key
        if self.metadata is not None:
            headers["cf-aig-metadata"] = json.dumps(self.metadata, separators=(",", ":"))
        if self.request_timeout is not None:
            headers["cf-aig-request-timeout"] = str(self.request_timeout)
        if self.collect_log is not None:
            headers["cf-aig-collect-log"] = "true" if self.collect_log else "false"
        return headers


# --- Response shapes -------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    """One entry of a v4 envelope's ``errors``, or a failed state's ``error``."""

    model_config = ConfigDict(extra="allow")

    code: int | str | None = None
    message: str = ""


class ProxiedResponse(BaseModel):
    """Third-party models: ``{"state": "Completed", "result": {...}, "gatewayMetadata": {...}}``."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    state: str
    result: dict[str, Any] | None = None
    error: ErrorDetail | None = None
    gateway_metadata: dict[str, Any] | None = Field(default=None, alias="gatewayMetadata")


class V4Envelope(BaseModel):
    """Cloudflare's classic ``{"success": ..., "errors": [...], "messages": [...], "result": ...}``."""

    model_config = ConfigDict(extra="allow")

    success: bool
    errors: list[ErrorDetail] = Field(default_factory=list)
    messages: list[Any] = Field(default_factory=list)
    result: Any = None


class RunResult(BaseModel):
    """
    What one successful Workers AI call returned.

    :param model: the model that ran.
    :param result: the JSON ``result`` object, when the response was JSON.
    :param content: the raw body, when the model answered with image bytes (e.g. SDXL).
    :param gateway_metadata: AI Gateway metadata of a proxied model (``keySource`` etc.).
    :param attempts: how many HTTP attempts the call took (1 means no retry).
    :param elapsed_seconds: wall time of the call including retries.
    """

    model_config = ConfigDict(frozen=True)

    model: str
    result: dict[str, Any] | None = None
    content: bytes | None = Field(default=None, repr=False)
    gateway_metadata: dict[str, Any] | None = None
    attempts: int = 1
    elapsed_seconds: float = 0.0


class SkippedModel(BaseModel):
    """
    Record a model a call passed over for the next one of its chain, and why.

    See :mod:`~airflow_provider_imagen._cloudflare.fallback` for when a model is passed over.

    :param model: the model id.
    :param reason: the error that made it unavailable, in words.
    :param code: Cloudflare's code (``3040``, ``"provider_unavailable"``, ...), if it gave one.
    :param status_code: the HTTP status, if one arrived.
    :param attempts: requests sent to it; 0 when it was skipped because an earlier call found it unavailable.
    """

    model_config = ConfigDict(frozen=True)

    model: str
    reason: str
    code: int | str | None = None
    status_code: int | None = None
    attempts: int = 1


class GeneratedImage(BaseModel):
    """
    A generated image: its URL (or its bytes, for models that return them) and how it was made.

    ``model`` is the model that made it; ``skipped_models`` the models of the call's chain that were passed
    over first, and why. ``to_xcom()`` gives the JSON-safe summary an operator pushes; the bytes never go to XCom.
    """

    model_config = ConfigDict(frozen=True)

    model: str
    prompt: str
    aspect_ratio: str | None = None
    person_generation: str | None = None
    url: str | None = None
    data: bytes | None = Field(default=None, repr=False, exclude=True)
    media_type: str | None = None
    width: int | None = None
    height: int | None = None
    key_source: str | None = None
    attempts: int = 1
    elapsed_seconds: float = 0.0
    skipped_models: tuple[SkippedModel, ...] = ()

    def to_xcom(self) -> dict[str, Any]:
        """Return the image as JSON for XCom and trigger events: its URL, never its bytes."""
        return self.model_dump(mode="json")
