"""The trigger, run directly in an event loop against the emulator."""

from __future__ import annotations

import asyncio
import json

import pytest

from airflow_provider_imagen.errors import CloudflareRateLimitError, error_from_dict
from airflow_provider_imagen.hooks import shared_async_clients
from airflow_provider_imagen.transport import CONNECTIONS_PER_POOL
from airflow_provider_imagen.triggers import ImagenGenerateImageTrigger

FAST = {"retry_backoff": 0.01, "max_retry_wait": 1.0}


def trigger(**kwargs):
    return ImagenGenerateImageTrigger(
        **{"prompt": "A golden retriever puppy", "aspect_ratio": "16:9", **FAST, **kwargs}
    )


async def events(t):
    return [event.payload async for event in t.run()]


def test_serialize_round_trips_exactly_and_holds_no_secret(imagen_emulator):
    original = trigger(gateway_options={"cache_ttl": 60}, max_retries=2, timeout=30)
    classpath, kwargs = original.serialize()
    assert classpath == "airflow_provider_imagen.triggers.ImagenGenerateImageTrigger"
    again = ImagenGenerateImageTrigger(**json.loads(json.dumps(kwargs)))
    assert again.serialize() == (classpath, kwargs)
    assert imagen_emulator.token not in json.dumps(kwargs)


def test_success_fires_one_json_event_with_the_image(imagen_emulator):
    (payload,) = asyncio.run(events(trigger()))
    assert payload["status"] == "success"
    assert payload["image"]["url"].startswith(imagen_emulator.url)
    assert (payload["image"]["width"], payload["image"]["height"]) == (1408, 768)
    json.dumps(payload)  # events must be JSON


def test_transient_failures_are_retried_in_the_trigger(imagen_emulator):
    imagen_emulator.inject("capacity")
    imagen_emulator.inject("bad_gateway")
    (payload,) = asyncio.run(events(trigger()))
    assert payload["status"] == "success" and payload["image"]["attempts"] == 3
    assert imagen_emulator.api_requests == 3


def test_a_final_error_becomes_the_same_typed_exception_for_the_task(imagen_emulator):
    imagen_emulator.inject("daily_limit")
    (payload,) = asyncio.run(events(trigger()))
    assert payload["status"] == "error"
    json.dumps(payload)
    error = error_from_dict(payload["error"])
    assert isinstance(error, CloudflareRateLimitError)
    assert (error.status_code, error.code, error.retryable) == (429, 3036, False)
    assert "HTTP 429, code 3036" in str(error) and "daily free allocation" in str(error)
    assert imagen_emulator.token not in json.dumps(payload)


def test_a_broken_connection_is_an_error_event_not_a_crash(monkeypatch, imagen_emulator):
    monkeypatch.setenv("AIRFLOW_CONN_BROKEN", json.dumps({"conn_type": "cloudflare_workers_ai", "password": "x"}))
    (payload,) = asyncio.run(events(trigger(cloudflare_conn_id="broken")))
    assert payload["error"]["type"] == "ConnectionConfigError"
    assert "account_id" in payload["error"]["message"]


def test_cancellation_stops_the_call_promptly(imagen_emulator):
    imagen_emulator.inject("slow", delay=30)

    async def cancel_mid_call():
        task = asyncio.ensure_future(events(trigger()))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if imagen_emulator.stats()["api_requests"]:
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(cancel_mid_call(), timeout=10))
    assert imagen_emulator.api_requests == 1


def test_hundreds_of_triggers_share_one_client_with_bounded_pools(imagen_emulator):
    imagen_emulator.configure(latency=0.2)

    async def many():
        results = await asyncio.gather(*(events(trigger(prompt=f"prompt {i}")) for i in range(200)))
        counts = len(shared_async_clients), shared_async_clients.connection_pools()
        await shared_async_clients.aclose()
        return results, counts

    results, (clients, pools) = asyncio.run(many())
    assert all(payload["status"] == "success" for (payload,) in results)
    assert len({payload["image"]["url"] for (payload,) in results}) == 200
    # One client for the loop; its small pools grow with the calls in flight (10 each), not per trigger.
    assert clients == 1
    assert 1 <= pools <= 200 // CONNECTIONS_PER_POOL
