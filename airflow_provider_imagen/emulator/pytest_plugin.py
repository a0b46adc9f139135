"""
pytest fixtures for testing DAGs that use this provider, offline.

Installed with the package (``pytest11`` entry point)::

    def test_my_dag(imagen_emulator):
        imagen_emulator.inject("capacity")      # the next call gets a 429/3040
        run = my_dag.test()
        assert imagen_emulator.api_requests == 2

``imagen_emulator`` points the ``cloudflare_workers_ai_default`` connection at an emulator on
127.0.0.1 for the duration of the test, and resets its faults and counters (and the process's rate pacers,
see ``airflow_provider_imagen._cloudflare.pacing``) before each test.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

    from airflow_provider_imagen.emulator.server import EmulatorFixture, EmulatorServer

# Nothing heavy at import time: pytest loads this plugin in every session of every project that installs the
# provider, so the emulator (FastAPI, uvicorn, httpx) is imported only when a test asks for it.


@pytest.fixture(scope="session")
def imagen_emulator_server() -> Iterator[EmulatorServer]:
    """One emulator for the whole session, on a free port of 127.0.0.1."""
    from airflow_provider_imagen.emulator.server import EmulatorServer

    with EmulatorServer() as server:
        yield server


@pytest.fixture
def imagen_emulator(
    imagen_emulator_server: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[EmulatorFixture]:
    """Yield the session's emulator, reset, with ``cloudflare_workers_ai_default`` pointing at it."""
    from airflow_provider_imagen._cloudflare import pacing
    from airflow_provider_imagen.emulator.server import EmulatorFixture

    handle = EmulatorFixture(imagen_emulator_server)
    handle.reset()
    pacing.reset()  # the pace one test learned from the emulator must not slow the next
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDFLARE_WORKERS_AI_DEFAULT", imagen_emulator_server.connection_json())
    try:
        yield handle
    finally:
        handle.close()
