"""Brokers started on demand: Tansu for the demo, Apache Kafka for tests without Docker.

The classes are imported lazily so that `python -m worker.embedded.apache_kafka`
does not find its own module already imported by this package, and the demo
does not load the Maven machinery it never uses.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.embedded.apache_kafka import ApacheKafkaBroker
    from worker.embedded.base import EmbeddedBroker
    from worker.embedded.tansu import TansuBroker

__all__ = ["ApacheKafkaBroker", "EmbeddedBroker", "TansuBroker"]

_HOMES = {
    "ApacheKafkaBroker": "worker.embedded.apache_kafka",
    "EmbeddedBroker": "worker.embedded.base",
    "TansuBroker": "worker.embedded.tansu",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
