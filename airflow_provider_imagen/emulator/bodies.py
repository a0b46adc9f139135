"""
The bodies the emulator answers with, in Cloudflare's shapes.

The v4 envelope, the edge's HTML error page, the answers of each fault (dropped connections and oversized
images among them), and the input checks Cloudflare makes on the Imagen 4 schema.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from fastapi.responses import Response, StreamingResponse

from airflow_provider_imagen.emulator.state import IMAGEN_SIZES, PERSON_GENERATION

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.types import Receive, Scope, Send

    from airflow_provider_imagen.emulator.faults import Fault


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """
    Return ``payload`` as compact JSON.

    :param payload: the body, serialisable by :func:`json.dumps`.
    :param status: the HTTP status.
    :param headers: extra response headers.
    """
    return Response(
        json.dumps(payload, separators=(",", ":")), status_code=status, headers=headers, media_type="application/json"
    )


def envelope_error(
    status: int, code: int | str | None, message: str, headers: dict[str, str] | None = None
) -> Response:
    """
    Return Cloudflare's v4 envelope of a failure: ``success: false`` and one error.

    :param status: the HTTP status.
    :param code: Cloudflare's error code (``None`` where Cloudflare sends none).
    :param message: the error's message.
    :param headers: extra response headers (``Retry-After``).
    """
    body = {"success": False, "errors": [{"code": code, "message": message}], "messages": [], "result": None}
    return json_response(body, status, headers)


def envelope_ok(result: Any) -> Response:
    """
    Return Cloudflare's v4 envelope of a success.

    :param result: the envelope's ``result``.
    """
    return json_response({"success": True, "errors": [], "messages": [], "result": result})


_HTML_PAGE = (
    "<!DOCTYPE html><html><head><title>{status} {reason}</title></head><body><center><h1>{status} {reason}</h1>"
    "</center><hr><center>cloudflare</center></body></html>"
)
_REASONS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


class DroppedResponse(Response):
    """
    Start a response, send part of it, and let the connection close: what a dying edge does.

    :param head: the bytes sent before the connection closes.
    :param length: the ``Content-Length`` it promises, longer than ``head``.
    :param media_type: the ``Content-Type`` it sends.
    """

    def __init__(
        self, head: bytes = b'{"state": "Comp', length: int = 4096, media_type: bytes = b"application/json"
    ) -> None:
        super().__init__()
        self.head, self.length, self.content_type = head, length, media_type

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the head and stop, without ending the body."""
        headers = [(b"content-type", self.content_type), (b"content-length", str(self.length).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.head, "more_body": True})


async def fault_response(fault: Fault) -> Response | None:
    """Return the answer for ``fault``, or ``None`` for a ``slow`` fault, whose normal answer follows its delay."""
    if fault.delay:
        await asyncio.sleep(fault.delay)
    status = fault.status or 200
    headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
    message = fault.message or "Injected fault"
    kind = fault.kind
    if kind == "slow":
        return None
    if kind in ("error", "success_false"):
        return envelope_error(status, fault.code, message, headers)
    if kind in ("proxied_error", "state_failed"):
        return json_response({"state": "Failed", "error": {"code": fault.code, "message": message}}, status, headers)
    if kind == "unknown_state":
        return json_response({"state": fault.state, "result": {}}, status, headers)
    if kind == "no_image":
        return json_response({"state": "Completed", "result": {}, "gatewayMetadata": {"keySource": "Unified"}}, status)
    if kind == "html":
        page = _HTML_PAGE.format(status=status, reason=_REASONS.get(status, "Error"))
        return Response(page, status_code=status, headers=headers, media_type="text/html")
    if kind == "empty":
        return Response(b"", status_code=status, headers=headers)
    if kind == "truncated":
        return Response(b'{"state": "Completed", "result": {"ima', status_code=status, media_type="application/json")
    return DroppedResponse()


async def image_fault_response(fault: Fault) -> Response | None:
    """Return a broken image download for ``fault``, or ``None`` for ``slow``, whose image follows its delay."""
    if fault.delay:
        await asyncio.sleep(fault.delay)
    if fault.kind == "slow":
        return None
    if fault.kind == "not_image":
        page = b"<html><body>AccessDenied</body></html>"
        return Response(page, media_type="image/png")  # the content type lies; the bytes tell
    if fault.kind == "huge":
        return StreamingResponse(_huge_png(fault.size), media_type="image/png")
    if fault.kind == "drop":
        return DroppedResponse(head=b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, length=1 << 20, media_type=b"image/png")
    return Response(f"Error {fault.status}", status_code=fault.status or 500, media_type="text/plain")


async def _huge_png(size: int) -> AsyncIterator[bytes]:
    """``size`` bytes that start like a PNG, made on the fly so the emulator's memory stays flat."""
    block = b"\x00" * (1 << 20)
    signature = b"\x89PNG\r\n\x1a\n"
    yield signature
    left = size - len(signature)
    while left > 0:
        piece = block if left >= len(block) else block[:left]
        left -= len(piece)
        yield piece


def int_or(value: str | None, default: int) -> int:
    """Return ``value`` (a query parameter) as an integer, or ``default`` if it is missing or not one."""
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


# --- Input checks, as Cloudflare enforces the Imagen 4 schema ------------------------------------------


def imagen_input_problem(payload: Any) -> str | None:
    """Return what Cloudflare would say is wrong with ``payload`` as Imagen 4's input, or ``None``."""
    if not isinstance(payload, dict):
        return "Type mismatch of '/', 'object' expected"
    prompt = payload.get("prompt")
    if prompt is None:
        return "required properties at '/' are 'prompt'"
    if not isinstance(prompt, str) or not prompt.strip():
        return "'/prompt' must be a non-empty string"
    ratio = payload.get("aspect_ratio")
    if ratio is not None and ratio not in IMAGEN_SIZES:
        return f"'/aspect_ratio' must be one of {', '.join(IMAGEN_SIZES)}"
    people = payload.get("person_generation")
    if people is not None and people not in PERSON_GENERATION:
        return f"'/person_generation' must be one of {', '.join(PERSON_GENERATION)}"
    extra = sorted(set(payload) - {"prompt", "aspect_ratio", "person_generation"})
    if extra:
        return f"additional properties not allowed at '/': {', '.join(extra)}"
    return None
