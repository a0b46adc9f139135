"""The benchmarks stay runnable: each one at a tiny size (the real run is ./scripts/bench.sh)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import pytest

from airflow_provider_imagen._cloudflare.transport import CONNECTIONS_PER_POOL
from tests.conftest import REPO


@pytest.mark.skipif(importlib.util.find_spec("cloudflare") is None, reason="needs the 'bench' extra")
def test_every_benchmark_runs_at_a_tiny_size(tmp_path):
    out = tmp_path / "results.json"
    command = [sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--repeat", "1", "--json", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["emulator"]["median_rps"] > 0 and results["emulator"]["burst_rps"] > 0
    throughput = results["throughput"]
    for baseline in ("ours_s", "raw_floor_s", "bare_httpx_s", "bare_httpx_spread_s"):
        assert throughput[baseline] > 0, baseline
    assert results["cpu"]["ratio"] > 0
    assert results["imports"]["ours: operators"] is not None
    triggerer = results["triggerer"]
    assert triggerer["clients"] == 1
    assert 1 <= triggerer["pools"] <= math.ceil(triggerer["n"] / CONNECTIONS_PER_POOL)
    for baseline in ("raw_floor_s", "raw_cpu_s", "bare_httpx_spread_s", "bare_httpx_s", "ours_cpu_s"):
        assert triggerer[baseline] > 0, baseline
    # The same against the null server, which does nothing but wait.
    for baseline in (
        "null_wall_s",
        "null_ours_cpu_s",
        "null_raw_floor_s",
        "null_raw_cpu_s",
        "null_bare_httpx_spread_s",
    ):
        assert triggerer[baseline] > 0, baseline
    assert results["memory"]["ours_peak_rss_delta_mb"] is not None
    # At the rate limit: every image, each billed once, and none refused when the limit is known.
    limited = results["rate_limit"]
    for contestant in ("ours", "ours_known_limit", "deferred"):
        assert limited[f"{contestant}_max_lost"] == 0, contestant
        assert limited[f"{contestant}_billed"] == limited["n"], contestant
    assert limited["ours_known_limit_rejected"] == 0
    assert limited["cloudflare_sdk_wall_s"] > 0
    assert "| 6. 40 prompts at a limit" in completed.stdout
    assert "| 1. batch of" in completed.stdout
