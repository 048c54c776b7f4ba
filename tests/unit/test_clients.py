"""Client settings: security properties reach both clients, secrets only there."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from config.kafka import KafkaSettings
from config.settings import Settings, load_settings
from tests.brokers.tls import make_certificates, ssl_properties
from worker.errors import ConfigError
from worker.kafka.clients import (
    check_client_properties,
    consumer_config,
    make_command_producer,
    make_producer,
    make_replay_consumer,
    producer_config,
)

CONFIG = """
kafka:
  properties: {security.protocol: SASL_SSL, sasl.mechanism: PLAIN, sasl.password: s3cret}
  consumer: {session.timeout.ms: 6000}
  producer: {linger.ms: 20}
topics: [{input: a, output: b, labels: [x]}]
"""


def test_properties_reach_both_clients_and_secrets_stay_hidden(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    settings = load_settings(path, environ={"ZSC_KAFKA_SASL_USERNAME": "user"})
    consumer, producer = consumer_config(settings), producer_config(settings)
    for config in (consumer, producer):
        assert config["security.protocol"] == "SASL_SSL"
        assert config["sasl.password"] == "s3cret"
        assert config["sasl.username"] == "user"
    assert consumer["session.timeout.ms"] == 6000 and producer["linger.ms"] == 20
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings.model_dump())


def _settings(tmp_path: Path, extra: str = "", environ: dict[str, str] | None = None) -> Settings:
    path = tmp_path / "config.yaml"
    path.write_text("topics: [{input: a, output: b, labels: [x]}]\n" + extra)
    return load_settings(path, environ=environ or {})


def test_a_dead_worker_is_replaced_within_seconds_by_default(tmp_path: Path) -> None:
    consumer = consumer_config(_settings(tmp_path))
    assert consumer["session.timeout.ms"] == 10_000
    assert consumer["partition.assignment.strategy"] == "cooperative-sticky"
    producer = producer_config(_settings(tmp_path, "processing_guarantee: exactly-once\n"))
    assert producer["transaction.timeout.ms"] == 10_000
    assert str(producer["transactional.id"]).startswith("zsc-worker-zsc-worker-")


def test_the_broker_side_group_protocol_gets_no_classic_only_properties(tmp_path: Path) -> None:
    consumer = consumer_config(_settings(tmp_path, "kafka: {consumer: {group.protocol: consumer}}"))
    assert "session.timeout.ms" not in consumer
    assert "partition.assignment.strategy" not in consumer


def test_properties_librdkafka_refuses_are_configuration_errors(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path, "kafka: {producer: {linger.ms: 10000, message.timeout.ms: 5000}}"
    )
    with pytest.raises(ConfigError) as raised:
        make_producer(settings)
    assert "kafka.producer" in str(raised.value)
    assert "message.timeout.ms" in str(raised.value) and "linger.ms" in str(raised.value)


def test_replay_clients_take_kafka_properties_and_not_the_workers_own() -> None:
    # The workers' consumer and producer sections would be refused here; they are not read.
    kafka = KafkaSettings(consumer={"session.timeout.ms": "often"}, producer={"linger.ms": "later"})
    make_replay_consumer(kafka, "zsc-replay.posts.dlq").close()
    make_command_producer(kafka).flush(0)
    refused = KafkaSettings(properties={"security.protocol": "carrier-pigeon"})
    for make in (
        lambda: make_replay_consumer(refused, "g"),
        lambda: make_command_producer(refused),
    ):
        with pytest.raises(ConfigError, match=r"kafka\.properties .*security\.protocol"):
            make()


def test_a_client_key_that_does_not_open_stops_start_up_without_showing_the_password(
    tmp_path: Path,
) -> None:
    certificates = make_certificates(tmp_path / "certificates")
    files = ssl_properties(certificates.ca, certificates.client)
    del files["ssl.key.password"]
    extra = yaml.safe_dump({"kafka": {"properties": {"security.protocol": "SSL", **files}}})
    wrong = "not-the-key-password"
    settings = _settings(tmp_path, extra, environ={"ZSC_KAFKA_SSL_KEY_PASSWORD": wrong})
    # librdkafka opens the key when the client is made: before the model loads.
    with pytest.raises(ConfigError) as raised:
        check_client_properties(settings)
    assert "ssl.key.location" in str(raised.value)
    assert wrong not in str(raised.value)
