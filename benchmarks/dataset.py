"""
The dataset operator at scale: wall time against the ideal and the task process's peak RSS, first run and rerun.

    .venv/bin/python benchmarks/dataset.py                        # 10,000 rows, latency 0.1 s, concurrency 50
    .venv/bin/python benchmarks/dataset.py --rows 100000 --shards 8   # 8 shards run in sequence
    .venv/bin/python benchmarks/dataset.py --rows 500 --quick     # tiny: does it still run

Each task runs in a process of its own (as a worker runs it), so its peak RSS is its own; the time is the task's
``execute``, from the first line read to the manifest published. The ideal is ``rows x latency / concurrency``.
The emulator runs in another process (:class:`run.Emulator`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import Emulator  # a sibling script, not a package

TASK = """
import json, resource, sys, time
from datetime import datetime
from airflow.sdk import DAG
from airflow_provider_imagen.operators import ImagenDatasetOperator

items, output, concurrency, shard, shards = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])


class TaskInstance:
    dag_id, run_id, task_id, map_index, try_number, max_tries = "bench", "bench", "images", shard, 1, 0

    def xcom_push(self, key, value):
        pass


with DAG(dag_id="bench", schedule=None, start_date=datetime(2025, 1, 1)):
    op = ImagenDatasetOperator(task_id="images", items=items, output_path=output, max_concurrency=concurrency,
                               shard_index=shard, shard_count=shards, durable=False,
                               fail_on_error=False)
started = time.perf_counter()
usage = resource.getrusage(resource.RUSAGE_SELF)
cpu_before, sys_before = usage.ru_utime + usage.ru_stime, usage.ru_stime
summary = op.execute({"ti": TaskInstance()})
elapsed = time.perf_counter() - started
usage = resource.getrusage(resource.RUSAGE_SELF)
cpu = usage.ru_utime + usage.ru_stime - cpu_before
system = usage.ru_stime - sys_before
print(json.dumps({"seconds": elapsed, "cpu_s": cpu, "system_cpu_s": system, "peak_rss_mb": usage.ru_maxrss / 1024, **summary}))
"""


def run_task(items: str, output: str, concurrency: int, shard: int, shards: int) -> dict[str, object]:
    """Run one task instance in a fresh process; return its time, peak RSS and summary."""
    command = [sys.executable, "-c", TASK, items, output, str(concurrency), str(shard), str(shards)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the task failed:\n{done.stderr[-3000:]}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    """Measure a first run (every row generated) and a rerun (every row reused); print JSON and a table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="latency 0.01 s")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    latency = 0.01 if args.quick else args.latency
    ideal = args.rows * latency / args.concurrency
    results: dict[str, object] = {"rows": args.rows, "latency": latency, "concurrency": args.concurrency}
    results |= {"shards": args.shards, "ideal_s": ideal}
    with tempfile.TemporaryDirectory(prefix="imagen-bench-") as scratch, Emulator(latency):
        os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
        items = os.path.join(scratch, "items.jsonl")
        with open(items, "w") as out:
            for n in range(args.rows):
                # 32 prompts: the emulator draws each distinct image with Pillow (~80 ms of its CPU) and keeps
                # 64; with a new prompt per row it would measure its own drawing, not the provider.
                out.write(json.dumps({"key": f"SKU-{n:06d}", "prompt": f"Product photo of item {n % 32}"}) + "\n")
        output = os.path.join(scratch, "images") + "/"
        for name in ("first", "rerun"):
            runs = [run_task(items, output, args.concurrency, s, args.shards) for s in range(args.shards)]
            seconds = sum(float(r["seconds"]) for r in runs)  # type: ignore[arg-type]
            results[name] = {
                "seconds": round(seconds, 2),
                "vs_ideal": round(seconds / ideal, 2) if name == "first" else None,
                "cpu_s": round(sum(float(r["cpu_s"]) for r in runs), 2),  # type: ignore[arg-type]
                "peak_rss_mb": round(max(float(r["peak_rss_mb"]) for r in runs), 1),  # type: ignore[arg-type]
                "generated": sum(int(r["generated"]) for r in runs),  # type: ignore[call-overload]
                "reused": sum(int(r["reused"]) for r in runs),  # type: ignore[call-overload]
                "failed": sum(int(r["failed"]) for r in runs),  # type: ignore[call-overload]
            }
    print(json.dumps(results, indent=2))
    first, rerun = results["first"], results["rerun"]
    print("\n| run | rows | wall time (tasks' own) | vs ideal | peak RSS of a task |")
    print("|---|---|---|---|---|")
    for name, row in (("first (all generated)", first), ("rerun (all reused)", rerun)):
        assert isinstance(row, dict)
        ratio = f"{row['vs_ideal']}x" if row["vs_ideal"] else ""
        print(f"| {name} | {args.rows:,} | {row['seconds']} s | {ratio} | {row['peak_rss_mb']} MB |")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
