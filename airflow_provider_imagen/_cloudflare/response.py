"""
Reading whatever Cloudflare answered: every documented shape, on any HTTP status.

Shared by the sync and async paths of the hook, which differ only in their awaits.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import json
import re
import time
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import ValidationError

from airflow_provider_imagen._cloudflare import catalog
from airflow_provider_imagen.constants import IMAGE_SIZES, IMAGEN_4
from airflow_provider_imagen.exceptions import (
    CloudflareAuthenticationError,
    CloudflareBadRequestError,
    CloudflareQuotaExceededError,
    CloudflareRateLimitError,
    CloudflareServerError,
    CloudflareWorkersAIError,
    ConnectionConfigError,
    ContentPolicyError,
    GenerationOutcomeUnknownError,
    ImageGenerationFailedError,
)
from airflow_provider_imagen.models import (
    ErrorDetail,
    GeneratedImage,
    ImagenInput,
    ProxiedResponse,
    RunResult,
    V4Envelope,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

# --- Error answers -----------------------------------------------------------------------------------

# Codes from Cloudflare's documentation, grouped by what a caller should do about them.
CAPACITY_CODES = {3040}
_DAILY_LIMIT = {3036}
_AUTH = {10000, 10001, 2009, 1000}  # 1000: "Invalid API Token"
_BAD_REQUEST = {5004, 3003, 5007, 7003, 3042, 3006}
_TRANSIENT = {3007, 3008}
#: A failed state's code that names the model's safety filters (Google's refusals say "safety" or "policy").
_POLICY_WORDS = ("content_policy", "safety", "policy_violation")


def classify(
    status_code: int | None,
    code: int | str | None,
    message: str,
    *,
    retry_after: float | None = None,
) -> CloudflareWorkersAIError:
    """
    Build the exception for an error answer, with its retry decision.

    Codes win over statuses: a 429 with code 3036 (daily allocation used up) is final although
    429 alone would be retried.
    """
    numeric = code_number(code)
    lowered = message.lower()

    def error(cls: type[CloudflareWorkersAIError], retryable: bool) -> CloudflareWorkersAIError:
        return cls(message, status_code=status_code, code=code, retryable=retryable, retry_after=retry_after)

    if numeric == 2021 or "wholesale rate limit" in lowered:
        if "wholesale rate limit" in lowered:
            return error(CloudflareRateLimitError, True)
        # "not available via unified billing": the account must bring its own provider key.
        return error(CloudflareBadRequestError, False)
    if numeric in _DAILY_LIMIT:
        return error(CloudflareQuotaExceededError, False)
    if numeric in CAPACITY_CODES:
        return error(CloudflareRateLimitError, True)
    if numeric in _AUTH or status_code in (401, 403):
        return error(CloudflareAuthenticationError, False)
    if numeric in _TRANSIENT or status_code == 408:
        return error(CloudflareServerError, True)
    if numeric in _BAD_REQUEST or status_code in (400, 404, 405, 413, 422):
        return error(CloudflareBadRequestError, False)
    if status_code == 429:
        return error(CloudflareRateLimitError, True)
    if code == "provider_unavailable":
        return error(ImageGenerationFailedError, True)
    if isinstance(code, str) and any(word in code.lower() for word in _POLICY_WORDS):
        return error(ContentPolicyError, False)
    if status_code is not None and status_code >= 500:
        return error(CloudflareServerError, True)
    if status_code is not None and 200 <= status_code < 300:
        # An error body on a 2xx (``success: false``, ``state: "Failed"``) with a code we do not know.
        return error(ImageGenerationFailedError, False)
    return error(CloudflareWorkersAIError, False)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds, from either form the HTTP spec allows (seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def code_number(code: int | str | None) -> int | None:
    """Return Cloudflare's error ``code`` as a number, or ``None`` for a named code (``provider_unavailable``)."""
    if isinstance(code, int):
        return code
    if isinstance(code, str) and code.isdigit():
        return int(code)
    return None


_IMAGE_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def sniff_image_type(data: bytes) -> str | None:
    """Return the image's media type from its first bytes (PNG, JPEG, WebP, GIF), or ``None``: trust bytes."""
    for signature, media_type in _IMAGE_SIGNATURES:
        if data.startswith(signature):
            return media_type
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def parse_response(response: httpx.Response, model: str) -> RunResult:
    """
    Turn one HTTP response into a :class:`RunResult`, or raise the matching error.

    ``state`` other than ``Completed`` and ``success: false`` are errors even on HTTP 200. A model Cloudflare does not
    serve is said in plain words, with the catalog's alternatives (:func:`.catalog.unserved_message`).
    """
    try:
        return _parse_response(response, model)
    except CloudflareBadRequestError as err:
        if not catalog.is_unserved(err.status_code, err.code, err.message):
            raise
        raise err.replace(message=catalog.unserved_message(model, err.message)) from err


def _parse_response(response: httpx.Response, model: str) -> RunResult:
    status = response.status_code
    body = response.content
    retry_after = parse_retry_after(response.headers.get("retry-after"))

    if 200 <= status < 300 and sniff_image_type(body):
        return RunResult(model=model, content=body)
    if 300 <= status < 400:
        raise _redirected(response)

    try:
        payload: Any = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        payload = None
    if not isinstance(payload, dict):
        raise _unreadable(response, retry_after)

    if "state" in payload:
        return _proxied(payload, status, model, retry_after)
    if "success" in payload or "errors" in payload:
        return _envelope(payload, status, model, retry_after)
    if status >= 400:
        detail = payload.get("error") or payload.get("message") or payload
        code = detail.get("code") if isinstance(detail, dict) else None
        text = detail.get("message", "") if isinstance(detail, dict) else str(detail)
        raise classify(status, code, text or _reason(status), retry_after=retry_after)
    return RunResult(model=model, result=payload)


def _proxied(payload: dict[str, Any], status: int, model: str, retry_after: float | None) -> RunResult:
    try:
        parsed = ProxiedResponse.model_validate(payload)
    except ValidationError:
        raise _malformed(status, "a proxied response with an unexpected structure") from None
    if parsed.state == "Completed" and status < 400:
        return RunResult(model=model, result=parsed.result or {}, gateway_metadata=parsed.gateway_metadata)
    if parsed.state == "Failed" or parsed.error is not None:
        error = parsed.error or ErrorDetail(message="")
        raise classify(status, error.code, error.message or "generation failed", retry_after=retry_after)
    raise ImageGenerationFailedError(
        f"unexpected state {parsed.state!r} (only 'Completed' means success)",
        status_code=status,
        code=None,
        retryable=False,
    )


def _envelope(payload: dict[str, Any], status: int, model: str, retry_after: float | None) -> RunResult:
    try:
        parsed = V4Envelope.model_validate({"success": status < 400, **payload})
    except ValidationError:
        raise _malformed(status, "an API envelope with an unexpected structure") from None
    if parsed.success and status < 400:
        result = parsed.result if isinstance(parsed.result, dict) else {"value": parsed.result}
        return RunResult(model=model, result=result)
    first = parsed.errors[0] if parsed.errors else ErrorDetail(message="")
    message = "; ".join(e.message for e in parsed.errors if e.message) or _reason(status)
    raise classify(status, first.code, message, retry_after=retry_after)


def decode_image_field(value: Any) -> tuple[str | None, bytes | None]:
    """
    Split a result's ``image`` into ``(url, bytes)``.

    Imagen returns a URL; flux returns base64 (optionally as a ``data:`` URI).
    """
    if not isinstance(value, str) or not value:
        return None, None
    if value.startswith(("https://", "http://")):
        return value, None
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None, None
    return (None, data) if sniff_image_type(data) else (None, None)


def _unreadable(response: httpx.Response, retry_after: float | None) -> CloudflareWorkersAIError:
    status, body = response.status_code, response.content
    if status == 404:
        # Not Cloudflare's JSON: most likely a base URL without /client/v4, or no Cloudflare API at all.
        where = f"{response.request.url.host}{response.request.url.path}" if _has_request(response) else "the API"
        message = f"{_summarise(body) or _reason(status)} at {where}: check the connection's API base URL"
        return classify(status, None, message, retry_after=retry_after)
    if status >= 400:
        return classify(status, None, _summarise(body) or _reason(status), retry_after=retry_after)
    if not body:
        return _malformed(status, "an empty body")
    return _malformed(status, f"a body that is not valid JSON ({_summarise(body)})")


def _redirected(response: httpx.Response) -> ConnectionConfigError:
    # Cloudflare's API does not redirect its /ai/run route: a redirect means a base URL that is not the API's (an
    # http URL an edge upgrades, a missing /client/v4). Not followed (the token would go along), never retried.
    location = httpx.URL(response.headers.get("location", ""))
    where = f" to {location.scheme}://{location.host}{location.path}" if location.host else ""
    return ConnectionConfigError(
        f"the API answered HTTP {response.status_code}, redirecting{where}: check the connection's API base URL "
        "(host field), such as https://api.cloudflare.com/client/v4"
    )


def _has_request(response: httpx.Response) -> bool:
    try:
        response.request  # noqa: B018 - httpx raises when a response was built without one
    except RuntimeError:
        return False
    return True


def _malformed(status: int, what: str) -> CloudflareServerError:
    if 200 <= status < 300:
        # A success whose body was cut or garbled: the image was made, and billed; a blind re-send pays again.
        return GenerationOutcomeUnknownError(
            f"Cloudflare answered {status} with {what}; the image may have been generated and billed",
            status_code=status,
            answer_started=True,
        )
    # Edges and proxies produce these; the next attempt usually gets a proper answer.
    return CloudflareServerError(f"Cloudflare answered with {what}", status_code=status, retryable=True)


_TITLE = re.compile(rb"<title>(.*?)</title>", re.IGNORECASE | re.DOTALL)


def _summarise(body: bytes, limit: int = 200) -> str:
    """Describe an unreadable body, short and printable: an HTML page's title, or its start."""
    if not body:
        return ""
    match = _TITLE.search(body[:4096])
    if match:
        return "HTML page: " + match.group(1).decode("utf-8", "replace").strip()[:limit]
    text = body[:limit].decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return text + ("..." if len(body) > limit else "")


def _reason(status: int) -> str:
    try:
        return httpx.codes.get_reason_phrase(status) or f"HTTP {status}"
    except ValueError:
        return f"HTTP {status}"


def image_from_result(
    result: RunResult, image_input: ImagenInput, sent: Mapping[str, Any] | None = None
) -> GeneratedImage:
    """
    Return the image a text-to-image call returned: a URL (Imagen), raw bytes (SDXL) or base64 (flux).

    :param result: the parsed answer.
    :param image_input: the call's provider parameters.
    :param sent: the ``input`` object the request sent: its ``width`` and ``height``, or the model's fixed size
        (:mod:`~airflow_provider_imagen._cloudflare.catalog`), are the image's.
    :raises ImageGenerationFailedError: when the answer was a success but held no image.
    """
    url: str | None = None
    data: bytes | None = result.content
    if data is None:
        url, data = decode_image_field((result.result or {}).get("image"))
    if url is None and data is None:
        raise ImageGenerationFailedError(
            "the model reported success but returned no image (expected result.image to be a URL or base64 image data)",
            status_code=200,
            model=result.model,
            attempts=max(result.attempts, 1),
        )
    size = IMAGE_SIZES.get(image_input.aspect_ratio or "") if result.model == IMAGEN_4 else None
    spec = catalog.TEXT_TO_IMAGE_MODELS.get(result.model)
    width, height = (sent or {}).get("width"), (sent or {}).get("height")
    if isinstance(width, int) and isinstance(height, int):
        size = (width, height)
    elif spec is not None and spec.fixed_size is not None:
        size = spec.fixed_size
    return GeneratedImage(
        model=result.model,
        prompt=image_input.prompt,
        aspect_ratio=image_input.aspect_ratio,
        person_generation=image_input.person_generation,
        url=url,
        data=data,
        media_type=sniff_image_type(data) if data else None,
        width=size[0] if size else None,
        height=size[1] if size else None,
        key_source=(result.gateway_metadata or {}).get("keySource"),
        attempts=result.attempts,
        elapsed_seconds=result.elapsed_seconds,
    )
