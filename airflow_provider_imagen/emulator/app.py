"""
The emulator's HTTP application: Cloudflare's Workers AI routes under ``/client/v4``, the generated
images, and control routes under ``/__emulator__`` for fault injection and request counts.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import threading
from collections import Counter, OrderedDict, deque
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from airflow_provider_imagen.emulator import images
from airflow_provider_imagen.emulator.faults import (
    TRANSIENT_PRESETS,
    Fault,
    TokenBucket,
    make_fault,
    rate_limited_fault,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.types import Receive, Scope, Send

DEFAULT_TOKEN = "emulator-token"
# The emulator states Cloudflare's schema itself rather than importing the provider's models, so that the
# provider's validation is tested against an independent statement of it.
IMAGEN_SIZES = {
    "1:1": (1024, 1024),
    "3:4": (896, 1280),
    "4:3": (1280, 896),
    "9:16": (768, 1408),
    "16:9": (1408, 768),
}
PERSON_GENERATION = ("dont_allow", "allow_adult", "allow_all")
FLUX = "@cf/black-forest-labs/flux-1-schnell"
SDXL = "@cf/stabilityai/stable-diffusion-xl-base-1.0"
#: Third-party models answer in the proxied ``state`` shape; ``@cf/`` models in the v4 envelope.
PROXIED_MODELS = {"google/imagen-4"}
MAX_BODY_BYTES = 1_000_000
MAX_LATENCY_SECONDS = 120.0
MAX_REMEMBERED_IMAGES = 100_000
MAX_RECORDED_REQUESTS = 1_000
#: Seconds AI Gateway keeps an answer under a cache key when the request names no cf-aig-cache-ttl.
DEFAULT_CACHE_TTL = 300
#: Faults that break the answer after the model ran (an empty 200 too): the image exists, and is billed, but
#: the client loses it.
LOST_AFTER_GENERATION = frozenset({"drop", "truncated"})


@dataclass
class EmulatorConfig:
    """
    How the emulator behaves.

    :param token: the API token it accepts.
    :param latency: seconds each generation takes (bounded to 120).
    :param public_url: base of the image URLs it returns; the request's own base URL when unset.
    :param failure_rate: share (0..1) of API requests answered with a random transient fault.
    :param token_status: what ``tokens/verify`` reports: ``active``, ``disabled`` or ``expired``.
    :param token_kind: ``user`` (My Profile > API Tokens, the common kind) or ``account`` (account-owned):
        each verify route refuses the other kind, as Cloudflare's do.
    :param workers_ai_access: whether the token may use Workers AI (``ai/models/search`` refuses it if not).
    :param seed: seed of the random failures, for repeatable drills.
    :param rate_limit_per_minute: the account's rate limit (a token bucket); requests over it get 429, code
        3040 and ``Retry-After``, and are not billed. ``None``: no limit.
    :param rate_limit_burst: requests the limit accepts at once; one second's worth if unset.
    """

    token: str = field(default=DEFAULT_TOKEN, repr=False)
    latency: float = 0.0
    public_url: str | None = None
    failure_rate: float = 0.0
    token_status: str = "active"
    token_kind: str = "user"
    workers_ai_access: bool = True
    seed: int | None = None
    rate_limit_per_minute: float | None = None
    rate_limit_burst: float | None = None

    def __post_init__(self) -> None:
        if self.rate_limit_per_minute is not None and not 0 < self.rate_limit_per_minute <= 1_000_000:
            raise ValueError(f"rate_limit_per_minute must be 0..1000000, got {self.rate_limit_per_minute}")
        if self.rate_limit_burst is not None and not 1 <= self.rate_limit_burst <= 1_000_000:
            raise ValueError(f"rate_limit_burst must be 1..1000000, got {self.rate_limit_burst}")
        if not 0 <= self.latency <= MAX_LATENCY_SECONDS:
            raise ValueError(f"latency must be 0..{MAX_LATENCY_SECONDS} seconds, got {self.latency}")
        if not 0 <= self.failure_rate <= 1:
            raise ValueError(f"failure_rate must be between 0 and 1, got {self.failure_rate}")
        if self.token_status not in ("active", "disabled", "expired"):
            raise ValueError(f"token_status must be active, disabled or expired, got {self.token_status!r}")
        if self.token_kind not in ("user", "account"):
            raise ValueError(f"token_kind must be user or account, got {self.token_kind!r}")


class EmulatorState:
    """Everything the emulator remembers: queued faults, counters, and the images it promised."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.initial = config
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.config = EmulatorConfig(**asdict(self.initial))
            self.rng = random.Random(self.config.seed)
            self.faults: deque[Fault] = deque()
            self.image_faults: deque[Fault] = deque()
            self.counts: Counter[str] = Counter()
            self.images: OrderedDict[str, tuple[str, int, int]] = OrderedDict()
            self.recent: deque[dict[str, Any]] = deque(maxlen=MAX_RECORDED_REQUESTS)
            # AI Gateway's cache: key -> (expiry on the loop clock, the answer's body)
            self.cache: dict[str, tuple[float, bytes]] = {}
            self.limit_changed()

    def limit_changed(self) -> None:
        """A full bucket for the configured rate limit (called with the lock held)."""
        per_minute = self.config.rate_limit_per_minute
        self.bucket = TokenBucket(per_minute, self.config.rate_limit_burst) if per_minute else None

    def over_limit(self) -> float | None:
        """``None`` if the rate limit lets a request through, else the seconds until it would."""
        with self.lock:
            wait = self.bucket.take() if self.bucket is not None else None
            if wait is not None:
                self.counts["rate_limited"] += 1
            return wait

    def next_image_fault(self) -> Fault | None:
        with self.lock:
            if self.image_faults:
                self.counts["faults_served"] += 1
                return self.image_faults.popleft()
        return None

    def queue(self, faults: list[Fault]) -> int:
        with self.lock:
            for fault in faults:
                (self.image_faults if fault.target == "image" else self.faults).append(fault)
            return len(self.faults) + len(self.image_faults)

    def next_fault(self, model: str | None = None) -> Fault | None:
        """The first queued fault for a call to ``model`` (faults for other models wait for theirs)."""
        with self.lock:
            for fault in self.faults:
                if fault.model is None or fault.model == model:
                    self.faults.remove(fault)
                    self.counts["faults_served"] += 1
                    return fault
            if self.config.failure_rate and self.rng.random() < self.config.failure_rate:
                self.counts["faults_served"] += 1
                return make_fault(self.rng.choice(TRANSIENT_PRESETS))
        return None

    def remember_image(self, image_id: str, prompt: str, width: int, height: int) -> None:
        with self.lock:
            self.images[image_id] = (prompt, width, height)
            self.images.move_to_end(image_id)
            while len(self.images) > MAX_REMEMBERED_IMAGES:
                self.images.popitem(last=False)

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "api_requests": self.counts["api"],
                "image_requests": self.counts["image"],
                "verify_requests": self.counts["verify"],
                "generations": self.counts["generations"],
                "cache_hits": self.counts["cache_hits"],
                "rate_limited": self.counts["rate_limited"],
                "generations_by_prompt": {k[7:]: v for k, v in self.counts.items() if k.startswith("prompt:")},
                "faults_served": self.counts["faults_served"],
                "faults_pending": len(self.faults) + len(self.image_faults),
                "by_model": {k[6:]: v for k, v in self.counts.items() if k.startswith("model:")},
                "recent": list(self.recent),
            }


# --- Cloudflare's bodies ----------------------------------------------------------------------------


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(payload, separators=(",", ":")), status_code=status, headers=headers, media_type="application/json"
    )


def envelope_error(
    status: int, code: int | str | None, message: str, headers: dict[str, str] | None = None
) -> Response:
    body = {"success": False, "errors": [{"code": code, "message": message}], "messages": [], "result": None}
    return _json(body, status, headers)


def _envelope_ok(result: Any) -> Response:
    return _json({"success": True, "errors": [], "messages": [], "result": result})


_HTML_PAGE = (
    "<!DOCTYPE html><html><head><title>{status} {reason}</title></head><body><center><h1>{status} {reason}</h1>"
    "</center><hr><center>cloudflare</center></body></html>"
)
_REASONS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


class DroppedResponse(Response):
    """Starts a response, sends part of it, and lets the connection close: what a dying edge does."""

    def __init__(
        self, head: bytes = b'{"state": "Comp', length: int = 4096, media_type: bytes = b"application/json"
    ) -> None:
        super().__init__()
        self.head, self.length, self.content_type = head, length, media_type

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", self.content_type), (b"content-length", str(self.length).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.head, "more_body": True})


async def fault_response(fault: Fault) -> Response | None:
    """The answer for ``fault``; ``None`` for a ``slow`` fault, whose normal answer follows its delay."""
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
        return _json({"state": "Failed", "error": {"code": fault.code, "message": message}}, status, headers)
    if kind == "unknown_state":
        return _json({"state": fault.state, "result": {}}, status, headers)
    if kind == "no_image":
        return _json({"state": "Completed", "result": {}, "gatewayMetadata": {"keySource": "Unified"}}, status)
    if kind == "html":
        page = _HTML_PAGE.format(status=status, reason=_REASONS.get(status, "Error"))
        return Response(page, status_code=status, headers=headers, media_type="text/html")
    if kind == "empty":
        return Response(b"", status_code=status, headers=headers)
    if kind == "truncated":
        return Response(b'{"state": "Completed", "result": {"ima', status_code=status, media_type="application/json")
    return DroppedResponse()


async def image_fault_response(fault: Fault) -> Response | None:
    """A broken image download; ``None`` for ``slow``, whose image follows its delay."""
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


def _int_or(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


# --- Input checks, as Cloudflare enforces the Imagen 4 schema ------------------------------------------


def imagen_input_problem(payload: Any) -> str | None:
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


def create_app(config: EmulatorConfig | None = None) -> FastAPI:
    """Build the emulator's application. ``app.state.emulator`` is its :class:`EmulatorState`."""
    state = EmulatorState(config or EmulatorConfig())
    # No Swagger UI: it loads its scripts from a CDN, which an offline machine cannot reach.
    app = FastAPI(
        title="Cloudflare Workers AI emulator", docs_url=None, redoc_url=None, openapi_url="/__emulator__/openapi.json"
    )
    app.state.emulator = state

    def authorized(request: Request) -> Response | None:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer ") or not header[7:].strip():
            return envelope_error(401, 10001, "Unable to authenticate request")
        if header[7:].strip() != state.config.token:
            return envelope_error(403, 10000, "Authentication error")
        return None

    def record(request: Request, model: str | None, body: Any) -> None:
        with state.lock:
            state.counts["api"] += 1
            if model:
                state.counts[f"model:{model}"] += 1
            state.recent.append(
                {
                    "path": request.url.path,
                    "model": model,
                    "input": body,
                    "gateway_headers": {k: v for k, v in request.headers.items() if k.startswith("cf-aig-")},
                }
            )

    async def read_json(request: Request) -> tuple[Any, Response | None]:
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            return None, envelope_error(413, 3006, "Request is too large")
        try:
            return json.loads(raw), None
        except ValueError:
            return None, envelope_error(400, 5004, "Invalid data: the body is not valid JSON")

    def cache_key(request: Request, model: str) -> str | None:
        # AI Gateway caches what goes through a gateway: third-party models always do, Cloudflare's own
        # only with cf-aig-gateway-id.
        key = request.headers.get("cf-aig-cache-key")
        if not key or request.headers.get("cf-aig-skip-cache") == "true":
            return None
        if model not in PROXIED_MODELS and "cf-aig-gateway-id" not in request.headers:
            return None
        return key

    async def generate(request: Request, model: str, inputs: Any, proxied: bool) -> Response:
        loop = asyncio.get_running_loop()
        wait = state.over_limit()  # the account's limit refuses before anything runs: nothing is billed
        if wait is not None:
            return await fault_response(rate_limited_fault(wait)) or envelope_error(429, 3040, "Capacity exceeded")
        key = cache_key(request, model)
        if key is not None:
            with state.lock:
                cached = state.cache.get(key)
                if cached is not None and cached[0] > loop.time():
                    state.counts["cache_hits"] += 1
                    hit = cached[1]
                else:
                    hit = None
            if hit is not None:
                return Response(hit, media_type="application/json", headers={"cf-aig-cache-status": "HIT"})
        fault = state.next_fault(model)
        lost_after = fault is not None and (
            fault.kind in LOST_AFTER_GENERATION or (fault.kind == "empty" and fault.status == 200)
        )
        if fault is not None and not lost_after:
            answer = await fault_response(fault)
            if answer is not None:
                return answer
        if state.config.latency:
            await asyncio.sleep(state.config.latency)
        # Like Cloudflare, a generation that completes is billed whether or not the client still waits.
        answer = await run_model(request, model, inputs, proxied)
        if answer.status_code == 200:
            with state.lock:
                state.counts["generations"] += 1
                prompt = inputs.get("prompt") if isinstance(inputs, dict) else None
                state.counts[f"prompt:{prompt}"] += 1
                if key is not None and isinstance(answer.body, bytes) and answer.media_type == "application/json":
                    # Volatile, as AI Gateway's: filled when the first answer is complete, so a re-send made
                    # while the first generation still runs is not merged with it.
                    ttl = _int_or(request.headers.get("cf-aig-cache-ttl"), DEFAULT_CACHE_TTL)
                    state.cache[key] = (loop.time() + ttl, answer.body)
            if key is not None:
                answer.headers["cf-aig-cache-status"] = "MISS"
        if lost_after and fault is not None:  # the answer is lost on the way back, after the image was billed
            return await fault_response(fault) or answer
        return answer

    async def run_model(request: Request, model: str, inputs: Any, proxied: bool) -> Response:
        if model in PROXIED_MODELS:
            problem = imagen_input_problem(inputs)
            if problem:
                return envelope_error(400, 5004, f"Invalid input: {problem}")
            width, height = IMAGEN_SIZES[inputs.get("aspect_ratio") or "1:1"]
            image_id = images.image_id(model, inputs)
            state.remember_image(image_id, inputs["prompt"], width, height)
            base = state.config.public_url or str(request.base_url).rstrip("/")
            result = {"image": f"{base}/images/{image_id}.png"}
            if proxied:
                return _json({"gatewayMetadata": {"keySource": "Unified"}, "result": result, "state": "Completed"})
            return _envelope_ok(result)

        if model in (FLUX, SDXL):
            prompt = inputs.get("prompt") if isinstance(inputs, dict) else None
            if not isinstance(prompt, str) or not prompt.strip():
                return envelope_error(400, 5004, "Invalid input: required properties at '/' are 'prompt'")
            if model == FLUX:
                jpeg = await run_in_threadpool(images.render, prompt, 1024, 1024, "JPEG")
                return _envelope_ok({"image": base64.b64encode(jpeg).decode("ascii")})
            png = await run_in_threadpool(images.render, prompt, 1024, 1024, "PNG")
            # SDXL sends raw bytes, and (like the real one) does not promise an accurate content type.
            return Response(png, media_type="application/octet-stream")
        return envelope_error(400, 5007, f"No such model {model}")

    @app.post("/client/v4/accounts/{account_id}/ai/run")
    async def run_model_in_body(account_id: str, request: Request) -> Response:
        denied = authorized(request)
        body, problem = await read_json(request)
        model = body.get("model") if isinstance(body, dict) else None
        record(
            request, model if isinstance(model, str) else None, body.get("input") if isinstance(body, dict) else body
        )
        if denied is not None:
            return denied
        if problem is not None:
            return problem
        if not isinstance(model, str) or not model:
            return envelope_error(400, 3003, "Incomplete request: 'model' is required")
        if "input" not in body:
            return envelope_error(400, 3003, "Incomplete request: 'input' is required")
        return await generate(request, model, body["input"], proxied=model in PROXIED_MODELS)

    @app.post("/client/v4/accounts/{account_id}/ai/run/{model:path}")
    async def run_model_in_path(account_id: str, model: str, request: Request) -> Response:
        denied = authorized(request)
        body, problem = await read_json(request)
        record(request, model, body)
        if denied is not None:
            return denied
        if problem is not None:
            return problem
        return await generate(request, model, body, proxied=False)

    async def verify(request: Request, kind: str) -> Response:
        with state.lock:
            state.counts["verify"] += 1
        denied = authorized(request)
        if denied is not None:
            return denied
        if state.config.token_kind != kind:
            # Each route refuses the other kind of token, in these words.
            return envelope_error(401, 1000, "Invalid API Token")
        fault = state.next_fault()
        if fault is not None:
            answer = await fault_response(fault)
            if answer is not None:
                return answer
        status = state.config.token_status
        return _json(
            {
                "success": True,
                "errors": [],
                "messages": [{"code": 10000, "message": f"This API Token is valid and {status}"}],
                "result": {"id": "emulator-token-id", "status": status},
            }
        )

    @app.get("/client/v4/user/tokens/verify")
    async def verify_user_token(request: Request) -> Response:
        return await verify(request, "user")

    @app.get("/client/v4/accounts/{account_id}/tokens/verify")
    async def verify_account_token(account_id: str, request: Request) -> Response:
        return await verify(request, "account")

    @app.get("/client/v4/accounts/{account_id}/ai/models/search")
    async def search_models(account_id: str, request: Request) -> Response:
        denied = authorized(request)
        if denied is not None:
            return denied
        if not state.config.workers_ai_access:
            return envelope_error(401, 10000, "Authentication error")
        models = [{"name": name, "task": {"name": "Text-to-Image"}} for name in (*sorted(PROXIED_MODELS), FLUX, SDXL)]
        per_page = _int_or(request.query_params.get("per_page"), len(models))
        return _envelope_ok(models[: max(1, per_page)])

    @app.get("/images/{image_id}.png")
    async def image(image_id: str) -> Response:
        with state.lock:
            state.counts["image"] += 1
            known = state.images.get(image_id)
        if known is None:
            return Response("Not Found", status_code=404, media_type="text/plain")
        fault = state.next_image_fault()
        if fault is not None:
            answer = await image_fault_response(fault)
            if answer is not None:
                return answer
        png = await run_in_threadpool(images.render, *known)
        return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=3600"})

    # --- Control routes -------------------------------------------------------------------------

    @app.get("/__emulator__/docs")
    async def docs() -> Response:
        """A plain page of every route, readable offline."""
        rows = "".join(
            f"<tr><td>{', '.join(sorted(route.methods or []))}</td><td><code>{route.path}</code></td>"
            f"<td>{(route.endpoint.__doc__ or '').strip()}</td></tr>"
            for route in app.routes
            if isinstance(route, APIRoute)
        )
        page = (
            "<!DOCTYPE html><html><head><title>Cloudflare Workers AI emulator</title></head><body>"
            "<h1>Cloudflare Workers AI emulator</h1><p>The schema: <a href='/__emulator__/openapi.json'>"
            f"openapi.json</a>.</p><table border='1' cellpadding='4'>{rows}</table></body></html>"
        )
        return Response(page, media_type="text/html")

    @app.post("/__emulator__/faults")
    async def queue_faults(request: Request) -> Response:
        """Queue faults: a fault's fields (or ``preset``), ``{"faults": [...]}``, or either with ``times``."""
        body = await request.json()
        items = body.get("faults", [body]) if isinstance(body, dict) else body
        times = body.get("times", 1) if isinstance(body, dict) else 1
        if isinstance(times, bool) or not isinstance(times, int) or not 1 <= times <= 10_000:
            return _json({"error": f"times must be a whole number from 1 to 10000, got {times!r}"}, 422)
        try:
            faults = [
                make_fault(**{k: v for k, v in item.items() if k != "times"}) for item in items for _ in range(times)
            ]
        except (TypeError, ValueError) as exc:
            return _json({"error": str(exc)}, 422)
        pending = state.queue(faults)
        return _json({"queued": len(faults), "pending": pending})

    @app.delete("/__emulator__/faults")
    async def clear_faults() -> Response:
        with state.lock:
            state.faults.clear()
            state.image_faults.clear()
        return _json({"pending": 0})

    @app.get("/__emulator__/stats")
    async def stats() -> Response:
        return _json(state.stats())

    @app.post("/__emulator__/reset")
    async def reset() -> Response:
        state.reset()
        return _json({"reset": True})

    @app.patch("/__emulator__/config")
    async def configure(request: Request) -> Response:
        changes = await request.json()
        allowed = {"latency", "failure_rate", "token_status", "token_kind", "workers_ai_access", "public_url", "seed"}
        allowed |= {"rate_limit_per_minute", "rate_limit_burst"}
        unknown = set(changes) - allowed
        if unknown:
            return _json({"error": f"unknown settings {sorted(unknown)}; allowed: {sorted(allowed)}"}, 422)
        with state.lock:
            try:
                state.config = EmulatorConfig(**{**asdict(state.config), **changes})
            except (TypeError, ValueError) as exc:
                return _json({"error": str(exc)}, 422)
            if "seed" in changes:
                state.rng = random.Random(changes["seed"])
            if {"rate_limit_per_minute", "rate_limit_burst"} & set(changes):
                state.limit_changed()
            shown = {k: v for k, v in asdict(state.config).items() if k != "token"}
        return _json(shown)

    return app
