"""
pytest fixtures for testing DAGs that use this provider, offline.

Installed with the package (``pytest11`` entry point)::

    def test_my_dag(imagen_emulator):
        imagen_emulator.inject("capacity")      # the next call gets a 429/3040
        run = my_dag.test()
        assert imagen_emulator.api_requests == 2

``imagen_emulator`` points the ``cloudflare_workers_ai_default`` connection at an emulator on
127.0.0.1 for the duration of the test, and resets its faults and counters before each test.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from airflow_provider_imagen.emulator.server import EmulatorClient, EmulatorServer

if TYPE_CHECKING:
    from collections.abc import Iterator


class EmulatorFixture(EmulatorClient):
    """What the ``imagen_emulator`` fixture hands a test: fault controls, counts, and the URLs."""

    def __init__(self, server: EmulatorServer) -> None:
        super().__init__(server.url)
        self.server = server
        self.token = server.config.token
        self.account_id = "emulator-account"
        self.conn_id = "cloudflare_workers_ai_default"


@pytest.fixture(scope="session")
def imagen_emulator_server() -> Iterator[EmulatorServer]:
    """One emulator for the whole session, on a free port of 127.0.0.1."""
    with EmulatorServer() as server:
        yield server


@pytest.fixture
def imagen_emulator(
    imagen_emulator_server: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[EmulatorFixture]:
    """The session's emulator, reset, with ``cloudflare_workers_ai_default`` pointing at it."""
    handle = EmulatorFixture(imagen_emulator_server)
    handle.reset()
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDFLARE_WORKERS_AI_DEFAULT", imagen_emulator_server.connection_json())
    try:
        yield handle
    finally:
        handle.close()
