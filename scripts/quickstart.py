"""
Run the ``imagen_quickstart`` DAG with ``airflow dags test`` and save the image it generated.

Offline by default: the built-in emulator stands in for Cloudflare and is stopped afterwards. With
``CLOUDFLARE_ACCOUNT_ID`` and ``CLOUDFLARE_API_TOKEN`` in the environment, the real Cloudflare is used.
Called by ``scripts/quickstart.sh``, which sets up the virtual environment first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DAG_ID = "imagen_quickstart"
TASK_ID = "generate_image"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=ROOT / "quickstart-output" / f"{DAG_ID}.png")
    parser.add_argument("--home", type=Path, default=ROOT / ".quickstart" / "airflow", help="AIRFLOW_HOME to use")
    return parser.parse_args()


def airflow_env(home: Path) -> dict[str, str]:
    env = os.environ.copy()
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        }
    )
    return env


def run(command: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("ab") as out:
        result = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-40:]
        sys.exit(f"`{' '.join(command)}` failed (exit {result.returncode}); last lines of {log}:\n" + "\n".join(tail))


def read_image_url(env: dict[str, str]) -> str:
    """The XCom return_value of the latest quickstart run, read from the Airflow database."""
    os.environ.update({k: v for k, v in env.items() if k.startswith("AIRFLOW")})
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        dag_run = session.scalars(select(DagRun).where(DagRun.dag_id == DAG_ID).order_by(DagRun.id.desc())).first()
        if dag_run is None:
            sys.exit(f"no run of {DAG_ID} found in the Airflow database")
        if dag_run.state != "success":
            sys.exit(f"the {DAG_ID} run ended in state {dag_run.state}")
        ti = dag_run.get_task_instance(TASK_ID, session=session)
        url = ti.xcom_pull(task_ids=TASK_ID, session=session) if ti is not None else None
    if not isinstance(url, str):
        sys.exit(f"the {DAG_ID} run pushed no image URL")
    return url


def download(url: str, output: Path) -> int:
    import httpx

    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=output.parent, prefix=f".{output.name}.", delete=False) as part:
        try:
            with httpx.stream("GET", url, follow_redirects=True, timeout=60) as response:
                response.raise_for_status()
                for chunk in response.iter_bytes():
                    part.write(chunk)
            part.close()
            os.replace(part.name, output)  # never a half-written file at the final path
        except BaseException:
            Path(part.name).unlink(missing_ok=True)
            raise
    return output.stat().st_size


def main() -> None:
    args = parse_args()
    home: Path = args.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    log = home / "quickstart.log"
    env = airflow_env(home)
    airflow = str(Path(sys.executable).with_name("airflow"))

    account, token = os.environ.get("CLOUDFLARE_ACCOUNT_ID"), os.environ.get("CLOUDFLARE_API_TOKEN")
    emulator = None
    if account and token:
        print("Using Cloudflare Workers AI with CLOUDFLARE_ACCOUNT_ID from the environment.")
        env["AIRFLOW_CONN_CLOUDFLARE_WORKERS_AI_DEFAULT"] = json.dumps(
            {"conn_type": "cloudflare_workers_ai", "password": token, "extra": {"account_id": account}}
        )
    else:
        from airflow_provider_imagen.emulator import EmulatorServer

        emulator = EmulatorServer().start()
        print(f"No Cloudflare credentials set: using the offline emulator at {emulator.api_base}")
        env["AIRFLOW_CONN_CLOUDFLARE_WORKERS_AI_DEFAULT"] = emulator.connection_json()

    try:
        started = time.monotonic()
        print(f"Preparing the Airflow database in {home} ...")
        run([airflow, "db", "migrate"], env, log)
        print(f"Running `airflow dags test {DAG_ID}` ...")
        run([airflow, "dags", "test", DAG_ID], env, log)
        url = read_image_url(env)
        size = download(url, args.output)
    finally:
        if emulator is not None:
            emulator.stop()

    print(f"Image URL (XCom return_value of {DAG_ID}.{TASK_ID}): {url}")
    print(f"Saved the image to {args.output} ({size:,} bytes) in {time.monotonic() - started:.1f} s.")
    print(f"Airflow's output is in {log}.")


if __name__ == "__main__":
    main()
