"""
Every mode with the connection stored in the metadata database (as ``airflow connections add`` or the UI
stores it), not in an ``AIRFLOW_CONN_*`` variable: under ``dag.test()`` an async lookup cannot see it.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.e2e


@pytest.fixture
def db_connection(airflow_db, imagen_emulator, monkeypatch):
    from airflow.models import Connection
    from airflow.utils.session import create_session

    monkeypatch.delenv("AIRFLOW_CONN_CLOUDFLARE_WORKERS_AI_DEFAULT")
    conn_id = imagen_emulator.conn_id
    with create_session() as session:
        session.query(Connection).filter(Connection.conn_id == conn_id).delete()
        session.add(
            Connection(
                conn_id=conn_id,
                conn_type="cloudflare_workers_ai",
                host=imagen_emulator.api_base,
                password=imagen_emulator.token,
                extra=json.dumps({"account_id": imagen_emulator.account_id}),
            )
        )
    yield conn_id
    with create_session() as session:
        session.query(Connection).filter(Connection.conn_id == conn_id).delete()


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 3.1
        from airflow.models.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


@pytest.mark.parametrize(
    ("dag_id", "task_id", "images"),
    [
        ("imagen_quickstart", "generate_image", 1),
        ("imagen_batch", "generate_images", 5),
        ("imagen_deferrable_mapped", "generate_image", 3),
    ],
    ids=["synchronous", "batch", "deferrable"],
)
def test_every_mode_reads_a_connection_stored_in_the_database(
    db_connection, dagbag, imagen_emulator, dag_id, task_id, images
):
    dag_run = dagbag.get_dag(dag_id).test()
    assert dag_run.state == "success", [(ti.task_id, ti.map_index, ti.state) for ti in dag_run.get_task_instances()]
    assert imagen_emulator.generations == images
