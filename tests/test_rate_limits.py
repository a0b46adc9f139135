"""
Rate limits end to end: the emulator's token bucket, a batch and a triggerer's triggers paced against it, and
the budget that bounds re-sending refusals (which are not billed and not counted as retries).
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from airflow_provider_imagen._cloudflare import pacing
from airflow_provider_imagen._cloudflare.clients import shared_async_clients
from airflow_provider_imagen._cloudflare.pacing import RAMP_START
from airflow_provider_imagen._cloudflare.settings import ConnectionSettings
from airflow_provider_imagen.exceptions import CloudflareRateLimitError, ConnectionConfigError
from airflow_provider_imagen.hooks import CloudflareWorkersAIHook
from airflow_provider_imagen.models import GeneratedImage
from airflow_provider_imagen.triggers import ImagenGenerateImageTrigger

#: 600 a minute, 10 at once: a batch of 40 meets it at once, and takes 3 s at its pace.
LIMIT = {"rate_limit_per_minute": 600, "rate_limit_burst": 10}


def test_the_emulator_refuses_requests_over_its_limit_with_429_3040_and_retry_after(imagen_emulator):
    imagen_emulator.configure(rate_limit_per_minute=60, rate_limit_burst=2)
    url = f"{imagen_emulator.api_base}/accounts/{imagen_emulator.account_id}/ai/run"
    body = {"model": "google/imagen-4", "input": {"prompt": "a cat"}}
    with httpx.Client(headers={"Authorization": f"Bearer {imagen_emulator.token}"}) as client:
        answers = [client.post(url, json=body) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[2].json()["errors"][0]["code"] == 3040
    assert answers[2].headers["retry-after"] == "1"  # whole seconds, at least 1
    stats = imagen_emulator.stats()
    assert (stats["rate_limited"], stats["generations"], stats["api_requests"]) == (1, 2, 3)  # refusals unbilled


def test_the_emulator_limit_is_set_from_the_cli_and_checked(imagen_emulator):
    from airflow_provider_imagen.emulator.cli import build_parser
    from airflow_provider_imagen.emulator.state import EmulatorConfig

    args = build_parser().parse_args(["--rate-limit-per-minute", "600", "--rate-limit-burst", "20"])
    assert (args.rate_limit_per_minute, args.rate_limit_burst) == (600, 20)
    with pytest.raises(ValueError, match="rate_limit_per_minute"):
        EmulatorConfig(rate_limit_per_minute=0)
    with pytest.raises(httpx.HTTPStatusError):
        imagen_emulator.configure(rate_limit_burst=0)


def test_a_batch_at_a_low_limit_loses_no_image_and_is_billed_once_each(imagen_emulator):
    imagen_emulator.configure(latency=0.05, **LIMIT)
    prompts = [f"paced {i}" for i in range(40)]

    async def batch() -> list:
        # max_retries=0: every refusal counted as a retry would lose its image.
        async with CloudflareWorkersAIHook(max_retries=0, retry_backoff=0.01) as hook:
            return await hook.agenerate_images(prompts, "1:1", max_concurrency=20)

    results = asyncio.run(batch())
    assert all(isinstance(r, GeneratedImage) for r in results), [
        r for r in results if not isinstance(r, GeneratedImage)
    ]
    stats = imagen_emulator.stats()
    assert stats["generations"] == 40 and set(stats["generations_by_prompt"].values()) == {1}  # pacing adds none
    assert stats["rate_limited"] <= RAMP_START  # the cold start's, while the first refusal is on its way back
    assert stats["api_requests"] == 40 + stats["rate_limited"]


async def events(trigger: ImagenGenerateImageTrigger) -> list:
    return [event.payload async for event in trigger.run()]


def test_the_triggers_of_one_event_loop_share_one_pace(imagen_emulator):
    imagen_emulator.configure(latency=0.05, **LIMIT)

    async def many() -> list:
        triggers = [
            ImagenGenerateImageTrigger(prompt=f"deferred {i}", retry_backoff=0.01, max_retries=0) for i in range(60)
        ]
        try:
            return await asyncio.gather(*(events(t) for t in triggers))
        finally:
            await shared_async_clients.aclose()

    results = asyncio.run(many())
    assert all(payload["status"] == "success" for (payload,) in results)
    stats = imagen_emulator.stats()
    assert stats["generations"] == 60
    (pacer,) = pacing._pacers.values()  # one pace for the account, learned by all 60
    # Every request of every trigger went through that one pace, and it heard of every refusal: what one
    # trigger learns slows the others. (How many refusals that saves depends on scheduling: see benchmarks/.)
    assert (pacer.sent, pacer.rejections) == (stats["api_requests"], stats["rate_limited"])


def test_a_known_limit_is_never_exceeded(imagen_emulator):
    # Two at once: a bucket of one would refuse a request that the network delayed onto the next one's heels.
    imagen_emulator.configure(rate_limit_per_minute=600, rate_limit_burst=2)

    async def batch() -> list:
        async with CloudflareWorkersAIHook(requests_per_minute=600, max_retries=0) as hook:
            return await hook.agenerate_images([f"known {i}" for i in range(10)], max_concurrency=10)

    results = asyncio.run(batch())
    assert all(isinstance(r, GeneratedImage) for r in results)
    assert imagen_emulator.stats()["rate_limited"] == 0


def test_refusals_are_re_sent_until_the_budget_runs_out_then_fail_unbilled(imagen_emulator):
    imagen_emulator.inject("capacity", times=1000)
    hook = CloudflareWorkersAIHook(max_retries=1, retry_backoff=0.01, max_retry_wait=0.05, max_rate_limit_wait=0.5)
    started = time.monotonic()
    with pytest.raises(CloudflareRateLimitError) as info:
        hook.generate_image("a cat")
    assert 0.5 <= time.monotonic() - started < 5
    assert info.value.attempts == imagen_emulator.api_requests > 2  # more sends than max_retries allows
    assert imagen_emulator.generations == 0


def test_requests_per_minute_in_the_connection_is_read_and_checked(monkeypatch):
    def connection(value: object) -> None:
        extra = {"account_id": "acct", "requests_per_minute": value}
        monkeypatch.setenv(
            "AIRFLOW_CONN_PACED", json.dumps({"conn_type": "cloudflare_workers_ai", "password": "t", "extra": extra})
        )

    connection("120")
    assert CloudflareWorkersAIHook("paced").settings.requests_per_minute == 120.0
    for bad in ("fast", 0, -5, True):
        connection(bad)
        with pytest.raises(ConnectionConfigError, match=r"'paced'.*extra 'requests_per_minute'"):
            ConnectionSettings.from_connection(CloudflareWorkersAIHook("paced").get_connection("paced"))
    with pytest.raises(ConnectionConfigError, match="requests_per_minute"):
        CloudflareWorkersAIHook(requests_per_minute=0)
    with pytest.raises(ConnectionConfigError, match="requests_per_minute"):
        CloudflareWorkersAIHook(requests_per_minute="600")  # type: ignore[arg-type]
