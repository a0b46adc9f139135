"""
Test setup: a private Airflow home on SQLite, set before anything imports airflow.

The ``imagen_emulator`` fixture comes from the package's own pytest plugin
(``airflow_provider_imagen.emulator.pytest_plugin``), as users get it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_HOME = Path(tempfile.mkdtemp(prefix="imagen-airflow-home-"))

os.environ["AIRFLOW_HOME"] = str(_HOME)
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_HOME / 'airflow.db'}"
os.environ.pop("AIRFLOW_CONN_CLOUDFLARE_WORKERS_AI_DEFAULT", None)
# In-process runs (dag.test()) have no scheduler to race with: no need to hold a trigger's event. The real
# deployments of tests/e2e set it back to the default.
os.environ["AIRFLOW__IMAGEN__DEFERRAL_MIN_SECONDS"] = "0"


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A fresh metadata database, made once per session for the tests that run DAGs."""
    from airflow.utils import db

    db.resetdb()
    return _HOME


def task_deferred_class() -> type[Exception]:
    """``TaskDeferred``: in ``airflow.sdk.exceptions`` from 3.2, only in ``airflow.exceptions`` on 3.1."""
    try:
        from airflow.sdk.exceptions import TaskDeferred
    except ImportError:  # Airflow 3.1
        from airflow.exceptions import TaskDeferred
    return TaskDeferred


def register_dag(dag):
    """Serialize a DAG defined inside a test so that ``dag.test()`` can run it (Airflow 3.1 and 3.3)."""
    try:
        from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    except ImportError:  # Airflow 3.1
        from airflow.models.dagbag import DagBag, sync_bag_to_db
    from airflow.dag_processing.bundles.manager import DagBundlesManager

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=os.devnull, collect_dags=False)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)
    return dag


@pytest.fixture
def fast_backoff(monkeypatch):
    """
    Shorten the exponential backoff of hooks and triggers created without an explicit ``retry_backoff``
    (operators and DAG runs), so drills take seconds. Retry-After is still honoured in full.
    """
    from airflow_provider_imagen.hooks import CloudflareWorkersAIHook
    from airflow_provider_imagen.triggers import ImagenGenerateImageTrigger

    for cls in (CloudflareWorkersAIHook, ImagenGenerateImageTrigger):
        defaults = dict(cls.__init__.__kwdefaults__)
        monkeypatch.setattr(cls.__init__, "__kwdefaults__", {**defaults, "retry_backoff": 0.01})


@pytest.fixture(autouse=True)
def _cold_pacers():
    """Every test starts with the process's rate pacers cold, as a new task process does."""
    from airflow_provider_imagen._cloudflare import pacing

    pacing.reset()
