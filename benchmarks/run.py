"""
Side-by-side benchmarks against the emulator on 127.0.0.1 (and, for the triggerer, a null server that only
waits), each figure a median over rounds in which ours and its baselines run in turns.

    ./scripts/bench.sh                           # full sizes (about 3 minutes on 2 cores)
    ./scripts/bench.sh --only triggerer --repeat 5
    ./scripts/bench.sh --only throughput --profile     # where the time goes (pyinstrument)
    ./scripts/bench.sh --only rate_limit              # at the account's rate limit (about 6 minutes)
    .venv/bin/python benchmarks/run.py --quick --repeat 1   # tiny sizes: what the smoke test runs

Writes benchmarks/results/latest.json (or --json PATH) and prints a Markdown table.
The servers run in their own processes; the clients in this one.
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
    """
    The emulator CLI in a subprocess, at a given latency; or, with ``null=True``, ``null_server.py``: a server
    that answers every request with the same success after the latency and does nothing else.
    """

    def __init__(self, latency: float, null: bool = False, limit: tuple[float, float] | None = None) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_base = f"{self.url}/client/v4"
        if null:
            command = [sys.executable, str(ROOT / "benchmarks" / "null_server.py"), str(self.port), str(latency)]
        else:
            command = [sys.executable, "-m", "airflow_provider_imagen.emulator.cli", "--port", str(self.port)]
            command += ["--latency", str(latency), "--log-level", "error"]
            if limit is not None:  # requests a minute, and how many at once
                command += ["--rate-limit-per-minute", str(limit[0]), "--rate-limit-burst", str(limit[1])]
        self.process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{self.url}/__emulator__/stats", timeout=latency + 5).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"{command[1]} did not start") from None
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


def side_by_side(repeat: int, contestants: dict[str, Callable[[], float]]) -> dict[str, float]:
    """
    The median of each contestant, measured in turns (one run of each per round), so that whatever else the
    shared machine does at the time, and the garbage earlier runs left behind, weighs on all of them alike.
    A first round, not counted, pays for imports and first-time setup.
    """
    samples: dict[str, list[float]] = {name: [] for name in contestants}
    for measure in contestants.values():
        measure()
    for _ in range(repeat):
        for name, measure in contestants.items():
            samples[name].append(measure())
    return {name: statistics.median(values) for name, values in samples.items()}


# --- The floor: HTTP/1.1 written by hand over asyncio streams, no HTTP library ------------------------------


def _raw_request(prompt: str) -> bytes:
    body = json.dumps({"model": "google/imagen-4", "input": {"prompt": prompt, **BODY_INPUT}}).encode()
    head = (
        f"POST /client/v4/accounts/{ACCOUNT}/ai/run HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _raw_batch(port: int, n: int, connections: int, tag: str) -> None:
    """
    ``n`` requests over ``connections`` keep-alive connections, each sending its share one after another:
    what Python can do with no HTTP library, so the physical floor of a figure on this machine.
    """

    async def worker(first: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in range(first, n, connections):
                writer.write(_raw_request(f"{tag} {i}"))
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200"), head
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                assert json.loads(await reader.readexactly(length))["result"]["image"]
        finally:
            writer.close()

    await asyncio.gather(*(worker(first) for first in range(connections)))


async def _bare_batch(api_base: str, n: int, concurrency: int, tag: str, spread: bool = False) -> None:
    """A bare ``httpx.AsyncClient`` and a semaphore: one pool of ``concurrency``, or ``SpreadTransport``'s pools."""
    from airflow_provider_imagen._cloudflare.transport import SpreadTransport

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    pool: dict[str, Any] = {"transport": SpreadTransport()} if spread else {"limits": limits}
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60, **pool) as client:
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with gate:
                body = {"model": "google/imagen-4", "input": {"prompt": f"{tag} {i}", **BODY_INPUT}}
                response = await client.post(f"{api_base}/accounts/{ACCOUNT}/ai/run", json=body)
                response.raise_for_status()
                assert response.json()["result"]["image"]

        await asyncio.gather(*(one(i) for i in range(n)))


def _timed(run: Callable[[], Any]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


# --- 0. The emulator's own rate -----------------------------------------------------------------------


def emulator_rate(n: int, burst: int, repeat: int) -> dict[str, Any]:
    """Requests per second the emulator answers at latency 0, asked by the hand-written client (the cheapest)."""
    with Emulator(0.0) as emulator:
        asyncio.run(_raw_batch(emulator.port, 200, 50, "warm"))
        kept = median_of(repeat, lambda: _timed(lambda: asyncio.run(_raw_batch(emulator.port, n, 50, "rate"))))
        new = median_of(repeat, lambda: _timed(lambda: asyncio.run(_raw_batch(emulator.port, burst, burst, "rate"))))
    return {"requests": n, "median_rps": n / kept, "burst": burst, "burst_rps": burst / new}


# --- 1. Batch throughput --------------------------------------------------------------------------------


def throughput(n: int, concurrency: int, latency: float, repeat: int) -> dict[str, Any]:
    from airflow_provider_imagen.hooks import CloudflareWorkersAIHook

    ideal = n * latency / concurrency
    results: dict[str, Any] = {"n": n, "concurrency": concurrency, "latency": latency, "ideal_s": ideal}
    with Emulator(latency) as emulator:
        prompts = [f"throughput {i}" for i in range(n)]

        def ours() -> None:
            images = CloudflareWorkersAIHook().generate_images(prompts, "1:1", max_concurrency=concurrency)
            assert all(getattr(i, "url", None) for i in images)

        def bare(spread: bool) -> None:
            asyncio.run(_bare_batch(emulator.api_base, n, concurrency, "bare", spread))

        contestants = {
            "ours_s": lambda: _timed(ours),
            "raw_floor_s": lambda: _timed(lambda: asyncio.run(_raw_batch(emulator.port, n, concurrency, "raw"))),
            "bare_httpx_s": lambda: _timed(lambda: bare(spread=False)),
            "bare_httpx_spread_s": lambda: _timed(lambda: bare(spread=True)),
        }
        sdk = _cloudflare_sdk(emulator, n, concurrency)
        if sdk is not None:
            contestants["cloudflare_sdk_s"] = sdk
        results["cloudflare_sdk_s"] = None
        results.update(side_by_side(repeat, contestants))
        small = max(5, n // 20)
        results["http_hook_sequential_s"] = median_of(repeat, lambda: _timed(lambda: _http_hook(small))) * n / small
        results["http_hook_measured_n"] = small
    results["ours_vs_ideal"] = results["ours_s"] / ideal
    results["ours_vs_bare"] = results["ours_s"] / results["bare_httpx_s"]
    results["ours_vs_bare_spread"] = results["ours_s"] / results["bare_httpx_spread_s"]
    return results


def _cloudflare_sdk(emulator: Emulator, n: int, concurrency: int) -> Callable[[], float] | None:
    """How long the official SDK's async client takes for the batch, or ``None`` without the SDK."""
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

    return lambda: _timed(lambda: asyncio.run(run()))


def _http_hook(n: int) -> None:
    """``n`` calls, one after another, through Airflow's ``HttpHook`` (what a hand-written task would use)."""
    from airflow.providers.http.hooks.http import HttpHook

    hook = HttpHook(method="POST", http_conn_id="bench_http")
    for i in range(n):
        body = {"model": "google/imagen-4", "input": {"prompt": f"httphook {i}", **BODY_INPUT}}
        response = hook.run(
            f"/client/v4/accounts/{ACCOUNT}/ai/run", json=body, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert response.json()["result"]["image"]


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

        # Each run is short (a quarter of a second) and CPU time is noisy on a shared machine: more rounds.
        medians = side_by_side(3 * repeat, {"ours": ours, "bare": bare})
        result = {"n": n, "ours_ms": medians["ours"] * 1000, "bare_httpx_ms": medians["bare"] * 1000}
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
    from airflow_provider_imagen._cloudflare.clients import shared_async_clients
    from airflow_provider_imagen.triggers import ImagenGenerateImageTrigger

    seen: dict[str, int] = {}

    async def run_all() -> None:
        triggers = [ImagenGenerateImageTrigger(prompt=f"trigger {i}", aspect_ratio="1:1") for i in range(n)]

        async def one(trigger: ImagenGenerateImageTrigger) -> None:
            async for event in trigger.run():
                assert event.payload["status"] == "success", event.payload

        await asyncio.gather(*(one(t) for t in triggers))
        seen["clients"], seen["pools"] = len(shared_async_clients), shared_async_clients.connection_pools()
        await shared_async_clients.aclose()

    def contest(server: Emulator, against_null: bool) -> dict[str, float]:
        """
        Ours against the same n requests at once without triggers or hooks: the hand-written client (one new
        connection each) and bare httpx over SpreadTransport's pools; against the emulator also bare httpx over
        one pool as wide as n, against the null server also the hand-written client on uvloop. Each client's
        CPU time is noted too: in one event loop, it is what the latency cannot hide.
        """
        cpu: dict[str, list[float]] = {}

        def noting_cpu(name: str, run: Callable[[], object]) -> Callable[[], float]:
            def measure() -> float:
                started = time.process_time()
                elapsed = _timed(run)
                cpu.setdefault(name, []).append(time.process_time() - started)
                return elapsed

            return measure

        contestants = {
            "wall_s": noting_cpu("ours", lambda: asyncio.run(run_all())),
            "raw_floor_s": noting_cpu("raw", lambda: asyncio.run(_raw_batch(server.port, n, n, "raw"))),
            "bare_httpx_spread_s": noting_cpu(
                "bare_spread", lambda: asyncio.run(_bare_batch(server.api_base, n, n, "bare", spread=True))
            ),
        }
        if against_null:
            uvloop = _uvloop()
            if uvloop is not None:
                contestants["raw_uvloop_floor_s"] = noting_cpu(
                    "raw_uvloop", lambda: uvloop.run(_raw_batch(server.port, n, n, "raw"))
                )
        else:
            contestants["bare_httpx_s"] = lambda: _timed(
                lambda: asyncio.run(_bare_batch(server.api_base, n, n, "bare"))
            )
        figures = side_by_side(repeat, contestants)
        # The first sample of each is side_by_side's warm-up round.
        figures.update({f"{name}_cpu_s": statistics.median(samples[1:]) for name, samples in cpu.items()})
        return {f"null_{k}" if against_null else k: v for k, v in figures.items()}

    results: dict[str, Any] = {"n": n, "latency": latency}
    with Emulator(latency) as emulator:
        results.update(contest(emulator, against_null=False))
        results.update(seen)
    # What the clients do when the server takes no time but the latency: the emulator's share of the figures.
    with Emulator(latency, null=True) as null:
        results.update(contest(null, against_null=True))
    results["ratio_to_latency"] = results["wall_s"] / latency
    results["floor_ratio_to_latency"] = results["raw_floor_s"] / latency
    results["ours_vs_bare_spread"] = results["wall_s"] / results["bare_httpx_spread_s"]
    return results


def _uvloop() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop


# --- 5. Memory while persisting a large image ------------------------------------------------------------


MEMORY_SCRIPT = """
import json, os, resource, sys, tempfile
import httpx
url, size, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
import airflow.sdk  # what a task has loaded anyway
from airflow_provider_imagen._task.storage import store_image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with tempfile.TemporaryDirectory() as folder:
    if mode == "ours":
        stored = store_image(output_path=folder + "/", url=url, prompt="big", inputs={}, max_bytes=size * 2, api_host="127.0.0.1")
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


# --- 6. At the account's rate limit ---------------------------------------------------------------------


def rate_limit(
    n: int, concurrency: int, latency: float, per_minute: float, burst_seconds: float, repeat: int
) -> dict[str, Any]:
    """
    ``n`` prompts against an emulator that allows ``per_minute`` requests a minute (``burst_seconds`` of them at
    once) and refuses the rest with 429/3040 and ``Retry-After``: our batch at ``max_concurrency`` (learning the
    limit, and told it), the official SDK with a semaphore, and ``n`` deferred generations in one event loop.
    Every run starts alike: a full bucket, zeroed counts, and the process's pacers cold (a new task process).
    """
    from cloudflare import AsyncCloudflare

    from airflow_provider_imagen._cloudflare import pacing
    from airflow_provider_imagen._cloudflare.clients import shared_async_clients
    from airflow_provider_imagen.emulator.server import EmulatorClient
    from airflow_provider_imagen.hooks import CloudflareWorkersAIHook
    from airflow_provider_imagen.models import GeneratedImage
    from airflow_provider_imagen.triggers import ImagenGenerateImageTrigger

    burst = per_minute / 60 * burst_seconds
    ideal = (n - burst) / (per_minute / 60)
    prompts = [f"limited {i}" for i in range(n)]

    def ours(requests_per_minute: float | None = None) -> int:
        hook = CloudflareWorkersAIHook(requests_per_minute=requests_per_minute)
        images = hook.generate_images(prompts, "1:1", max_concurrency=concurrency)
        return sum(not isinstance(image, GeneratedImage) for image in images)

    async def deferred() -> int:
        async def one(i: int) -> bool:
            trigger = ImagenGenerateImageTrigger(prompt=f"deferred {i}", aspect_ratio="1:1")
            return [event.payload["status"] async for event in trigger.run()] == ["success"]

        try:
            return sum(not ok for ok in await asyncio.gather(*(one(i) for i in range(n))))
        finally:
            await shared_async_clients.aclose()

    def sdk(api_base: str) -> int:
        async def run() -> int:
            client = AsyncCloudflare(api_token=TOKEN, base_url=api_base, timeout=60)  # its default 2 retries
            gate = asyncio.Semaphore(concurrency)

            async def one(prompt: str) -> None:
                async with gate:
                    await client.ai.run("google/imagen-4", account_id=ACCOUNT, prompt=prompt, extra_body=BODY_INPUT)

            try:
                outcomes = await asyncio.gather(*(one(p) for p in prompts), return_exceptions=True)
            finally:
                await client.close()
            return sum(isinstance(outcome, BaseException) for outcome in outcomes)

        return asyncio.run(run())

    results: dict[str, Any] = {
        "n": n,
        "concurrency": concurrency,
        "latency": latency,
        "per_minute": per_minute,
        "burst": burst,
        "ideal_s": ideal,
    }
    with Emulator(latency, limit=(per_minute, burst)) as emulator:
        control = EmulatorClient(emulator.url)
        contestants: dict[str, Callable[[], int]] = {
            "ours": ours,
            "ours_known_limit": lambda: ours(per_minute),
            "cloudflare_sdk": lambda: sdk(emulator.api_base),
            "deferred": lambda: asyncio.run(deferred()),
        }
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in contestants}
        for _ in range(repeat):  # in turns; no warm-up round: every run starts cold anyway
            for name, run in contestants.items():
                control.reset()
                pacing.reset()
                started = time.perf_counter()
                lost = run()
                wall = time.perf_counter() - started
                stats = control.stats()
                samples[name].append(
                    {"wall_s": wall, "lost": lost, "rejected": stats["rate_limited"], "billed": stats["generations"]}
                )
        control.close()
    for name, runs in samples.items():
        for key in ("wall_s", "lost", "rejected", "billed"):
            results[f"{name}_{key}"] = statistics.median(run[key] for run in runs)
        results[f"{name}_max_lost"] = max(run["lost"] for run in runs)
        results[f"{name}_max_rejected"] = max(run["rejected"] for run in runs)
        results[f"{name}_runs"] = runs
        results[f"{name}_vs_ideal"] = results[f"{name}_wall_s"] / ideal
    return results


# --- Report -----------------------------------------------------------------------------------------------------


def fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def table(r: dict[str, Any]) -> str:
    """The Markdown table of whichever benchmarks ``r`` holds."""

    def ratio(ours: float | None, baseline: float | None, digits: int = 2) -> str:
        return fmt(ours / baseline if ours is not None and baseline else None, "x", digits)

    rows = ["| benchmark | ours | baseline | ratio | target |", "|---|---|---|---|---|"]
    if "emulator" in r:
        e = r["emulator"]
        rows += [
            f"| 0. emulator's own rate, latency 0, hand-written client | {fmt(e['median_rps'], ' req/s', 0)} over 50 "
            f"keep-alive connections; {fmt(e['burst_rps'], ' req/s', 0)} for {e['burst']} new connections at once "
            f"| | | not the limit |",
        ]
    if "throughput" in r:
        t = r["throughput"]
        rows += [
            f"| 1. batch of {t['n']}, latency {t['latency']} s, concurrency {t['concurrency']} | {fmt(t['ours_s'], ' s')} "
            f"| ideal {fmt(t['ideal_s'], ' s')} | {fmt(t['ours_vs_ideal'], 'x')} | <= 1.10x |",
            f"| | | floor, no HTTP library (hand-written HTTP/1.1 on asyncio): {fmt(t['raw_floor_s'], ' s')} "
            f"= {ratio(t['raw_floor_s'], t['ideal_s'])} ideal | {ratio(t['ours_s'], t['raw_floor_s'])} | |",
            f"| | | bare httpx + semaphore, one {t['concurrency']}/{t['concurrency']} pool "
            f"{fmt(t['bare_httpx_s'], ' s')} | {fmt(t['ours_vs_bare'], 'x')} | <= 1.05x |",
            f"| | | bare httpx + semaphore over `SpreadTransport`'s pools {fmt(t['bare_httpx_spread_s'], ' s')} "
            f"| {fmt(t['ours_vs_bare_spread'], 'x')} | <= 1.05x |",
            f"| | | cloudflare SDK async {fmt(t['cloudflare_sdk_s'], ' s')} | {ratio(t['ours_s'], t['cloudflare_sdk_s'])} | |",
            f"| | | HttpHook sequential {fmt(t['http_hook_sequential_s'], ' s', 1)} (from n={t['http_hook_measured_n']}) "
            f"| {ratio(t['ours_s'], t['http_hook_sequential_s'], 3)} | |",
        ]
    if "cpu" in r:
        c = r["cpu"]
        rows += [
            f"| 2. client CPU per call (latency 0) | {fmt(c['ours_ms'], ' ms', 3)} | bare httpx {fmt(c['bare_httpx_ms'], ' ms', 3)} "
            f"| {fmt(c['ratio'], 'x')} | <= 1.2x |",
        ]
    if "imports" in r:
        i = r["imports"]
        rows += [
            f"| 3. import above airflow.sdk: operators | {fmt(i['ours: operators'], ' ms', 1)} "
            f"| http {fmt(i['http provider operators'], ' ms', 1)}, openai {fmt(i['openai provider operators'], ' ms', 1)} "
            f"| | < 30 ms, below both |",
            f"| 3. import above airflow.sdk: hooks | {fmt(i['ours: hooks'], ' ms', 1)} | | | |",
        ]
    if "triggerer" in r:
        g = r["triggerer"]
        rows += [
            f"| 4. {g['n']} triggers in one event loop, latency {g['latency']} s | {fmt(g['wall_s'], ' s')} "
            f"({fmt(g['ours_cpu_s'], ' s')} CPU); {g['clients']} client, {g['pools']} pools of <= 10 | latency {g['latency']} s "
            f"| {fmt(g['ratio_to_latency'], 'x')} | <= 1.3x, pools bounded |",
            f"| | | floor, no HTTP library, {g['n']} new connections: {fmt(g['raw_floor_s'], ' s')} "
            f"= {fmt(g['floor_ratio_to_latency'], 'x')} latency ({fmt(g['raw_cpu_s'], ' s')} CPU) "
            f"| {ratio(g['wall_s'], g['raw_floor_s'])} | |",
            f"| | | bare httpx, {g['n']} requests at once over `SpreadTransport`'s pools "
            f"{fmt(g['bare_httpx_spread_s'], ' s')} ({fmt(g['bare_spread_cpu_s'], ' s')} CPU) | {fmt(g['ours_vs_bare_spread'], 'x')} | |",
            f"| | | bare httpx, {g['n']} requests at once over one pool of {g['n']} {fmt(g['bare_httpx_s'], ' s')} "
            f"| {ratio(g['wall_s'], g['bare_httpx_s'])} | |",
            f"| 4. the same against a null server (answers after the latency, does nothing else) "
            f"| {fmt(g['null_wall_s'], ' s')} ({fmt(g['null_ours_cpu_s'], ' s')} CPU) | latency {g['latency']} s "
            f"| {ratio(g['null_wall_s'], g['latency'])} | |",
            f"| | | floor {fmt(g['null_raw_floor_s'], ' s')} = {ratio(g['null_raw_floor_s'], g['latency'])} latency "
            f"({fmt(g['null_raw_cpu_s'], ' s')} CPU); on uvloop {fmt(g.get('null_raw_uvloop_floor_s'), ' s')} "
            f"= {ratio(g.get('null_raw_uvloop_floor_s'), g['latency'])} latency "
            f"({fmt(g.get('null_raw_uvloop_cpu_s'), ' s')} CPU) | {ratio(g['null_wall_s'], g['null_raw_floor_s'])} | |",
            f"| | | bare httpx over `SpreadTransport`'s pools {fmt(g['null_bare_httpx_spread_s'], ' s')} "
            f"({fmt(g['null_bare_spread_cpu_s'], ' s')} CPU) | {ratio(g['null_wall_s'], g['null_bare_httpx_spread_s'])} | |",
        ]
    if "rate_limit" in r:
        x = r["rate_limit"]
        head = (
            f"6. {x['n']} prompts at a limit of {x['per_minute']:.0f}/min ({x['burst']:.0f} at once), "
            f"latency {x['latency']} s, concurrency {x['concurrency']}"
        )
        labels = {
            "ours": (head, "<= 1.15x, none lost, refused <= 10%"),
            "ours_known_limit": ("| told `requests_per_minute`", ""),
            "cloudflare_sdk": ("| cloudflare SDK async + semaphore, its 2 retries", ""),
            "deferred": (f"| {x['n']} deferred generations in one event loop", "<= 1.25x, none lost"),
        }
        for name, (label, target) in labels.items():
            rows.append(
                f"| {label.lstrip('| ')} | {fmt(x[f'{name}_wall_s'], ' s')}, lost {x[f'{name}_lost']:.0f} "
                f"(at most {x[f'{name}_max_lost']}), refused {x[f'{name}_rejected']:.0f} (at most "
                f"{x[f'{name}_max_rejected']}), billed {x[f'{name}_billed']:.0f} | ideal {fmt(x['ideal_s'], ' s')} "
                f"| {fmt(x[f'{name}_vs_ideal'], 'x')} | {target} |"
            )
    if "memory" in r:
        m = r["memory"]
        rows += [
            f"| 5. peak RSS persisting a {m['image_mb']:.0f} MB image | {fmt(m['ours_peak_rss_delta_mb'], ' MB', 1)} "
            f"| naive .content {fmt(m['naive_peak_rss_delta_mb'], ' MB', 1)} | | <= 16 MB |",
        ]
    return "\n".join(rows)


BENCHMARKS = ("emulator", "throughput", "cpu", "imports", "triggerer", "memory", "rate_limit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=BENCHMARKS, help="run only these")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run under pyinstrument (bench extra) and print where the time went; writes no JSON",
    )
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "latest.json")
    args = parser.parse_args()
    os.environ.setdefault("AIRFLOW_HOME", str(ROOT / ".quickstart" / "bench-airflow"))
    q = args.quick
    benchmarks: dict[str, Callable[[], dict[str, Any]]] = {
        "emulator": lambda: emulator_rate(200 if q else 3000, 50 if q else 500, args.repeat),
        "throughput": lambda: throughput(40 if q else 1000, 10 if q else 50, 0.02 if q else 0.1, args.repeat),
        "cpu": lambda: cpu_per_call(20 if q else 500, args.repeat),
        "imports": lambda: import_cost(1 if q else max(5, args.repeat)),
        "triggerer": lambda: triggerer_load(50 if q else 500, 0.05 if q else 0.2, args.repeat),
        "memory": lambda: memory((4 if q else 64) * 1_000_000, args.repeat),
        "rate_limit": lambda: rate_limit(
            40 if q else 300, 10 if q else 50, 0.02 if q else 0.5, 1200 if q else 600, 1.0 if q else 2.0, args.repeat
        ),
    }
    profiler = None
    if args.profile:
        from pyinstrument import Profiler

        profiler = Profiler()
        profiler.start()
    results: dict[str, Any] = {name: benchmarks[name]() for name in BENCHMARKS if name in args.only}
    if profiler is not None:
        profiler.stop()
        print(profiler.output_text(unicode=True, color=False))
        print("Profiled run: its figures are slowed by the profiler.\n")
    import airflow

    results["machine"] = {
        "python": platform.python_version(),
        "airflow": airflow.__version__,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }
    if not args.profile:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    print(table(results))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"\nJSON: {'none (profiled)' if args.profile else args.json}  (peak RSS of this process: {rss} MB)")


if __name__ == "__main__":
    main()
