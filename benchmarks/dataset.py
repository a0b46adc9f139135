"""
The dataset operator at scale: wall time against the ideal and the task process's peak RSS, first run and rerun.

    .venv/bin/python benchmarks/dataset.py --json out.json       # 10,000 rows, latency 0.1 s, concurrency 50:
        # the dataset (each transport: aiohttp, httpcore; first run and rerun), the batch operator over 1,000
        # rows (each transport), the single-image operator (20 task processes, extrapolated to every row)
    .venv/bin/python benchmarks/dataset.py --rows 100000 --shards 8 --transports aiohttp --batch-rows 0 \
        --single-tasks 0                                           # 8 shards run in sequence: RSS per shard
    .venv/bin/python benchmarks/dataset.py --rows 500 --quick     # tiny: does it still run

Each task runs in a process of its own (as a worker runs it), so its peak RSS is its own; the time is the task's
``execute``, from the first line read to the manifest published. The ideal is ``rows x latency / concurrency``.
The emulator runs in another process (:class:`run.Emulator`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import Emulator  # a sibling script, not a package

TASK = """
import json, os, resource, sys, time
from datetime import datetime
from airflow.sdk import DAG
from airflow_provider_imagen._cloudflare import transport
from airflow_provider_imagen.operators import (
    ImagenDatasetOperator, ImagenGenerateImageOperator, ImagenGenerateImagesOperator,
)

mode, items, output, concurrency, shard, shards, use = sys.argv[1:8]
durable = bool(os.environ.get("AIRFLOW__IMAGEN__DURABLE_CACHE_PATH"))  # --durable: records in that folder
concurrency, shard, shards = int(concurrency), int(shard), int(shards)
transport.USE_AIOHTTP = use == "aiohttp"
transport.AIOHTTP_WANTED.set(use == "aiohttp")  # what a batch's event loop inherits (a dataset sets its own)


class TaskInstance:
    dag_id, run_id, task_id, map_index, try_number, max_tries = "bench", "bench", "images", shard, 1, 0

    def xcom_push(self, key, value):
        pass


with DAG(dag_id="bench", schedule=None, start_date=datetime(2025, 1, 1)):
    rows = [json.loads(line) for line in open(items)] if mode != "dataset" else None
    if mode == "dataset":
        op = ImagenDatasetOperator(task_id="images", items=items, output_path=output, max_concurrency=concurrency,
                                   shard_index=shard, shard_count=shards, durable=durable, fail_on_error=False)
    elif mode == "batch":
        op = ImagenGenerateImagesOperator(task_id="images", prompts=[r["prompt"] for r in rows], output_path=output,
                                          max_concurrency=concurrency, durable=durable)
    else:  # one mapped task instance of the single-image operator: this process runs one row
        op = ImagenGenerateImageOperator(task_id="images", prompt=rows[shard]["prompt"], output_path=output,
                                         durable=durable, deferrable=False)
started = time.perf_counter()
usage = resource.getrusage(resource.RUSAGE_SELF)
cpu_before, sys_before = usage.ru_utime + usage.ru_stime, usage.ru_stime
result = op.execute({"ti": TaskInstance()})
elapsed = time.perf_counter() - started
usage = resource.getrusage(resource.RUSAGE_SELF)
summary = result if mode == "dataset" else {"generated": len(rows) if mode == "batch" else 1, "reused": 0, "failed": 0}
print(json.dumps({"seconds": elapsed, "cpu_s": usage.ru_utime + usage.ru_stime - cpu_before,
                  "system_cpu_s": usage.ru_stime - sys_before, "peak_rss_mb": usage.ru_maxrss / 1024, **summary}))
"""


def run_task(mode: str, items: str, output: str, concurrency: int, shard: int, shards: int, use: str) -> dict[str, Any]:
    """Run one task instance in a fresh process; return its time, CPU, peak RSS and summary."""
    command = [sys.executable, "-c", TASK, mode, items, output, str(concurrency), str(shard), str(shards), use]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the task failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def summed(runs: list[dict[str, Any]], ideal: float | None) -> dict[str, Any]:
    """Add up the runs of one step (its shards, run in sequence): time and CPU summed, RSS the largest."""
    seconds = sum(float(r["seconds"]) for r in runs)
    rows = sum(int(r["generated"]) + int(r["reused"]) + int(r["failed"]) for r in runs)
    cpu = sum(float(r["cpu_s"]) for r in runs)
    return {
        "seconds": round(seconds, 2),
        "vs_ideal": round(seconds / ideal, 2) if ideal else None,
        "cpu_s": round(cpu, 2),
        "system_cpu_s": round(sum(float(r["system_cpu_s"]) for r in runs), 2),
        "cpu_ms_per_row": round(1000 * cpu / max(rows, 1), 3),
        "peak_rss_mb": round(max(float(r["peak_rss_mb"]) for r in runs), 1),
        "peak_rss_mb_per_shard": [round(float(r["peak_rss_mb"]), 1) for r in runs] if len(runs) > 1 else None,
        "generated": sum(int(r["generated"]) for r in runs),
        "reused": sum(int(r["reused"]) for r in runs),
        "failed": sum(int(r["failed"]) for r in runs),
    }


def machine() -> dict[str, Any]:
    """Describe the machine: CPUs, Python, and how busy it was when the run started."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": [round(n, 2) for n in os.getloadavg()],
    }


def main() -> None:
    """Measure the dataset operator (first run, rerun; each transport), the batch operator, the single-image one."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--transports", default="aiohttp,httpcore", help="comma-separated: aiohttp, httpcore")
    parser.add_argument("--batch-rows", type=int, default=1000, help="the batch operator's prompts (0: skip)")
    parser.add_argument("--single-tasks", type=int, default=20, help="single-image task processes (0: skip)")
    parser.add_argument("--quick", action="store_true", help="latency 0.01 s")
    parser.add_argument(
        "--durable", action="store_true", help="durable records on (the operators' default), in a local folder"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    latency = 0.01 if args.quick else args.latency
    ideal = args.rows * latency / args.concurrency
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    results: dict[str, Any] = {"machine": machine(), "rows": args.rows, "latency": latency}
    results |= {"concurrency": args.concurrency, "shards": args.shards, "ideal_s": ideal, "durable": args.durable}
    with tempfile.TemporaryDirectory(prefix="imagen-bench-") as scratch, Emulator(latency):
        os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
        items = os.path.join(scratch, "items.jsonl")
        with open(items, "w") as out:
            for n in range(args.rows):
                # 32 prompts: the emulator draws each distinct image with Pillow (~80 ms of its CPU) and keeps
                # 64; with a new prompt per row it would measure its own drawing, not the provider.
                out.write(json.dumps({"key": f"SKU-{n:06d}", "prompt": f"Product photo of item {n % 32}"}) + "\n")
        # Untimed: the emulator draws the 32 images once (~80 ms each, one at a time, holding every other answer
        # up): Cloudflare has no such start-up, and the first run measured would pay for it.
        warm = os.path.join(scratch, "warm.jsonl")
        with open(warm, "w") as out:
            out.writelines(
                json.dumps({"key": f"W-{n}", "prompt": f"Product photo of item {n}"}) + "\n" for n in range(32)
            )
        run_task("dataset", warm, os.path.join(scratch, "warm") + "/", 32, 0, 1, transports[0])
        for use in transports:
            output = os.path.join(scratch, f"images-{use}") + "/"
            for name in ("first", "rerun"):
                if args.durable:  # a new DAG run's records, as each run is one
                    os.environ["AIRFLOW__IMAGEN__DURABLE_CACHE_PATH"] = os.path.join(scratch, f"records-{use}-{name}")
                runs = [
                    run_task("dataset", items, output, args.concurrency, s, args.shards, use)
                    for s in range(args.shards)
                ]
                results.setdefault("dataset", {}).setdefault(use, {})[name] = summed(
                    runs, ideal if name == "first" else None
                )
        if args.durable:  # records of their own: the dataset's must not serve the batch
            os.environ["AIRFLOW__IMAGEN__DURABLE_CACHE_PATH"] = os.path.join(scratch, "records-batch")
        if args.batch_rows:
            batch_items = os.path.join(scratch, "batch.jsonl")
            with open(items) as source, open(batch_items, "w") as out:
                out.writelines(itertools.islice(source, args.batch_rows))
            batch_ideal = args.batch_rows * latency / args.concurrency
            results["batch"] = {"rows": args.batch_rows, "ideal_s": batch_ideal}
            for use in transports:
                output = os.path.join(scratch, f"batch-{use}") + "/"
                run = run_task("batch", batch_items, output, args.concurrency, 0, 1, use)
                results["batch"][use] = summed([run], batch_ideal)
        if args.durable:
            os.environ["AIRFLOW__IMAGEN__DURABLE_CACHE_PATH"] = os.path.join(scratch, "records-single")
        if args.single_tasks:
            # One process per row, as mapped task instances run (without the worker's own supervisor, so this is a
            # lower bound on their cost); extrapolated to every row at the same concurrency.
            output = os.path.join(scratch, "single") + "/"
            runs = []
            for n in range(args.single_tasks):
                started = time.perf_counter()
                run = run_task("single", items, output, 1, n, 1, transports[0])
                runs.append(run | {"process_s": time.perf_counter() - started})
            per_task = statistics.median(float(r["process_s"]) for r in runs)
            cpu = statistics.median(float(r["cpu_s"]) for r in runs)
            results["single_mapped"] = {
                "tasks_measured": args.single_tasks,
                "median_process_s": round(per_task, 3),
                "median_execute_cpu_s": round(cpu, 4),
                "peak_rss_mb": round(max(float(r["peak_rss_mb"]) for r in runs), 1),
                "extrapolated_rows_s": round(args.rows * per_task / args.concurrency, 1),
                "extrapolated_vs_ideal": round(args.rows * per_task / args.concurrency / ideal, 1),
                "mapped_tasks_needed": -(-args.rows // 1024),  # max_map_length is 1024
            }
    print(json.dumps(results, indent=2))
    print("\n| run | rows | wall time (tasks' own) | vs ideal | CPU per row | peak RSS of a task |")
    print("|---|---|---|---|---|---|")
    for use, runs in results.get("dataset", {}).items():
        for name, row in runs.items():
            ratio = f"{row['vs_ideal']}x" if row["vs_ideal"] else ""
            print(
                f"| dataset, {use}, {name} | {args.rows:,} | {row['seconds']} s | {ratio} | "
                f"{row['cpu_ms_per_row']} ms | {row['peak_rss_mb']} MB |"
            )
    for use in transports:
        if "batch" in results:
            row = results["batch"][use]
            print(
                f"| batch, {use} | {args.batch_rows:,} | {row['seconds']} s | {row['vs_ideal']}x | "
                f"{row['cpu_ms_per_row']} ms | {row['peak_rss_mb']} MB |"
            )
    if "single_mapped" in results:
        single = results["single_mapped"]
        print(
            f"| single-image operator mapped (extrapolated from {single['tasks_measured']} task processes) | "
            f"{args.rows:,} | {single['extrapolated_rows_s']} s | {single['extrapolated_vs_ideal']}x | "
            f"{single['median_execute_cpu_s'] * 1000:.0f} ms + a process | {single['peak_rss_mb']} MB |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
