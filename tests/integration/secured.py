"""Worker processes against brokers that demand credentials: what the SASL and TLS tests share.

A `SecuredWorker` is `zsc-worker run` (with the fake model, see
faults/fake_worker.py) on fresh topics, its librdkafka properties split the way
the README's Security section tells operators to: secrets (`is_secret_property`)
as `ZSC_KAFKA_*` variables, never in the file; everything else in the file's
`kafka.properties`. The checks say what a good login does (classifies) and what a
refused one does (alive, not ready, exits 0 on SIGTERM, secrets never logged).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from config.kafka import is_secret_property
from tests.brokers.apache_kafka import ApacheKafkaBroker
from tests.integration.faults.support import (
    WorkerProcess,
    topics_config,
    worker_processes,
    write_config,
)
from worker.embedded.base import LOOPBACK, free_loopback_ports

EVENTS = 20
TIMEOUT_S = 90.0
# Long enough for several login or handshake attempts (reconnect back-off starts at 100 ms).
NOT_READY_FOR_S = 8.0
SHUTDOWN_S = 30.0
HTTP_TIMEOUT_S = 2.0
TOPIC_TIMEOUT_S = 30.0
PRODUCE_TIMEOUT_S = 30.0
POLL_S = 0.5
READY_POLL_S = 0.2
LOG_TAIL_CHARS = 3000
"""Enough of a worker's log to show why an assertion failed."""
NOT_READY = "not ready: no broker reachable"
"""How the worker's log says why /readyz turned 503 (worker.metrics.Health)."""


@dataclass(frozen=True, slots=True)
class SecuredWorker:
    """A worker process not started yet, its HTTP address and topics."""

    process: WorkerProcess
    url: str
    source: str
    sink: str
    config: Path


def env_name(property_name: str) -> str:
    """The `ZSC_KAFKA_*` variable that sets a librdkafka property of both clients."""
    return "ZSC_KAFKA_" + property_name.upper().replace(".", "_")


def secured_worker(
    broker: ApacheKafkaBroker,
    tmp_path: Path,
    properties: Mapping[str, str],
    bootstrap_servers: str | None = None,
) -> SecuredWorker:
    """A worker with `properties` (secrets in its environment only) on fresh topics of `broker`.

    The topics are made with the broker's own client properties; the worker
    connects to `bootstrap_servers` (default: the broker's first listener).
    """
    name = f"secured-{uuid.uuid4().hex[:8]}"
    topics = [f"{name}.in", f"{name}.out", f"{name}.dlq"]
    admin = AdminClient({**broker.client_properties, "bootstrap.servers": broker.bootstrap_servers})
    for future in admin.create_topics([NewTopic(t, 1, 1) for t in topics]).values():
        future.result(timeout=TOPIC_TIMEOUT_S)
    [port] = free_loopback_ports(1)
    config = write_config(
        tmp_path,
        bootstrap_servers or broker.bootstrap_servers,
        f"g-{name}",
        topics_config(*topics),
        metrics_port=port,
        properties={k: v for k, v in properties.items() if not is_secret_property(k)},
    )
    env = {env_name(k): v for k, v in properties.items() if is_secret_property(k)}
    process = WorkerProcess(config, tmp_path / f"{name}.log", env=env)
    return SecuredWorker(process, f"http://{LOOPBACK}:{port}", topics[0], topics[1], config)


def http_status(url: str) -> int:
    """The HTTP status of a GET, or 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def assert_classifies(worker: SecuredWorker, client: Mapping[str, str]) -> None:
    """The worker gets ready, classifies every event, and exits 0 on SIGTERM.

    `client` (with `bootstrap.servers`) is how the test produces and reads back.
    """
    process = worker.process
    with worker_processes(process.start()):
        deadline = time.monotonic() + TIMEOUT_S
        while http_status(f"{worker.url}/readyz") != 200:
            assert process.alive, process.log()[-LOG_TAIL_CHARS:]
            assert time.monotonic() < deadline, f"never ready:\n{process.log()[-LOG_TAIL_CHARS:]}"
            time.sleep(READY_POLL_S)
        producer = Producer(dict(client))
        for n in range(EVENTS):
            producer.produce(worker.source, orjson.dumps({"id": n, "text": f"event {n}"}))
        assert producer.flush(PRODUCE_TIMEOUT_S) == 0
        reader = Consumer(
            {**client, "group.id": f"r-{uuid.uuid4().hex}", "auto.offset.reset": "earliest"}
        )
        reader.subscribe([worker.sink])
        seen: set[int] = set()
        while len(seen) < EVENTS:
            assert time.monotonic() < deadline, f"{len(seen)} of {EVENTS} outputs"
            message = reader.poll(POLL_S)
            if message is not None and message.error() is None:
                seen.add(orjson.loads(message.value() or b"{}")["id"])
        reader.close()
        code, _ = process.terminate(SHUTDOWN_S)
    assert code == 0, process.log()[-LOG_TAIL_CHARS:]


def assert_up_but_not_ready(worker: SecuredWorker, says: str) -> None:
    """The worker says it is not ready because of `says`, stays alive but not ready,
    and exits 0 on SIGTERM."""
    process = worker.process
    with worker_processes(process.start()):
        process.wait_for_log(NOT_READY, timeout_s=TIMEOUT_S)
        lines = [line for line in process.log().splitlines() if NOT_READY in line]
        assert len(lines) == 1, f"said more than once: {lines}"
        assert says in lines[0], f"the worker does not say why it is not ready: {lines[0]}"
        until = time.monotonic() + NOT_READY_FOR_S
        while time.monotonic() < until:
            assert process.alive, process.log()[-LOG_TAIL_CHARS:]
            assert http_status(f"{worker.url}/healthz") == 200
            assert http_status(f"{worker.url}/readyz") == 503
            time.sleep(POLL_S)
        code, _ = process.terminate(SHUTDOWN_S)
    assert code == 0, process.log()[-LOG_TAIL_CHARS:]


def assert_never_shown(worker: SecuredWorker, secrets: Iterable[str]) -> None:
    """None of `secrets` is in the worker's log or its config file."""
    log, config = worker.process.log(), worker.config.read_text()
    for secret in secrets:
        assert secret not in log, "a secret is in the worker's log"
        assert secret not in config, "a secret is in the worker's config file"
