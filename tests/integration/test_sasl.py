"""SASL from the environment, against an Apache Kafka broker that demands a login.

Credentials reach librdkafka through `ZSC_KAFKA_*` variables only (none in the
file): the right password classifies events; a wrong one keeps the worker up
but not ready, and never shows up in its log.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from tests.brokers import apache_kafka
from tests.brokers.apache_kafka import ApacheKafkaBroker
from tests.integration.faults.support import (
    WorkerProcess,
    topics_config,
    worker_processes,
    write_config,
)
from worker.embedded.base import LOOPBACK, free_loopback_ports

USER, PASSWORD = "zsc", "s3cret-only-librdkafka-sees"
WRONG_PASSWORD = "not-the-password-4711"
EVENTS = 20
TIMEOUT_S = 90.0
# Long enough for several login attempts (reconnect back-off starts at 100 ms).
NOT_READY_FOR_S = 8.0
SHUTDOWN_S = 30.0


@pytest.fixture(scope="module")
def sasl_broker() -> Iterator[ApacheKafkaBroker]:
    if not apache_kafka.can_run():
        pytest.skip("needs Java 17+ for a broker with SASL")
    with ApacheKafkaBroker(sasl_users={"broker": "broker-secret", USER: PASSWORD}) as broker:
        yield broker


def sasl_env(password: str) -> dict[str, str]:
    return {
        "ZSC_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "ZSC_KAFKA_SASL_MECHANISM": "PLAIN",
        "ZSC_KAFKA_SASL_USERNAME": USER,
        "ZSC_KAFKA_SASL_PASSWORD": password,
    }


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def worker_with(
    broker: ApacheKafkaBroker, tmp_path: Path, password: str
) -> tuple[WorkerProcess, str, list[str]]:
    name = f"sasl-{uuid.uuid4().hex[:8]}"
    topics = [f"{name}.in", f"{name}.out", f"{name}.dlq"]
    admin = AdminClient({**broker.client_properties, "bootstrap.servers": broker.bootstrap_servers})
    for future in admin.create_topics([NewTopic(t, 1, 1) for t in topics]).values():
        future.result(timeout=30)
    [port] = free_loopback_ports(1)
    config = write_config(
        tmp_path, broker.bootstrap_servers, f"g-{name}", topics_config(*topics), metrics_port=port
    )
    assert PASSWORD not in config.read_text()
    worker = WorkerProcess(config, tmp_path / f"{name}.log", env=sasl_env(password))
    return worker, f"http://{LOOPBACK}:{port}", topics


def test_credentials_from_the_environment_log_the_worker_in(
    sasl_broker: ApacheKafkaBroker, tmp_path: Path
) -> None:
    worker, url, (source, sink, _) = worker_with(sasl_broker, tmp_path, PASSWORD)
    client = {**sasl_broker.client_properties, "bootstrap.servers": sasl_broker.bootstrap_servers}
    with worker_processes(worker.start()):
        deadline = time.monotonic() + TIMEOUT_S
        while status(f"{url}/readyz") != 200:
            assert worker.alive, worker.log()[-3000:]
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.2)
        producer = Producer(client)
        for n in range(EVENTS):
            producer.produce(source, orjson.dumps({"id": n, "text": f"event {n}"}))
        assert producer.flush(30) == 0
        reader = Consumer(
            {**client, "group.id": f"r-{uuid.uuid4().hex}", "auto.offset.reset": "earliest"}
        )
        reader.subscribe([sink])
        seen = set()
        while len(seen) < EVENTS:
            assert time.monotonic() < deadline, f"{len(seen)} of {EVENTS} outputs"
            message = reader.poll(0.5)
            if message is not None and message.error() is None:
                seen.add(orjson.loads(message.value() or b"{}")["id"])
        reader.close()
        code, _ = worker.terminate(SHUTDOWN_S)
    assert code == 0
    assert PASSWORD not in worker.log()


def test_a_wrong_password_leaves_the_worker_up_not_ready_and_the_password_unlogged(
    sasl_broker: ApacheKafkaBroker, tmp_path: Path
) -> None:
    worker, url, _ = worker_with(sasl_broker, tmp_path, WRONG_PASSWORD)
    with worker_processes(worker.start()):
        worker.wait_for_log("Authentication failed", timeout_s=TIMEOUT_S)
        until = time.monotonic() + NOT_READY_FOR_S
        while time.monotonic() < until:
            assert worker.alive, worker.log()[-3000:]
            assert status(f"{url}/healthz") == 200
            assert status(f"{url}/readyz") == 503
            time.sleep(0.5)
        code, _ = worker.terminate(SHUTDOWN_S)
    assert code == 0, worker.log()[-3000:]
    assert WRONG_PASSWORD not in worker.log()
