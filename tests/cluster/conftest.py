"""
The cluster test runs only against a cluster started by ``scripts/cluster.sh`` (``scripts/test-cluster.sh``
does all of it); elsewhere its tests are skipped, so the normal suites never wait for one.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from tests.conftest import REPO

#: What the cluster test measured, printed at the end of the run and kept in test-artifacts/cluster/.
FIGURES: dict[str, Any] = {}
FIGURES_FILE = REPO / "test-artifacts" / "cluster" / "figures.json"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("CLUSTER_API_URL"):
        return
    skip = pytest.mark.skip(reason="needs a running cluster: scripts/test-cluster.sh")
    for item in items:
        if item.get_closest_marker("cluster"):
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    FIGURES_FILE.parent.mkdir(parents=True, exist_ok=True)
    FIGURES_FILE.write_text(json.dumps(FIGURES, indent=2, sort_keys=True))
    terminalreporter.section("cluster figures")
    for line in json.dumps(FIGURES, indent=2, sort_keys=True).splitlines():
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"(kept in {FIGURES_FILE})")
