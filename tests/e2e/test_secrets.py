"""
A canary token run through every path, then searched for everywhere a secret could leak: captured output
and logs (task logs included), exception texts and reprs, XCom values, the trigger's serialized kwargs,
the hook's and the connection's repr, and the emulator's own logs and request records.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime
from unittest import mock

import pytest
from airflow.sdk import DAG

from airflow_provider_imagen.emulator import EmulatorConfig, EmulatorServer
from airflow_provider_imagen.exceptions import CloudflareWorkersAIError
from airflow_provider_imagen.hooks import CloudflareWorkersAIHook
from airflow_provider_imagen.operators import ImagenGenerateImageOperator, ImagenGenerateImagesOperator

CANARY = "cAnArY-7f3e9b2a-DO-NOT-LEAK"
pytestmark = pytest.mark.e2e


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def canary_emulator():
    handler = Collect()
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addHandler(handler)
    with EmulatorServer(EmulatorConfig(token=CANARY), log_level="debug") as server:
        yield server, handler
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).removeHandler(handler)


def test_the_token_appears_nowhere(canary_emulator, monkeypatch, capfd, caplog, airflow_db, tmp_path):
    server, emulator_log = canary_emulator
    client = server.client
    client.reset()
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDFLARE_WORKERS_AI_DEFAULT", server.connection_json())
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []  # every text we can get hold of

    def record(*values: object) -> None:
        seen.extend(str(v) + " " + repr(v) for v in values)

    # The hook: success, failure, async, test_connection; its repr and the connection settings it holds.
    # (Airflow's own Connection.__repr__ prints the password; the provider never logs or shows one.)
    hook = CloudflareWorkersAIHook(retry_backoff=0.01)
    record(hook, hook.settings, hook.generate_image("a cat"))
    client.inject("auth")
    with pytest.raises(CloudflareWorkersAIError) as failed:
        hook.generate_image("a cat")
    record(failed.value, failed.value.__cause__, failed.value.__context__)
    client.inject("drop")
    client.inject("capacity")
    record(hook.generate_image("retried"))
    hook.close()
    record(*hook.test_connection())
    client.configure(token_status="expired")
    record(*hook.test_connection())
    client.configure(token_status="active")
    record(CloudflareWorkersAIHook("nope").test_connection())

    async def async_path():
        async with CloudflareWorkersAIHook(retry_backoff=0.01) as ahook:
            return await ahook.agenerate_image("async cat")

    record(asyncio.run(async_path()))

    # The operator, deferred: the trigger's kwargs, its events, the resumed task's XComs.
    from tests.conftest import task_deferred_class

    TaskDeferred = task_deferred_class()

    with DAG(dag_id="canary", schedule=None, start_date=datetime(2025, 1, 1)):
        deferred_op = ImagenGenerateImageOperator(task_id="d", prompt="a cat", deferrable=True)
        batch_op = ImagenGenerateImagesOperator(task_id="b", prompts=["one", "two"], output_path=f"{tmp_path}/")
    with pytest.raises(TaskDeferred) as deferred:
        deferred_op.execute({"ti": mock.Mock()})
    trigger = deferred.value.trigger
    record(json.dumps(trigger.serialize()), trigger)

    async def events():
        return [e.payload async for e in trigger.run()]

    (event,) = asyncio.run(events())
    record(json.dumps(event))
    ti = mock.Mock()
    record(deferred_op.execute_complete({"ti": ti}, event), ti.xcom_push.call_args_list)
    client.inject("auth")
    (failed_event,) = asyncio.run(events())
    record(json.dumps(failed_event))

    # The batch, with a failure.
    client.inject("daily_limit")
    batch_ti = mock.Mock()
    with pytest.raises(CloudflareWorkersAIError) as batch_failed:
        batch_op.execute({"ti": batch_ti})
    record(batch_failed.value, batch_ti.xcom_push.call_args_list)

    # A real DAG run: task logs and XComs.
    from tests.conftest import REPO

    try:
        from airflow.dag_processing.dagbag import DagBag as Bag
    except ImportError:  # Airflow 3.1
        from airflow.models.dagbag import DagBag as Bag
    dag_run = Bag(dag_folder=str(REPO / "dags")).get_dag("imagen_quickstart").test()
    ti_row = dag_run.get_task_instance("generate_image")
    record(ti_row.xcom_pull(task_ids="generate_image"), ti_row.xcom_pull(task_ids="generate_image", key="image"))

    # The emulator's own view of the requests.
    record(json.dumps(client.stats()))

    captured = capfd.readouterr()
    everything = "\n".join([*seen, captured.out, captured.err, caplog.text, *emulator_log.lines])
    assert dag_run.state == "success"
    assert len(everything) > 10_000  # we really looked at a lot of output
    assert CANARY not in everything
