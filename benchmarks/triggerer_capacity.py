"""
How many deferred generations one triggerer holds: memory (RSS) and open sockets with N in flight.

    python benchmarks/triggerer_capacity.py [--counts 500 2000] [--latency 20]

Starts the emulator (``imagen-emulator``, 127.0.0.1, every generation taking ``--latency`` seconds), then, for
each count, a fresh Python process that does what the triggerer's trigger runner does with deferred
``ImagenGenerateImageOperator`` tasks: it runs N ``ImagenGenerateImageTrigger`` instances in one asyncio
event loop, each reading the ``cloudflare_workers_ai_default`` connection with ``aget_connection`` and
calling the emulator through the hook's shared async client. While the generations are in flight it samples
its own RSS and open sockets; the emulator counts the requests that reached it.

What the real triggerer adds is constant per process (its supervisor, the DB session, Airflow's imports) and
is reported by the cluster test's process table; its ``[triggerer] capacity`` (default 1000) caps how many
triggers it runs at once, so 2,000 in one triggerer needs ``capacity`` >= 2000 (or two triggerers).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
TOKEN = "capacity-bench-token"  # the emulator's own, local; no real credential is involved


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_sockets() -> int:
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # closed since the listing
            count += os.readlink(fd).startswith("socket:")
    return count


async def hold(count: int, emulator: str, latency: float) -> dict[str, object]:
    from airflow_provider_imagen.triggers import ImagenGenerateImageTrigger

    stats = httpx.AsyncClient(base_url=f"{emulator}/__emulator__", timeout=10)
    await stats.post("/reset")
    baseline = {"rss_mib": round(rss_mib(), 1), "sockets": open_sockets()}

    async def one(i: int) -> str:
        trigger = ImagenGenerateImageTrigger(prompt=f"capacity probe {i}: a lighthouse", aspect_ratio="1:1")
        async for event in trigger.run():
            return str(event.payload["status"])
        return "no event"

    started = time.monotonic()
    tasks = [asyncio.create_task(one(i)) for i in range(count)]
    peak = {"rss_mib": 0.0, "sockets": 0, "in_flight_at_emulator": 0}
    # Sample while the first wave is in flight (each request takes `latency` seconds at the emulator).
    while not all(t.done() for t in tasks) and time.monotonic() - started < latency * (count / 500 + 2) + 60:
        await asyncio.sleep(0.25)
        reached = (await stats.get("/stats")).json()["api_requests"]
        in_flight = reached - sum(1 for t in tasks if t.done())
        peak["rss_mib"] = max(peak["rss_mib"], round(rss_mib(), 1))
        peak["sockets"] = max(peak["sockets"], open_sockets())
        peak["in_flight_at_emulator"] = max(peak["in_flight_at_emulator"], in_flight)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    seconds = time.monotonic() - started
    final = (await stats.get("/stats")).json()
    await stats.aclose()
    statuses: dict[str, int] = {}
    for result in results:
        key = result if isinstance(result, str) else type(result).__name__
        statuses[key] = statuses.get(key, 0) + 1
    return {
        "deferred": count,
        "latency_s": latency,
        "baseline": baseline,
        "peak": peak,
        "per_trigger_kib": round((peak["rss_mib"] - baseline["rss_mib"]) * 1024 / count, 1),
        "seconds": round(seconds, 1),
        "events": statuses,
        "api_requests": final["api_requests"],
    }


def child(count: int, emulator: str, latency: float) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    result = asyncio.run(hold(count, emulator, latency))
    print(json.dumps(result))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--latency", type=float, default=20.0, help="seconds each emulated generation takes")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--emulator", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.emulator, args.latency)
        return 0

    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    emulator = f"http://127.0.0.1:{port}"
    home = tempfile.mkdtemp(prefix="triggerer-capacity-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        {
            "AIRFLOW_HOME": home,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW_CONN_CLOUDFLARE_WORKERS_AI_DEFAULT": json.dumps(
                {
                    "conn_type": "cloudflare_workers_ai",
                    "host": f"{emulator}/client/v4",
                    "password": TOKEN,
                    "extra": {"account_id": "capacity-bench", "timeout": 600},
                }
            ),
            "NO_PROXY": "127.0.0.1,localhost",
        }
    )
    server = subprocess.Popen(
        [
            sys.executable, "-m", "airflow_provider_imagen.emulator.cli", "--host", "127.0.0.1", "--port", str(port),
            "--token", TOKEN, "--latency", str(args.latency), "--log-level", "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{emulator}/__emulator__/stats", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the emulator did not start") from None
                time.sleep(0.3)
        for count in args.counts:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    str(count),
                    "--emulator",
                    emulator,
                    "--latency",
                    str(args.latency),
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=args.latency * (count / 500 + 2) + 180,
                check=False,
            )
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                return 1
            print(out.stdout.strip().splitlines()[-1], flush=True)
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
