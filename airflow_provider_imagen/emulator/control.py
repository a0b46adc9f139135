"""
The emulator's control routes under ``/__emulator__``.

An offline page of every route, fault injection, request counts, reset, and changes to the configuration
while it runs.
"""

from __future__ import annotations

import random
from dataclasses import asdict
from typing import TYPE_CHECKING

from fastapi import Request  # noqa: TC002 - FastAPI reads it at runtime
from fastapi.responses import Response
from fastapi.routing import APIRoute

from airflow_provider_imagen.emulator.bodies import json_response
from airflow_provider_imagen.emulator.faults import make_fault
from airflow_provider_imagen.emulator.state import EmulatorConfig

if TYPE_CHECKING:
    from fastapi import FastAPI

    from airflow_provider_imagen.emulator.state import EmulatorState

_FAULTS_SHAPE = (
    'a fault\'s fields ({"preset": "capacity"} or {"status": 503, ...}), or {"faults": [{"preset": "capacity"}, ...]}, '
    'either with "times"'
)


def add_control_routes(app: FastAPI, state: EmulatorState) -> None:
    """Add the control routes to ``app``, acting on ``state``."""

    @app.get("/__emulator__/docs")
    async def docs() -> Response:
        """Serve a plain page of every route, readable offline."""
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
        try:
            body = await request.json()
        except ValueError:
            return json_response({"error": f"the body is not JSON; expected {_FAULTS_SHAPE}"}, 422)
        items = body.get("faults", [body]) if isinstance(body, dict) else body
        times = body.get("times", 1) if isinstance(body, dict) else 1
        if isinstance(times, bool) or not isinstance(times, int) or not 1 <= times <= 10_000:
            return json_response({"error": f"times must be a whole number from 1 to 10000, got {times!r}"}, 422)
        # A malformed list is the caller's mistake (422 naming the shape), never the emulator's 500.
        if not isinstance(items, list) or not items:
            return json_response({"error": f"faults must be a non-empty list; expected {_FAULTS_SHAPE}"}, 422)
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                return json_response(
                    {"error": f"faults[{index}] is {item!r}, not an object; expected {_FAULTS_SHAPE}"}, 422
                )
        try:
            faults = [
                make_fault(**{k: v for k, v in item.items() if k != "times"}) for item in items for _ in range(times)
            ]
        except (TypeError, ValueError) as exc:
            return json_response({"error": str(exc)}, 422)
        pending = state.queue(faults)
        return json_response({"queued": len(faults), "pending": pending})

    @app.delete("/__emulator__/faults")
    async def clear_faults() -> Response:
        with state.lock:
            state.faults.clear()
            state.image_faults.clear()
        return json_response({"pending": 0})

    @app.get("/__emulator__/stats")
    async def stats() -> Response:
        return json_response(state.stats())

    @app.post("/__emulator__/reset")
    async def reset() -> Response:
        state.reset()
        return json_response({"reset": True})

    @app.patch("/__emulator__/config")
    async def configure(request: Request) -> Response:
        changes = await request.json()
        allowed = {"latency", "failure_rate", "token_status", "token_kind", "workers_ai_access", "public_url", "seed"}
        allowed |= {"rate_limit_per_minute", "rate_limit_burst", "strict_inputs"}
        unknown = set(changes) - allowed
        if unknown:
            return json_response({"error": f"unknown settings {sorted(unknown)}; allowed: {sorted(allowed)}"}, 422)
        with state.lock:
            try:
                state.config = EmulatorConfig(**{**asdict(state.config), **changes})
            except (TypeError, ValueError) as exc:
                return json_response({"error": str(exc)}, 422)
            if "seed" in changes:
                state.rng = random.Random(changes["seed"])
            if {"rate_limit_per_minute", "rate_limit_burst"} & set(changes):
                state.limit_changed()
            shown = {k: v for k, v in asdict(state.config).items() if k != "token"}
        return json_response(shown)
