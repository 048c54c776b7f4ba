"""SASL from the environment, against an Apache Kafka broker that demands a login.

Credentials reach librdkafka through `ZSC_KAFKA_*` variables only (none in the
file): the right password classifies events; a wrong one keeps the worker up
but not ready, and never shows up in its log.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.brokers import apache_kafka
from tests.brokers.apache_kafka import ApacheKafkaBroker
from tests.integration.secured import (
    SecuredWorker,
    assert_classifies,
    assert_never_shown,
    assert_up_but_not_ready,
    secured_worker,
)

USER, PASSWORD = "zsc", "s3cret-only-librdkafka-sees"
WRONG_PASSWORD = "not-the-password-4711"


@pytest.fixture(scope="module")
def sasl_broker() -> Iterator[ApacheKafkaBroker]:
    if not apache_kafka.can_run():
        pytest.skip("needs Java 17+ for a broker with SASL")
    with ApacheKafkaBroker(sasl_users={"broker": "broker-secret", USER: PASSWORD}) as broker:
        yield broker


def worker_with(broker: ApacheKafkaBroker, tmp_path: Path, password: str) -> SecuredWorker:
    properties = {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "PLAIN",
        "sasl.username": USER,
        "sasl.password": password,
    }
    return secured_worker(broker, tmp_path, properties)


def test_credentials_from_the_environment_log_the_worker_in(
    sasl_broker: ApacheKafkaBroker, tmp_path: Path
) -> None:
    worker = worker_with(sasl_broker, tmp_path, PASSWORD)
    assert_classifies(
        worker,
        {**sasl_broker.client_properties, "bootstrap.servers": sasl_broker.bootstrap_servers},
    )
    assert_never_shown(worker, [PASSWORD])


def test_a_wrong_password_leaves_the_worker_up_not_ready_and_the_password_unlogged(
    sasl_broker: ApacheKafkaBroker, tmp_path: Path
) -> None:
    worker = worker_with(sasl_broker, tmp_path, WRONG_PASSWORD)
    assert_up_but_not_ready(worker, "Authentication failed")
    assert_never_shown(worker, [WRONG_PASSWORD])
