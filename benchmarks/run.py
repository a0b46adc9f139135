"""
Side-by-side benchmarks against the emulator on 127.0.0.1, each figure a median over repeated runs and a
ratio against a baseline measured in the same run.

    ./scripts/bench.sh                 # full sizes (about 3 minutes on 2 cores)
    .venv/bin/python benchmarks/run.py --quick --repeat 1   # tiny sizes: what the smoke test runs

Writes benchmarks/results/latest.json (or --json PATH) and prints a Markdown table.
The emulator runs in its own process; the client side runs in this one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "emulator-token"
ACCOUNT = "bench"
BODY_INPUT = {"aspect_ratio": "1:1"}


class Emulator:
    """The emulator CLI in a subprocess, at a given latency."""

    def __init__(self, latency: float) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_base = f"{self.url}/client/v4"
        command = [sys.executable, "-m", "airflow_provider_imagen.emulator.cli", "--port", str(self.port)]
        command += ["--latency", str(latency), "--log-level", "error"]
        self.process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{self.url}/__emulator__/stats").raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the emulator did not start") from None
                time.sleep(0.05)

    def connection(self) -> str:
        return json.dumps(
            {
                "conn_type": "cloudflare_workers_ai",
                "host": self.api_base,
                "password": TOKEN,
                "extra": {"account_id": ACCOUNT},
            }
        )

    def __enter__(self) -> Emulator:
        os.environ["AIRFLOW_CONN_CLOUDFLARE_WORKERS_AI_DEFAULT"] = self.connection()
        os.environ["AIRFLOW_CONN_BENCH_HTTP"] = json.dumps({"conn_type": "http", "host": self.url})
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(10)


def median_of(repeat: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(repeat))


# --- 0. The emulator's own rate -----------------------------------------------------------------------


async def _bare_batch(api_base: str, n: int, concurrency: int, tag: str) -> None:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as client:
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with gate:
                body = {"model": "google/imagen-4", "input": {"prompt": f"{tag} {i}", **BODY_INPUT}}
                response = await client.post(f"{api_base}/accounts/{ACCOUNT}/ai/run", json=body)
                response.raise_for_status()
                assert response.json()["result"]["image"]

        await asyncio.gather(*(one(i) for i in range(n)))


def emulator_rate(n: int, repeat: int) -> dict[str, Any]:
    with Emulator(0.0) as emulator:
        asyncio.run(_bare_batch(emulator.api_base, 100, 50, "warm"))

        def measure() -> float:
            started = time.perf_counter()
            asyncio.run(_bare_batch(emulator.api_base, n, 50, "rate"))
            return n / (time.perf_counter() - started)

        return {"requests": n, "median_rps": median_of(repeat, measure)}


# --- 1. Batch throughput --------------------------------------------------------------------------------


def throughput(n: int, concurrency: int, latency: float, repeat: int) -> dict[str, Any]:
    from airflow_provider_imagen.hooks import CloudflareWorkersAIHook

    ideal = n * latency / concurrency
    results: dict[str, Any] = {"n": n, "concurrency": concurrency, "latency": latency, "ideal_s": ideal}
    with Emulator(latency) as emulator:
        prompts = [f"throughput {i}" for i in range(n)]

        def ours() -> float:
            started = time.perf_counter()
            images = CloudflareWorkersAIHook().generate_images(prompts, "1:1", max_concurrency=concurrency)
            elapsed = time.perf_counter() - started
            assert all(getattr(i, "url", None) for i in images)
            return elapsed

        def bare() -> float:
            started = time.perf_counter()
            asyncio.run(_bare_batch(emulator.api_base, n, concurrency, "bare"))
            return time.perf_counter() - started

        results["bare_httpx_s"] = median_of(repeat, bare)
        results["ours_s"] = median_of(repeat, ours)
        results["cloudflare_sdk_s"] = _cloudflare_sdk(emulator, n, concurrency, repeat)
        small = max(5, n // 20)
        results["http_hook_sequential_s"] = _http_hook(small, repeat) * n / small
        results["http_hook_measured_n"] = small
    results["ours_vs_ideal"] = results["ours_s"] / ideal
    results["ours_vs_bare"] = results["ours_s"] / results["bare_httpx_s"]
    return results


def _cloudflare_sdk(emulator: Emulator, n: int, concurrency: int, repeat: int) -> float | None:
    try:
        from cloudflare import AsyncCloudflare
    except ImportError:
        return None

    async def run() -> None:
        client = AsyncCloudflare(api_token=TOKEN, base_url=emulator.api_base, max_retries=0, timeout=60)
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with gate:
                await client.ai.run("google/imagen-4", account_id=ACCOUNT, prompt=f"sdk {i}", extra_body=BODY_INPUT)

        try:
            await asyncio.gather(*(one(i) for i in range(n)))
        finally:
            await client.close()

    def measure() -> float:
        started = time.perf_counter()
        asyncio.run(run())
        return time.perf_counter() - started

    return median_of(repeat, measure)


def _http_hook(n: int, repeat: int) -> float:
    from airflow.providers.http.hooks.http import HttpHook

    def measure() -> float:
        hook = HttpHook(method="POST", http_conn_id="bench_http")
        started = time.perf_counter()
        for i in range(n):
            body = {"model": "google/imagen-4", "input": {"prompt": f"httphook {i}", **BODY_INPUT}}
            response = hook.run(
                f"/client/v4/accounts/{ACCOUNT}/ai/run",
                json=body,
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert response.json()["result"]["image"]
        return time.perf_counter() - started

    return median_of(repeat, measure)


# --- 2. Client CPU per call --------------------------------------------------------------------------------


def cpu_per_call(n: int, repeat: int) -> dict[str, Any]:
    from airflow_provider_imagen.hooks import CloudflareWorkersAIHook

    with Emulator(0.0) as emulator:
        hook = CloudflareWorkersAIHook()
        client = httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        url = f"{emulator.api_base}/accounts/{ACCOUNT}/ai/run"

        def ours() -> float:
            started = time.process_time()
            for i in range(n):
                assert hook.generate_image(f"cpu {i}", "1:1").url
            return (time.process_time() - started) / n

        def bare() -> float:
            started = time.process_time()
            for i in range(n):
                body = {"model": "google/imagen-4", "input": {"prompt": f"cpu {i}", **BODY_INPUT}}
                response = client.post(url, json=body)
                response.raise_for_status()
                assert response.json()["result"]["image"]
            return (time.process_time() - started) / n

        ours(), bare()  # warm-up: connections, imports, caches
        result = {"n": n, "ours_ms": median_of(repeat, ours) * 1000, "bare_httpx_ms": median_of(repeat, bare) * 1000}
        hook.close()
        client.close()
    result["ratio"] = result["ours_ms"] / result["bare_httpx_ms"]
    return result


# --- 3. Import cost at DAG parse time ---------------------------------------------------------------------


IMPORTS = {
    "airflow_provider_imagen.operators": "ours: operators",
    "airflow_provider_imagen.hooks": "ours: hooks",
    "airflow.providers.http.operators.http": "http provider operators",
    "airflow.providers.openai.operators.openai": "openai provider operators",
}


def import_cost(repeat: int) -> dict[str, Any]:
    script = "import time, airflow.sdk\nt = time.perf_counter()\nimport {module}\nprint(time.perf_counter() - t)\n"
    results: dict[str, Any] = {}
    for module, label in IMPORTS.items():
        samples = []
        for _ in range(repeat):
            out = subprocess.run(
                [sys.executable, "-c", script.format(module=module)], capture_output=True, text=True, check=False
            )
            if out.returncode != 0:
                break
            samples.append(float(out.stdout.strip().splitlines()[-1]) * 1000)
        results[label] = statistics.median(samples) if samples else None
    return results


# --- 4. Triggerer load --------------------------------------------------------------------------------------


def triggerer_load(n: int, latency: float, repeat: int) -> dict[str, Any]:
    from airflow_provider_imagen.hooks import shared_async_clients
    from airflow_provider_imagen.triggers import ImagenGenerateImageTrigger

    async def run_all() -> tuple[float, int, int]:
        triggers = [ImagenGenerateImageTrigger(prompt=f"trigger {i}", aspect_ratio="1:1") for i in range(n)]

        async def one(trigger: ImagenGenerateImageTrigger) -> None:
            async for event in trigger.run():
                assert event.payload["status"] == "success", event.payload

        started = time.perf_counter()
        await asyncio.gather(*(one(t) for t in triggers))
        elapsed = time.perf_counter() - started
        clients, pools = len(shared_async_clients), shared_async_clients.connection_pools()
        await shared_async_clients.aclose()
        return elapsed, clients, pools

    with Emulator(latency):
        runs = [asyncio.run(run_all()) for _ in range(repeat)]
    elapsed = statistics.median(r[0] for r in runs)
    return {
        "n": n,
        "latency": latency,
        "wall_s": elapsed,
        "ratio_to_latency": elapsed / latency,
        "clients": runs[0][1],
        "pools": runs[0][2],
    }


# --- 5. Memory while persisting a large image ------------------------------------------------------------


MEMORY_SCRIPT = """
import json, os, resource, sys, tempfile
import httpx
url, size, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
import airflow.sdk  # what a task has loaded anyway
from airflow_provider_imagen.storage import store_image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with tempfile.TemporaryDirectory() as folder:
    if mode == "ours":
        stored = store_image(output_path=folder + "/", url=url, prompt="big", inputs={}, max_bytes=size * 2)
        written = os.path.getsize(stored.path)
    else:  # what a hand-written task often does
        data = httpx.get(url, timeout=60).content
        with open(os.path.join(folder, "big.png"), "wb") as f:
            f.write(data)
        written = len(data)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"delta_mb": (after - before) / 1024, "written": written}))
"""


def memory(size: int, repeat: int) -> dict[str, Any]:
    from airflow_provider_imagen.emulator.server import EmulatorClient

    results: dict[str, Any] = {"image_mb": size / 1e6}
    with Emulator(0.0) as emulator:
        control = EmulatorClient(emulator.url)
        with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            body = {"model": "google/imagen-4", "input": {"prompt": "a big one"}}
            url = client.post(f"{emulator.api_base}/accounts/{ACCOUNT}/ai/run", json=body).json()["result"]["image"]
        for mode in ("ours", "naive"):
            deltas = []
            for _ in range(repeat):
                control.inject("image_huge", size=size)
                out = subprocess.run(
                    [sys.executable, "-c", MEMORY_SCRIPT, url, str(size), mode],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                measured = json.loads(out.stdout.strip().splitlines()[-1])
                assert measured["written"] == size, measured
                deltas.append(measured["delta_mb"])
            results[f"{mode}_peak_rss_delta_mb"] = statistics.median(deltas)
        control.close()
    return results


# --- Report -----------------------------------------------------------------------------------------------------


def fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def table(r: dict[str, Any]) -> str:
    t, c, i, g, m = r["throughput"], r["cpu"], r["imports"], r["triggerer"], r["memory"]
    rows = [
        "| benchmark | ours | baseline | ratio | target |",
        "|---|---|---|---|---|",
        f"| emulator's own rate (latency 0, concurrency 50) | {fmt(r['emulator']['median_rps'], ' req/s', 0)} | | | not the limit |",
        f"| 1. batch of {t['n']}, latency {t['latency']} s, concurrency {t['concurrency']} | {fmt(t['ours_s'], ' s')} "
        f"| ideal {fmt(t['ideal_s'], ' s')} | {fmt(t['ours_vs_ideal'], 'x')} | <= 1.10x |",
        f"| | | bare httpx + semaphore {fmt(t['bare_httpx_s'], ' s')} | {fmt(t['ours_vs_bare'], 'x')} | <= 1.05x |",
        f"| | | cloudflare SDK async {fmt(t['cloudflare_sdk_s'], ' s')} "
        f"| {fmt(t['ours_s'] / t['cloudflare_sdk_s'] if t['cloudflare_sdk_s'] else None, 'x')} | |",
        f"| | | HttpHook sequential {fmt(t['http_hook_sequential_s'], ' s', 1)} (from n={t['http_hook_measured_n']}) "
        f"| {fmt(t['ours_s'] / t['http_hook_sequential_s'], 'x', 3)} | |",
        f"| 2. client CPU per call (latency 0) | {fmt(c['ours_ms'], ' ms')} | bare httpx {fmt(c['bare_httpx_ms'], ' ms')} "
        f"| {fmt(c['ratio'], 'x')} | <= 1.2x |",
        f"| 3. import above airflow.sdk: operators | {fmt(i['ours: operators'], ' ms', 1)} "
        f"| http {fmt(i['http provider operators'], ' ms', 1)}, openai {fmt(i['openai provider operators'], ' ms', 1)} "
        f"| | < 30 ms, below both |",
        f"| 3. import above airflow.sdk: hooks | {fmt(i['ours: hooks'], ' ms', 1)} | | | |",
        f"| 4. {g['n']} triggers, latency {g['latency']} s | {fmt(g['wall_s'], ' s')}, {g['clients']} client, {g['pools']} pools of <= 10 "
        f"| latency {g['latency']} s | {fmt(g['ratio_to_latency'], 'x')} | <= 1.3x, pools bounded |",
        f"| 5. peak RSS persisting a {m['image_mb']:.0f} MB image | {fmt(m['ours_peak_rss_delta_mb'], ' MB', 1)} "
        f"| naive .content {fmt(m['naive_peak_rss_delta_mb'], ' MB', 1)} | | <= 16 MB |",
    ]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "latest.json")
    args = parser.parse_args()
    os.environ.setdefault("AIRFLOW_HOME", str(ROOT / ".quickstart" / "bench-airflow"))
    q = args.quick
    results: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "emulator": emulator_rate(200 if q else 3000, args.repeat),
        "throughput": throughput(40 if q else 1000, 10 if q else 50, 0.02 if q else 0.1, args.repeat),
        "cpu": cpu_per_call(20 if q else 500, args.repeat),
        "imports": import_cost(1 if q else max(5, args.repeat)),
        "triggerer": triggerer_load(50 if q else 500, 0.05 if q else 0.2, args.repeat),
        "memory": memory((4 if q else 64) * 1_000_000, args.repeat),
    }
    import airflow

    results["machine"]["airflow"] = airflow.__version__
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(table(results))
    print(
        f"\nJSON: {args.json}  (peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB)"
    )


if __name__ == "__main__":
    main()
