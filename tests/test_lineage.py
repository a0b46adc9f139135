"""OpenLineage: the images an operator stored are its output datasets, named as object-storage providers do."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from datetime import datetime

import pytest
from airflow.sdk import DAG

from airflow_provider_imagen._task.lineage import ImagenLineageMixin, dataset_name
from airflow_provider_imagen.operators import ImagenGenerateImageOperator, ImagenGenerateImagesOperator
from tests.conftest import register_dag

needs_openlineage = pytest.mark.skipif(
    importlib.util.find_spec("airflow.providers.openlineage") is None,
    reason="the OpenLineage provider (in the dev extra) is not installed",
)

# The operators themselves: the mixin is among their bases.
LineageImageOperator = ImagenGenerateImageOperator
LineageImagesOperator = ImagenGenerateImagesOperator


def test_both_operators_report_lineage():
    assert issubclass(ImagenGenerateImageOperator, ImagenLineageMixin)
    assert issubclass(ImagenGenerateImagesOperator, ImagenLineageMixin)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("file:///data/images/cat.png", ("file", "/data/images/cat.png")),
        ("/data/images/cat.png", ("file", "/data/images/cat.png")),
        ("s3://aws_default@my-bucket/images/cat.png", ("s3://my-bucket", "images/cat.png")),
        ("s3://my-bucket/cat.png", ("s3://my-bucket", "cat.png")),
        ("gs://google_cloud_default@bucket/a/cat.png", ("gs://bucket", "a/cat.png")),
        ("gcs://bucket/a/cat.png", ("gs://bucket", "a/cat.png")),
        ("abfs://container/a/cat.png", ("abfs://container", "a/cat.png")),
    ],
)
def test_stored_uris_are_named_as_the_object_storage_providers_name_them(uri, expected):
    assert dataset_name(uri) == expected


def _lineage(dag_run, task):
    """What the OpenLineage listener reports for ``task`` when it succeeds: the provider's own extraction."""
    from airflow.providers.openlineage.extractors.manager import ExtractorManager
    from airflow.utils.state import TaskInstanceState

    ti = dag_run.get_task_instance(task.task_id)
    assert ti.state == "success"
    return ExtractorManager().extract_metadata(dag_run, task, TaskInstanceState.SUCCESS, ti)


@needs_openlineage
def test_a_stored_image_is_the_tasks_output_dataset(airflow_db, imagen_emulator, tmp_path):
    with DAG(dag_id="imagen_lineage_single", schedule=None, start_date=datetime(2025, 1, 1)) as dag:
        stored = LineageImageOperator(task_id="stored", prompt="A red kite", output_path=f"{tmp_path}/")
        unstored = LineageImageOperator(task_id="unstored", prompt="A blue kite")
    dag_run = register_dag(dag).test()
    assert dag_run.state == "success"

    uri = dag_run.get_task_instance("stored").xcom_pull(task_ids="stored", key="stored_uri")
    assert uri.startswith(f"file://{tmp_path}/")
    lineage = _lineage(dag_run, stored)
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("file", uri.removeprefix("file://"))]
    assert lineage.inputs == []

    assert _lineage(dag_run, unstored).outputs == []  # nothing kept, nothing to trace


@needs_openlineage
def test_a_batch_reports_every_stored_image(airflow_db, imagen_emulator, tmp_path):
    prompts = ["A kite over a beach", "A kite over a field"]
    with DAG(dag_id="imagen_lineage_batch", schedule=None, start_date=datetime(2025, 1, 1)) as dag:
        batch = LineageImagesOperator(task_id="batch", prompts=prompts, output_path=f"{tmp_path}/")
    dag_run = register_dag(dag).test()
    assert dag_run.state == "success"

    uris = dag_run.get_task_instance("batch").xcom_pull(task_ids="batch", key="stored_uri")
    names = [(d.namespace, d.name) for d in _lineage(dag_run, batch).outputs]
    assert names == [("file", uri.removeprefix("file://")) for uri in uris] and len(names) == 2


def test_the_provider_imports_without_openlineage():
    # The mixin is on every operator: importing it must not need (or load) the OpenLineage provider.
    code = (
        "import sys, airflow.sdk; sys.modules['airflow.providers.openlineage'] = None\n"
        "import airflow_provider_imagen._task.lineage, airflow_provider_imagen.operators\n"
        "print(any(m.startswith('openlineage') for m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "False"


_LISTENER_RUN = """
import os
from datetime import datetime

from airflow.dag_processing.bundles.manager import DagBundlesManager
from airflow.sdk import DAG

from airflow_provider_imagen.operators import ImagenGenerateImageOperator

try:
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
except ImportError:  # Airflow 3.1
    from airflow.models.dagbag import DagBag, sync_bag_to_db


with DAG(dag_id="imagen_lineage_listener", schedule=None, start_date=datetime(2025, 1, 1)) as dag:
    ImagenGenerateImageOperator(task_id="stored", prompt="A kite at sunset", output_path=os.environ["OUT"])

# What tests.conftest.register_dag does: importing that module here would give this process another home.
DagBundlesManager().sync_bundles_to_db()
bag = DagBag(dag_folder=os.devnull, collect_dags=False)
bag.bag_dag(dag)
sync_bag_to_db(bag, "dags-folder", None)
print("STATE", dag.test().state, flush=True)
"""


@needs_openlineage
def test_the_openlineage_listener_sends_the_stored_image_as_an_output(airflow_db, imagen_emulator, tmp_path):
    # A real run with the OpenLineage provider enabled (a file transport), in a process of its own because the
    # provider reads its configuration once per process. What a lineage backend receives is what is checked.
    events = tmp_path / "events.jsonl"
    script = tmp_path / "imagen_lineage_listener.py"
    script.write_text(_LISTENER_RUN)
    env = {
        **os.environ,
        "OUT": f"{tmp_path}/images/",
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps({"type": "file", "log_file_path": str(events), "append": True}),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "imagen-tests",
        # Emit from a thread: a fork of a process running dag.test()'s in-process API server can hang.
        "AIRFLOW__OPENLINEAGE__EXECUTE_IN_THREAD": "True",
    }
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert "STATE success" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]

    sent = [json.loads(line) for line in events.read_text().splitlines()]
    complete = [e for e in sent if e["eventType"] == "COMPLETE" and e["job"]["name"].endswith(".stored")]
    assert len(complete) == 1, [(e["eventType"], e["job"]["name"]) for e in sent]
    (stored,) = (tmp_path / "images").iterdir()
    assert [(d["namespace"], d["name"]) for d in complete[0]["outputs"]] == [("file", str(stored))]
    assert imagen_emulator.token not in events.read_text()
