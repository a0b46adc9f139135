"""SpreadTransport: many small connection pools instead of one big one, over real HTTP to the emulator."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from airflow_provider_imagen._cloudflare.network import proxy_for
from airflow_provider_imagen._cloudflare.transport import SpreadTransport


def run_concurrently(transport: SpreadTransport, url: str, n: int) -> list[int]:
    async def main() -> list[int]:
        async with httpx.AsyncClient(transport=transport, timeout=30) as client:
            responses = await asyncio.gather(*(client.get(url) for _ in range(n)))
            return [r.status_code for r in responses]

    return asyncio.run(main())


def test_opens_a_pool_per_ten_requests_in_flight_and_settles_back_to_zero(imagen_emulator):
    imagen_emulator.configure(latency=0.3)
    transport = SpreadTransport()
    api = f"{imagen_emulator.url}/client/v4/accounts/emulator-account/ai/run"

    async def main() -> list[int]:
        async with httpx.AsyncClient(
            transport=transport, timeout=30, headers={"Authorization": f"Bearer {imagen_emulator.token}"}
        ) as client:
            body = {"model": "google/imagen-4", "input": {"prompt": "spread"}}
            responses = await asyncio.gather(*(client.post(api, json=body) for _ in range(35)))
            return [r.status_code for r in responses]

    assert asyncio.run(main()) == [200] * 35
    assert transport.pools == 4  # 35 at once, at most 10 each
    assert transport.in_flight == 0
    assert imagen_emulator.api_requests == 35


def test_stops_opening_pools_at_the_limit_and_queues_instead(imagen_emulator):
    imagen_emulator.configure(latency=0.2)
    transport = SpreadTransport(per_pool=2, max_pools=3)
    statuses = run_concurrently(transport, f"{imagen_emulator.url}/__emulator__/stats", 20)
    assert statuses == [200] * 20
    assert transport.pools == 3
    assert transport.in_flight == 0


def test_a_failed_request_is_no_longer_counted_in_flight():
    transport = SpreadTransport()

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport, timeout=5) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get("http://127.0.0.1:9/")  # discard port: nothing listens

    asyncio.run(main())
    assert transport.in_flight == 0


def test_the_environments_proxy_follows_https_proxy_all_proxy_and_no_proxy(monkeypatch):
    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert proxy_for("https://api.cloudflare.com/client/v4", None) is None
    monkeypatch.setenv("ALL_PROXY", "http://all.internal:3128")
    assert proxy_for("https://api.cloudflare.com/client/v4", None) == "http://all.internal:3128"
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert proxy_for("https://api.cloudflare.com/client/v4", None) == "http://proxy.internal:3128"
    monkeypatch.setenv("NO_PROXY", "api.cloudflare.com")
    assert proxy_for("https://api.cloudflare.com/client/v4", None) is None
