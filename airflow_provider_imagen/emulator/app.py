"""
The emulator's HTTP application: Cloudflare's Workers AI routes under ``/client/v4`` and the generated images.

The configuration and state it serves from are in :mod:`.state`, the bodies it answers with in :mod:`.bodies`,
and the control routes under ``/__emulator__`` (fault injection, request counts) in :mod:`.control`.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from airflow_provider_imagen.emulator import images, schemas
from airflow_provider_imagen.emulator.bodies import (
    envelope_error,
    envelope_ok,
    fault_response,
    image_fault_response,
    int_or,
    json_response,
)
from airflow_provider_imagen.emulator.control import add_control_routes
from airflow_provider_imagen.emulator.faults import rate_limited_fault
from airflow_provider_imagen.emulator.schemas import MODELS, input_problem
from airflow_provider_imagen.emulator.state import (
    DEFAULT_CACHE_TTL,
    LOST_AFTER_GENERATION,
    MAX_BODY_BYTES,
    MAX_FORM_BYTES,
    PROXIED_MODELS,
    SDXL,
    EmulatorConfig,
    EmulatorState,
)

#: The file extension of each format's image URL.
IMAGE_EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}
#: The content type of models that answer with raw bytes, where it is not the image's own: SDXL promises none,
#: and SDXL-Lightning says PNG while sending JPEG (cloudflare/cloudflare-docs#21022).
BINARY_CONTENT_TYPES = {
    SDXL: "application/octet-stream",
    "@cf/bytedance/stable-diffusion-xl-lightning": "image/png",
}


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
                    # Files of a multipart form are shown by their size: the stats are JSON.
                    "input": {k: f"<{len(v)} bytes>" if isinstance(v, bytes) else v for k, v in body.items()}
                    if isinstance(body, dict)
                    else body,
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

    async def read_form(request: Request, model: str) -> tuple[Any, Response | None]:
        raw = await request.body()
        if len(raw) > MAX_FORM_BYTES:
            return None, envelope_error(413, 3006, "Request is too large")
        try:
            form = await request.form()
        except Exception:  # any unreadable form is Cloudflare's 400, not the emulator's 500
            return None, envelope_error(400, 5004, "Invalid data: the body is not a readable multipart form")
        fields: dict[str, str | bytes] = {}
        for name, value in form.multi_items():
            fields[name] = value if isinstance(value, str) else await value.read()
        spec = MODELS.get(model)
        if spec is None:
            return fields, None  # generate() answers the unknown model
        payload, problem = schemas.form_to_input(spec, fields)
        return payload, envelope_error(400, 5004, f"Invalid input: {problem}") if problem else None

    async def generate(request: Request, model: str, inputs: Any, proxied: bool, multipart: bool) -> Response:
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
        answer = await run_model(request, model, inputs, proxied, multipart)
        if answer.status_code == 200:
            with state.lock:
                state.counts["generations"] += 1
                state.counts[f"generated:{model}"] += 1
                prompt = inputs.get("prompt") if isinstance(inputs, dict) else None
                state.counts[f"prompt:{prompt}"] += 1
                if key is not None and isinstance(answer.body, bytes) and answer.media_type == "application/json":
                    # Volatile, as AI Gateway's: filled when the first answer is complete, so a re-send made
                    # while the first generation still runs is not merged with it.
                    ttl = int_or(request.headers.get("cf-aig-cache-ttl"), DEFAULT_CACHE_TTL)
                    state.cache[key] = (loop.time() + ttl, answer.body)
            if key is not None:
                answer.headers["cf-aig-cache-status"] = "MISS"
        if lost_after and fault is not None:  # the answer is lost on the way back, after the image was billed
            return await fault_response(fault) or answer
        return answer

    async def run_model(request: Request, model: str, inputs: Any, proxied: bool, multipart: bool) -> Response:
        spec = MODELS.get(model)
        if spec is None:
            return envelope_error(400, 5007, f"No such model {model}")
        if spec.multipart and not multipart:
            # Its schema is {"multipart": {"body", "contentType"}}: a JSON input lacks it, even with a prompt.
            return envelope_error(
                400, 5004, "Invalid input: required properties at '/' are 'multipart' (send multipart/form-data)"
            )
        if multipart and not spec.multipart:
            return envelope_error(400, 5004, "Invalid data: this model takes a JSON body, not multipart/form-data")
        extra = schemas.unlisted(spec, inputs)
        if extra and not spec.proxied and not state.config.strict_inputs:
            # Lenient, as the emulator always was for Cloudflare's own models: ignored, and counted.
            inputs = {name: value for name, value in inputs.items() if name not in extra}
            with state.lock:
                for name in extra:
                    state.counts[f"ignored:{model}:{name}"] += 1
        problem = input_problem(spec, inputs)
        if problem:
            return envelope_error(400, 5004, f"Invalid input: {problem}")
        width, height = schemas.image_size(spec, inputs)
        fmt = schemas.image_format(spec, inputs)
        if spec.output == "url":
            image_id = images.image_id(model, inputs)
            state.remember_image(image_id, inputs["prompt"], width, height, fmt)
            base = state.config.public_url or str(request.base_url).rstrip("/")
            result = {"image": f"{base}/images/{image_id}.{IMAGE_EXTENSIONS[fmt]}"}
            if proxied:
                body = {"gatewayMetadata": {"keySource": "Unified"}, "result": result, "state": "Completed"}
                return json_response(body)
            return envelope_ok(result)
        data = await run_in_threadpool(images.render, inputs["prompt"], width, height, fmt)
        if spec.output == "base64":
            return envelope_ok({"image": base64.b64encode(data).decode("ascii")})
        # Raw bytes, with the content type Cloudflare sends, which need not be the image's (SDXL-Lightning).
        return Response(data, media_type=BINARY_CONTENT_TYPES.get(model, f"image/{fmt.lower()}"))

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
        return await generate(request, model, body["input"], proxied=model in PROXIED_MODELS, multipart=False)

    @app.post("/client/v4/accounts/{account_id}/ai/run/{model:path}")
    async def run_model_in_path(account_id: str, model: str, request: Request) -> Response:
        denied = authorized(request)
        multipart = request.headers.get("content-type", "").lower().startswith("multipart/form-data")
        body, problem = await (read_form(request, model) if multipart else read_json(request))
        record(request, model, body)
        if denied is not None:
            return denied
        if problem is not None:
            return problem
        return await generate(request, model, body, proxied=False, multipart=multipart)

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
        return json_response(
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
        models = [{"name": name, "task": {"name": "Text-to-Image"}} for name in MODELS]
        per_page = int_or(request.query_params.get("per_page"), len(models))
        return envelope_ok(models[: max(1, per_page)])

    @app.get("/images/{image_id}.png")
    async def image(image_id: str) -> Response:
        """Serve a generated image (PNG)."""
        return await serve_image(image_id)

    @app.get("/images/{image_id}.jpg")
    async def jpeg_image(image_id: str) -> Response:
        """Serve a generated image (JPEG: a model asked for ``output_format: jpg``)."""
        return await serve_image(image_id)

    @app.get("/images/{image_id}.webp")
    async def webp_image(image_id: str) -> Response:
        """Serve a generated image (WebP: a model asked for ``output_format: webp``)."""
        return await serve_image(image_id)

    async def serve_image(image_id: str) -> Response:
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
        data = await run_in_threadpool(images.render, *known)
        media_type = f"image/{known[3].lower()}"
        return Response(data, media_type=media_type, headers={"Cache-Control": "public, max-age=3600"})

    add_control_routes(app, state)

    return app
