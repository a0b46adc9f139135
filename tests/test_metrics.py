"""
The provider's metrics, counted where a deployment sees them: Airflow's StatsD client sending to a UDP socket on
127.0.0.1, from DAG runs against the emulator. And its spans, under a task's span, in an in-memory exporter.
"""

from __future__ import annotations

import importlib
import socket
from collections import Counter
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from airflow.sdk import DAG

from airflow_provider_imagen import _metrics
from airflow_provider_imagen.operators import ImagenGenerateImageOperator
from tests.conftest import register_dag

if TYPE_CHECKING:
    from pathlib import Path

MODEL = "google/imagen-4"
IN_NAME = "google_imagen-4"  # the model in a plain StatsD name


class StatsdListener:
    """A UDP socket on 127.0.0.1 that Airflow's StatsD client sends to; reads what has arrived."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)  # a DAG run's metrics, never dropped
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []

    def read(self) -> list[str]:
        """
        Return the provider's packets received so far (``airflow.imagen.*``), in order.

        A datagram to 127.0.0.1 is in the socket's queue when ``sendto`` returns, so what a finished run sent is all
        here: no waiting.
        """
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            self.lines += [line for line in data.decode().splitlines() if line.startswith("airflow.imagen.")]
        return self.lines

    def counts(self) -> Counter[str]:
        """Sum each counter: ``{"airflow.imagen.images.generated": 1, ...}``."""
        total: Counter[str] = Counter()
        for line in self.read():
            name, _, value = line.partition(":")
            number, kind = value.split("|")[:2]
            if kind == "c":
                total[name] += int(number)
        return total

    def timers(self) -> list[str]:
        return [line.partition(":")[0] for line in self.read() if line.split("|")[1] == "ms"]


def _follow_airflow_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make Airflow's ``Stats`` pick its backend from ``[metrics]`` again, as a new task process does."""
    try:
        from airflow.sdk.observability import stats
        from airflow.sdk.observability.metrics import stats_utils
    except ImportError:  # Airflow 3.1: the backend is chosen when airflow.stats is first imported, and kept
        from airflow.stats import Stats

        meta = type(Stats)
        monkeypatch.delattr(meta, "factory", raising=False)
        meta.__init__(Stats)
        monkeypatch.setattr(Stats, "instance", None)  # the backend made, kept on the class
        return
    state = importlib.import_module(stats.initialize.__module__)  # the module whose globals hold the backend
    for name in ("_factory", "_backend", "_export_legacy_names"):
        monkeypatch.setattr(state, name, getattr(state, name))  # put back as they were after the test
    stats.initialize(factory=stats_utils.get_stats_factory(), export_legacy_names=False)


@pytest.fixture
def statsd(monkeypatch):
    """Airflow's metrics on, by StatsD, to a UDP socket of this test; the provider's helpers look them up anew."""
    import statsd  # noqa: F401 - Airflow's StatsD client (the dev extra): without it Airflow sends nothing

    listener = StatsdListener()
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_ON", "True")
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_HOST", "127.0.0.1")
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_PORT", str(listener.port))
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_PREFIX", "airflow")
    _follow_airflow_config(monkeypatch)
    _metrics.reset()
    yield listener
    listener.sock.close()
    _metrics.reset()  # the next test looks the backend up again (monkeypatch restores Airflow's after this)


def run_dag(dag_id: str, tmp_path: Path, **kwargs):
    with DAG(dag_id=dag_id, schedule=None, start_date=datetime(2025, 1, 1)) as dag:
        ImagenGenerateImageOperator(
            task_id="gen", prompt="A lighthouse at dawn", output_path=f"{tmp_path}/out/", **kwargs
        )
    return register_dag(dag).test()


def test_a_generation_refused_once_by_the_rate_limit_counts_the_refusal_one_billed_image_its_time_and_bytes(
    airflow_db, imagen_emulator, statsd, tmp_path
):
    imagen_emulator.inject("capacity")  # 429, code 3040: nothing ran, re-sent at the account's pace
    dag_run = run_dag("metrics_generate", tmp_path)
    assert dag_run.state == "success"
    counts = statsd.counts()
    # Each metric in total, and per model in its name (plain StatsD has no tags).
    assert counts["airflow.imagen.generations.rate_limited"] == 1
    assert counts[f"airflow.imagen.generations.rate_limited.{IN_NAME}"] == 1
    assert counts["airflow.imagen.images.generated"] == 1
    assert counts[f"airflow.imagen.images.generated.{IN_NAME}"] == 1
    assert counts["airflow.imagen.generations.billed"] == 1
    assert counts[f"airflow.imagen.generations.billed.{IN_NAME}"] == 1
    assert (imagen_emulator.generations, imagen_emulator.api_requests) == (1, 2)
    (stored,) = (tmp_path / "out").iterdir()
    assert counts["airflow.imagen.images.bytes_stored"] == stored.stat().st_size
    assert statsd.timers() == ["airflow.imagen.generations.duration", f"airflow.imagen.generations.duration.{IN_NAME}"]
    assert not any(".failed" in name or ".reused" in name for name in counts)  # the image was obtained


def test_a_retry_that_reuses_the_image_it_paid_for_counts_it_reused(
    airflow_db, imagen_emulator, statsd, tmp_path, monkeypatch
):
    monkeypatch.setenv("AIRFLOW__IMAGEN__DURABLE_CACHE_PATH", str(tmp_path / "durable"))  # before 3.3's state store
    imagen_emulator.inject("image_not_found")  # the first try's download fails: the task is retried
    dag_run = run_dag("metrics_durable", tmp_path, retries=1, retry_delay=timedelta(0))
    assert dag_run.state == "success"
    counts = statsd.counts()
    assert counts[f"airflow.imagen.images.failed.download.{IN_NAME}"] == 1
    assert counts["airflow.imagen.images.reused"] == 1
    assert counts[f"airflow.imagen.images.reused.durable.{IN_NAME}"] == 1
    assert counts["airflow.imagen.images.generated"] == counts["airflow.imagen.generations.billed"] == 1
    assert imagen_emulator.generations == 1


def test_a_content_policy_refusal_counts_a_failure_of_that_kind(airflow_db, imagen_emulator, statsd, tmp_path):
    imagen_emulator.inject("content_policy")
    dag_run = run_dag("metrics_refused", tmp_path)
    assert dag_run.state == "failed"
    counts = statsd.counts()
    assert counts["airflow.imagen.images.failed"] == 1
    assert counts[f"airflow.imagen.images.failed.content_policy.{IN_NAME}"] == 1
    assert "airflow.imagen.images.generated" not in counts
    assert "airflow.imagen.generations.billed" not in counts


def test_a_dataset_rerun_counts_the_folders_images_reused(imagen_emulator, statsd, tmp_path):
    from tests.test_dataset import dataset, rows, run

    op = dataset(items=rows(3), output_path=f"{tmp_path}/out/")
    assert run(op)["generated"] == 3
    counts = statsd.counts()
    assert counts["airflow.imagen.images.generated"] == counts["airflow.imagen.generations.billed"] == 3
    sizes = sum(p.stat().st_size for p in (tmp_path / "out").glob("*.png"))
    assert counts[f"airflow.imagen.images.bytes_stored.{IN_NAME}"] == sizes
    assert run(op)["reused"] == 3  # a new DAG run: the folder's images, made from the same inputs
    counts = statsd.counts()
    assert counts[f"airflow.imagen.images.reused.dataset.{IN_NAME}"] == 3
    assert counts["airflow.imagen.generations.billed"] == imagen_emulator.generations == 3


def test_a_rerun_that_finds_its_file_made_from_the_same_inputs_counts_it_reused(imagen_emulator, statsd, tmp_path):
    from tests.test_stored_reuse import new_run, single

    path = f"{tmp_path}/out/SKU-0001.png"
    single(prompt="A blue mug", output_path=path).execute(new_run())
    single(prompt="A blue mug", output_path=path).execute(new_run())  # a rerun: the file is reused, no request
    counts = statsd.counts()
    assert counts[f"airflow.imagen.images.reused.stored_file.{IN_NAME}"] == 1
    assert counts["airflow.imagen.generations.billed"] == imagen_emulator.generations == 1


@pytest.mark.parametrize("fallback_follows", [False, True])
def test_the_triggerer_counts_its_calls_and_only_failures_no_worker_model_can_follow(
    imagen_emulator, statsd, fallback_follows
):
    import asyncio

    from airflow_provider_imagen.triggers import ImagenGenerateImageTrigger

    def run(**kwargs):
        trigger = ImagenGenerateImageTrigger(
            prompt="A lighthouse at dawn", fallback_follows=fallback_follows, max_retry_wait=1.0, **kwargs
        )

        async def events():
            return [event.payload async for event in trigger.run()]

        (payload,) = asyncio.run(events())
        return payload

    assert run()["status"] == "success"
    imagen_emulator.inject("content_policy")  # final: no model can change it
    assert run()["status"] == "error"
    imagen_emulator.inject("capacity")  # unavailable: models on the worker may still make the image
    assert run(max_rate_limit_wait=0.0, max_retries=0)["status"] == "error"
    counts = statsd.counts()
    assert counts["airflow.imagen.generations.billed"] == 1  # the worker counts the image it gets back
    assert counts[f"airflow.imagen.images.failed.content_policy.{IN_NAME}"] == 1
    assert counts.get(f"airflow.imagen.images.failed.rate_limit.{IN_NAME}", 0) == (0 if fallback_follows else 1)


def test_backends_with_tags_get_the_model_and_kind_as_tags(imagen_emulator, statsd, monkeypatch):
    """StatsD with InfluxDB tags: one name per metric, its dimensions as tags (``@`` is not allowed there)."""
    from unittest import mock

    from airflow_provider_imagen.exceptions import ContentPolicyError

    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED", "True")
    _follow_airflow_config(monkeypatch)
    _metrics.reset()
    with DAG(dag_id="t", schedule=None, start_date=datetime(2025, 1, 1)):
        op = ImagenGenerateImageOperator(task_id="gen", prompt="A lighthouse at dawn")
    op.execute({"ti": mock.Mock()})
    _metrics.failure(ContentPolicyError("refused", model="@cf/leonardo/phoenix-1.0"))
    counts = statsd.counts()
    assert counts[f"airflow.imagen.images.generated,model={MODEL}"] == 1
    assert counts[f"airflow.imagen.generations.billed,model={MODEL}"] == 1
    assert counts["airflow.imagen.images.failed,model=cf/leonardo/phoenix-1.0,kind=content_policy"] == 1
    assert not any(IN_NAME in name for name in counts)


def test_metrics_off_looks_nothing_up_per_image(monkeypatch):
    """With metrics off (the default), each helper returns after one read: no Stats, no name built."""
    monkeypatch.delenv("AIRFLOW__METRICS__STATSD_ON", raising=False)
    _metrics.reset()
    looked_up = []
    monkeypatch.setattr(_metrics, "_airflow_stats", lambda: looked_up.append(1))
    for _ in range(3):
        _metrics.generated(MODEL)
        _metrics.reused(MODEL, "dataset")
    assert _metrics._on() is None and looked_up == []
    _metrics.reset()


def test_a_failing_backend_never_fails_the_task_nor_hides_its_error(imagen_emulator, monkeypatch):
    from unittest import mock

    from airflow_provider_imagen.exceptions import ContentPolicyError

    class Down:
        def incr(self, *args, **kwargs):
            raise OSError("the metrics agent is down")

        timing = incr

    monkeypatch.setattr(_metrics, "_sink", _metrics._Sink(Down(), in_name=True, influx=False))
    with DAG(dag_id="t", schedule=None, start_date=datetime(2025, 1, 1)):
        op = ImagenGenerateImageOperator(task_id="gen", prompt="A lighthouse at dawn")
    assert op.execute({"ti": mock.Mock()}).startswith(imagen_emulator.url)
    refused = ContentPolicyError("refused", model=MODEL)
    assert _metrics.failure(refused) is refused


# --- Traces -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spans():
    """An OpenTelemetry SDK tracer provider with an in-memory exporter, as Airflow 3.3 sets one with tracing on."""
    trace = pytest.importorskip("opentelemetry.trace")
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # once per process; no other test sets one
    if trace.get_tracer_provider() is not provider:
        pytest.skip("another tracer provider is already set in this process")
    return exporter, provider.get_tracer("test")


def test_each_generation_is_a_span_under_the_tasks_span(imagen_emulator, spans):
    from unittest import mock

    exporter, tracer = spans
    exporter.clear()
    _metrics.reset()
    imagen_emulator.inject("capacity")
    with DAG(dag_id="t", schedule=None, start_date=datetime(2025, 1, 1)):
        op = ImagenGenerateImageOperator(task_id="gen", prompt="A lighthouse at dawn")
    with tracer.start_as_current_span("worker.gen"):  # what Airflow 3.3's task runner starts around a task
        op.execute({"ti": mock.Mock()})
    op.execute({"ti": mock.Mock()})  # no span around it: none made
    generate, task = exporter.get_finished_spans()
    assert (generate.name, task.name) == ("imagen.generate", "worker.gen")
    assert generate.parent.span_id == task.context.span_id
    assert dict(generate.attributes) == {
        "imagen.model": MODEL,
        "imagen.attempts": 2,  # the refusal, then the image
        "imagen.billed": True,
        "imagen.cache_status": "MISS",  # answered by the model, not AI Gateway's cache
    }
    assert task.start_time <= generate.start_time <= generate.end_time <= task.end_time


def test_a_failed_generation_is_an_error_span(imagen_emulator, spans):
    from unittest import mock

    from airflow_provider_imagen.exceptions import ContentPolicyError

    exporter, tracer = spans
    exporter.clear()
    _metrics.reset()
    imagen_emulator.inject("content_policy")
    with DAG(dag_id="t", schedule=None, start_date=datetime(2025, 1, 1)):
        op = ImagenGenerateImageOperator(task_id="gen", prompt="A lighthouse at dawn")
    with tracer.start_as_current_span("worker.gen"), pytest.raises(ContentPolicyError):
        op.execute({"ti": mock.Mock()})
    generate = exporter.get_finished_spans()[0]
    assert generate.name == "imagen.generate" and generate.status.status_code.name == "ERROR"
    assert generate.attributes["imagen.error.kind"] == "content_policy"
    assert generate.attributes["imagen.billed"] is False
    assert imagen_emulator.token not in str(generate.to_json())
