"""
How many Imagen generation requests per second the emulator answers (latency 0), so that no other
benchmark is limited by it. The emulator runs in its own process (one core), the load from this one.

    .venv/bin/python benchmarks/emulator_rate.py [--requests 3000] [--concurrency 50] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def load(url: str, requests: int, concurrency: int) -> float:
    body = {"model": "google/imagen-4", "input": {"prompt": "benchmark", "aspect_ratio": "1:1"}}
    headers = {"Authorization": "Bearer emulator-token"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, headers=headers, timeout=30) as client:
        gate = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with gate:
                response = await client.post(url, json=body)
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(requests)))
        return requests / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_imagen.emulator.cli", "--port", str(port), "--log-level", "warning"],
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    url = f"http://127.0.0.1:{port}/client/v4/accounts/bench/ai/run"
    try:
        for _ in range(200):
            try:
                httpx.get(f"http://127.0.0.1:{port}/__emulator__/stats")
                break
            except httpx.ConnectError:
                time.sleep(0.05)
        asyncio.run(load(url, 200, args.concurrency))  # warm-up
        rates = [asyncio.run(load(url, args.requests, args.concurrency)) for _ in range(args.repeat)]
    finally:
        server.terminate()
        server.wait(10)
    result = {"requests": args.requests, "concurrency": args.concurrency, "median_rps": statistics.median(rates)}
    result["runs_rps"] = [round(r, 1) for r in rates]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
