"""The trigger, run directly in an event loop against the emulator."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from airflow_provider_imagen._cloudflare import clients
from airflow_provider_imagen._cloudflare.clients import shared_async_clients
from airflow_provider_imagen._cloudflare.transport import CONNECTIONS_PER_POOL
from airflow_provider_imagen.exceptions import CloudflareRateLimitError, error_from_dict
from airflow_provider_imagen.hooks import CloudflareWorkersAIHook
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
    assert classpath == "airflow_provider_imagen.triggers.imagen.ImagenGenerateImageTrigger"
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


def count_connection_reads(monkeypatch, delay: float = 0.0) -> list[str]:
    """Record every connection lookup the hooks make (optionally slowed down, as a busy supervisor is)."""
    reads: list[str] = []
    original = CloudflareWorkersAIHook.aget_connection

    async def aget_connection(conn_id):
        reads.append(conn_id)
        await asyncio.sleep(delay)
        return await original(conn_id)

    monkeypatch.setattr(CloudflareWorkersAIHook, "aget_connection", staticmethod(aget_connection))
    return reads


def test_triggers_started_together_read_the_connection_once(monkeypatch, imagen_emulator):
    reads = count_connection_reads(monkeypatch, delay=0.05)

    async def many():
        try:
            return await asyncio.gather(*(events(trigger(prompt=f"prompt {i}")) for i in range(100)))
        finally:
            await shared_async_clients.aclose()

    results = asyncio.run(many())
    assert all(payload["status"] == "success" for (payload,) in results)
    assert reads == ["cloudflare_workers_ai_default"]
    assert imagen_emulator.api_requests == 100


def test_a_changed_connection_reaches_triggers_once_the_shared_read_expires(monkeypatch, imagen_emulator):
    reads = count_connection_reads(monkeypatch)
    monkeypatch.setattr(clients, "SHARED_SETTINGS_SECONDS", 1.0)  # wide enough for a slow machine

    async def three_in_a_row():
        try:
            first = await events(trigger())
            monkeypatch.setenv(
                "AIRFLOW_CONN_CLOUDFLARE_WORKERS_AI_DEFAULT",
                json.dumps(
                    {
                        "conn_type": "cloudflare_workers_ai",
                        "host": imagen_emulator.api_base,
                        "password": "rotated",
                        "extra": {"account_id": "emulator-account"},
                    }
                ),
            )
            within = await events(trigger())
            await asyncio.sleep(1.05)
            after = await events(trigger())
            return first, within, after
        finally:
            await shared_async_clients.aclose()

    (first,), (within,), (after,) = asyncio.run(three_in_a_row())
    assert (first["status"], within["status"]) == ("success", "success")  # the shared read, still fresh
    assert after["status"] == "error" and after["error"]["status_code"] == 403  # the new (wrong) token
    assert len(reads) == 2


def test_a_failed_connection_read_is_not_kept(monkeypatch, imagen_emulator):
    good = os.environ["AIRFLOW_CONN_CLOUDFLARE_WORKERS_AI_DEFAULT"]
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDFLARE_WORKERS_AI_DEFAULT", json.dumps({"conn_type": "cloudflare_workers_ai"}))

    async def broken_then_fixed():
        try:
            broken = await asyncio.gather(*(events(trigger()) for _ in range(3)))
            monkeypatch.setenv("AIRFLOW_CONN_CLOUDFLARE_WORKERS_AI_DEFAULT", good)
            return broken, await events(trigger())
        finally:
            await shared_async_clients.aclose()

    broken, (fixed,) = asyncio.run(broken_then_fixed())
    assert all(payload["error"]["type"] == "ConnectionConfigError" for (payload,) in broken)
    assert fixed["status"] == "success"


def test_a_cancelled_trigger_does_not_cancel_the_read_others_wait_for(monkeypatch, imagen_emulator):
    reads = count_connection_reads(monkeypatch, delay=0.2)

    async def cancel_the_first():
        try:
            first = asyncio.ensure_future(events(trigger()))
            await asyncio.sleep(0.05)  # the first trigger's read is under way
            second = asyncio.ensure_future(events(trigger()))
            await asyncio.sleep(0.05)
            first.cancel()
            return await second
        finally:
            await shared_async_clients.aclose()

    (payload,) = asyncio.run(cancel_the_first())
    assert payload["status"] == "success"
    assert len(reads) == 1


def test_a_read_cancelled_under_everyone_is_read_again(monkeypatch, imagen_emulator):
    reads: list[str] = []
    original = CloudflareWorkersAIHook.aget_connection

    async def cancelled_the_first_time(conn_id):
        reads.append(conn_id)
        if len(reads) == 1:  # e.g. a loop winding down cancels the read: the next trigger must not inherit it
            raise asyncio.CancelledError
        return await original(conn_id)

    monkeypatch.setattr(CloudflareWorkersAIHook, "aget_connection", staticmethod(cancelled_the_first_time))

    async def cancelled_then_again():
        try:
            with pytest.raises(asyncio.CancelledError):
                await events(trigger())
            return await events(trigger())
        finally:
            await shared_async_clients.aclose()

    (payload,) = asyncio.run(cancelled_then_again())
    assert payload["status"] == "success"
    assert len(reads) == 2


def test_a_missing_connection_fails_the_task_through_one_event_naming_it(monkeypatch):
    from airflow_provider_imagen.operators import ImagenGenerateImageOperator

    monkeypatch.delenv("AIRFLOW_CONN_CLOUDFLARE_WORKERS_AI_DEFAULT", raising=False)
    (payload,) = asyncio.run(events(trigger(cloudflare_conn_id="nowhere")))
    assert payload["status"] == "error"
    assert "nowhere" in payload["error"]["message"]
    error = error_from_dict(payload["error"])
    assert type(error).__name__ == "AirflowNotFoundException"  # what the synchronous path raises too
    with pytest.raises(type(error), match="nowhere"):
        ImagenGenerateImageOperator(task_id="t", prompt="x").execute_complete({}, payload)


def test_a_rotated_token_replaces_the_shared_client_and_the_old_one_is_closed(monkeypatch, imagen_emulator):
    good = os.environ["AIRFLOW_CONN_CLOUDFLARE_WORKERS_AI_DEFAULT"]
    monkeypatch.setattr(clients, "SHARED_SETTINGS_SECONDS", 0.0)  # every trigger reads the connection anew

    async def rotate():
        try:
            first = await events(trigger())
            seen = [shared_async_clients.open_clients()]
            for token in ("rotated-1", "rotated-2", "rotated-3"):
                rotated = json.loads(good)
                rotated["password"] = token
                monkeypatch.setenv("AIRFLOW_CONN_CLOUDFLARE_WORKERS_AI_DEFAULT", json.dumps(rotated))
                await events(trigger())
                await asyncio.sleep(0)  # let a replaced client's close run
                seen.append(shared_async_clients.open_clients())
            return first, seen
        finally:
            await shared_async_clients.aclose()

    (first,), seen = asyncio.run(rotate())
    assert first["status"] == "success"
    assert seen == [1, 1, 1, 1]  # one open client at a time: each replaced one is closed, not leaked


def test_a_loop_keeps_a_bounded_number_of_shared_clients(imagen_emulator):
    async def many_timeouts():
        try:
            for timeout in range(1, clients.MAX_CLIENTS_PER_LOOP + 10):
                await events(trigger(timeout=float(timeout)))
            await asyncio.sleep(0)
            return len(shared_async_clients), shared_async_clients.open_clients()
        finally:
            await shared_async_clients.aclose()

    kept, open_clients = asyncio.run(many_timeouts())
    assert kept == open_clients == clients.MAX_CLIENTS_PER_LOOP
