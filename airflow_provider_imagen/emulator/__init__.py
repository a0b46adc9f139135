"""
An offline emulator of the Cloudflare Workers AI API, for laptops, CI and tests.

It is a separate product: the provider's runtime modules never import it.
"""

from __future__ import annotations

from airflow_provider_imagen.emulator.app import DEFAULT_TOKEN, EmulatorConfig, create_app
from airflow_provider_imagen.emulator.faults import PRESETS, Fault, make_fault
from airflow_provider_imagen.emulator.server import EmulatorClient, EmulatorServer

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
