"""
An offline emulator of the Cloudflare Workers AI API, for laptops, CI and tests.

It is a separate product: the provider's runtime modules never import it. Its names are imported on first
use, so that loading the package (as pytest does for the ``imagen_emulator`` fixture in every session of
every project that installs the provider) costs nothing until the emulator is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_imagen.emulator.app import create_app
    from airflow_provider_imagen.emulator.faults import PRESETS, Fault, make_fault
    from airflow_provider_imagen.emulator.server import EmulatorClient, EmulatorServer
    from airflow_provider_imagen.emulator.state import DEFAULT_TOKEN, EmulatorConfig

_HOMES = {
    "DEFAULT_TOKEN": "state",
    "EmulatorConfig": "state",
    "create_app": "app",
    "PRESETS": "faults",
    "Fault": "faults",
    "make_fault": "faults",
    "EmulatorClient": "server",
    "EmulatorServer": "server",
}

__all__ = [
    "DEFAULT_TOKEN",
    "PRESETS",
    "EmulatorClient",
    "EmulatorConfig",
    "EmulatorServer",
    "Fault",
    "create_app",
    "make_fault",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
