"""Connection settings: SASL/SSL properties reach librdkafka, secrets reach nothing else."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException
from pydantic import SecretStr

from config.errors import ConfigError
from config.kafka import is_secret_property
from config.settings import load_settings
from worker.kafka import clients
from worker.kafka.clients import (
    DeliveryFailure,
    ProducerFailed,
    broker_unreachable,
    consumer_config,
    delivery_failure,
    producer_config,
    producer_failed,
    serve,
)
from worker.metrics import Health

PASSWORD = "hunter2-s3cret"
KEY_PASSWORD = "pem-pass-phrase"
CONFIG = f"""
kafka:
  bootstrap_servers: broker.example:9093
  properties:
    security.protocol: SASL_SSL
    sasl.mechanism: SCRAM-SHA-512
    sasl.username: zsc
    ssl.ca.location: /etc/ssl/ca.pem
    ssl.key.password: {KEY_PASSWORD}
topics:
  - input: posts
    output: posts.classified
    labels: [sports, politics]
"""


# What librdkafka 2.16 (OpenSSL 3) says to Apache Kafka 4.4 (seen in tests/integration/test_tls.py).
WRONG_CA = (
    "ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::"
    "certificate verify failed: broker certificate could not be verified, verify that "
    "ssl.ca.location is correctly configured or root CA certificates are installed "
    "(install ca-certificates package) (after 30ms in state SSL_HANDSHAKE)"
)
CERTIFICATE_REFUSED = (
    "ssl://127.0.0.1:9093/bootstrap: Receive failed: error:0A000412:SSL routines::"
    "ssl/tls alert bad certificate: SSL alert number 42 (after 8ms in state APIVERSION_QUERY)"
)
CONNECTION_CLOSED = (
    "ssl://127.0.0.1:9093/1: Disconnected: SSL connection closed by peer "
    "(after 12302ms in state UP)"
)


def write(tmp_path: Path, text: str = CONFIG) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_security_properties_reach_both_clients(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path), environ={"ZSC_KAFKA_SASL_PASSWORD": PASSWORD})
    for config in (consumer_config(settings), producer_config(settings)):
        assert config["security.protocol"] == "SASL_SSL"
        assert config["sasl.mechanism"] == "SCRAM-SHA-512"
        assert config["sasl.username"] == "zsc"
        assert config["sasl.password"] == PASSWORD, "librdkafka gets the secret in clear"
        assert config["ssl.key.password"] == KEY_PASSWORD


def test_secrets_never_show_in_reprs_dumps_or_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(write(tmp_path), environ={"ZSC_KAFKA_SASL_PASSWORD": PASSWORD})
    assert isinstance(settings.kafka.properties["sasl.password"], SecretStr)
    assert isinstance(settings.kafka.properties["ssl.key.password"], SecretStr)
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("test").info("settings: %s / %r", settings, settings.kafka)
    shown = [
        repr(settings),
        str(settings),
        settings.model_dump_json(),
        str(settings.model_dump()),
        caplog.text,
    ]
    for text in shown:
        assert PASSWORD not in text and KEY_PASSWORD not in text


def test_a_configuration_error_does_not_echo_a_secret(tmp_path: Path) -> None:
    bad = CONFIG.replace("topics:", "processing_guarantee: sometimes\ntopics:")
    with pytest.raises(ConfigError) as raised:
        load_settings(write(tmp_path, bad), environ={"ZSC_KAFKA_SASL_PASSWORD": PASSWORD})
    assert "processing_guarantee" in str(raised.value)
    assert PASSWORD not in str(raised.value) and KEY_PASSWORD not in str(raised.value)


@pytest.mark.parametrize(
    "name",
    [
        "sasl.password",
        "ssl.key.password",
        "ssl.keystore.password",
        "sasl.oauthbearer.client.secret",
        "ssl.key.pem",
        "sasl.oauthbearer.config",
    ],
)
def test_secret_properties_are_recognised(name: str) -> None:
    assert is_secret_property(name)


@pytest.mark.parametrize("name", ["sasl.username", "ssl.ca.location", "security.protocol"])
def test_other_properties_are_not_secret(name: str) -> None:
    assert not is_secret_property(name)


def test_environment_sets_properties_of_both_clients_or_of_one(tmp_path: Path) -> None:
    environ = {
        "ZSC_KAFKA_SASL_USERNAME": "from-env",
        "ZSC_KAFKA_CONSUMER_GROUP_INSTANCE_ID": "worker-3",
        "ZSC_KAFKA_PRODUCER_LINGER_MS": "20",
    }
    settings = load_settings(write(tmp_path), environ=environ)
    consumer, producer = consumer_config(settings), producer_config(settings)
    assert consumer["sasl.username"] == producer["sasl.username"] == "from-env"
    assert consumer["group.instance.id"] == "worker-3" and "group.instance.id" not in producer
    assert producer["linger.ms"] == "20" and consumer.get("linger.ms") is None


def test_client_specific_properties_win_over_shared_ones_which_win_over_the_workers(
    tmp_path: Path,
) -> None:
    text = CONFIG.replace(
        "    ssl.key.password", "    auto.offset.reset: latest\n    ssl.key.password"
    ).replace("topics:", "  consumer: {auto.offset.reset: none}\ntopics:")
    settings = load_settings(write(tmp_path, text), environ={})
    assert consumer_config(settings)["auto.offset.reset"] == "none"
    assert producer_config(settings)["auto.offset.reset"] == "latest"


def test_static_membership_gives_a_stable_transactional_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    environ = {
        "ZSC_PROCESSING_GUARANTEE": "exactly-once",
        "ZSC_KAFKA_CONSUMER_GROUP_INSTANCE_ID": "worker-3",
    }
    settings = load_settings(write(tmp_path), environ=environ)
    first = producer_config(settings)["transactional.id"]
    monkeypatch.setattr(clients.os, "getpid", lambda: 99999)
    assert producer_config(settings)["transactional.id"] == first, "the same after a restart"
    assert first == "zsc-worker-zsc-worker-worker-3"


def test_without_static_membership_each_process_has_its_own_transactional_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(write(tmp_path), environ={"ZSC_PROCESSING_GUARANTEE": "exactly-once"})
    first = producer_config(settings)["transactional.id"]
    monkeypatch.setattr(clients.os, "getpid", lambda: 99999)
    assert producer_config(settings)["transactional.id"] != first


def test_read_ahead_is_bounded(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path), environ={})
    assert consumer_config(settings)["queued.max.messages.kbytes"] == clients.PREFETCH_KBYTES


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), DeliveryFailure.REJECTED),
        (KafkaError(KafkaError.INVALID_RECORD), DeliveryFailure.REJECTED),
        (KafkaError(KafkaError._MSG_TIMED_OUT), DeliveryFailure.TRANSIENT),
        (KafkaError(KafkaError._PURGE_QUEUE), DeliveryFailure.TRANSIENT),
        (KafkaError(KafkaError.NOT_ENOUGH_REPLICAS, retriable=True), DeliveryFailure.TRANSIENT),
        (KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED), DeliveryFailure.FATAL),
        (KafkaError(KafkaError._FENCED, fatal=True), DeliveryFailure.FATAL),
    ],
)
def test_delivery_failures_are_classified(error: KafkaError, expected: DeliveryFailure) -> None:
    assert delivery_failure(error) is expected


@pytest.mark.parametrize(
    ("error", "failed"),
    [
        (KafkaError(KafkaError._FENCED, fatal=True), True),
        (KafkaError(KafkaError._FATAL), True),
        (KafkaError(KafkaError.INVALID_PRODUCER_EPOCH), True),
        (KafkaError(KafkaError.PRODUCER_FENCED), True),
        (KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), False),
        (KafkaError(KafkaError._MSG_TIMED_OUT, retriable=True), False),
    ],
)
def test_a_producer_that_failed_for_good_is_told_apart(error: KafkaError, failed: bool) -> None:
    assert producer_failed(error) is failed


def fenced() -> KafkaException:
    return KafkaException(KafkaError(KafkaError._FENCED, "fenced", fatal=True))


def raising(exc: BaseException) -> Callable[[], int]:
    def call() -> int:
        raise exc

    return call


def test_a_fatal_error_raised_while_serving_callbacks_is_the_producer_failing() -> None:
    with pytest.raises(ProducerFailed) as raised:
        serve(raising(fenced()))
    assert raised.value.error.code() == KafkaError._FENCED
    # A delivery report served after the fatal error fails on it (confluent-kafka 2.16).
    chained = SystemError("returned a result with an exception set")
    chained.__cause__ = fenced()
    with pytest.raises(ProducerFailed):
        serve(raising(chained))


def test_other_errors_while_serving_callbacks_pass_through() -> None:
    timed_out = KafkaException(KafkaError(KafkaError._TIMED_OUT, retriable=True))
    with pytest.raises(KafkaException):
        serve(raising(timed_out))
    with pytest.raises(SystemError):
        serve(raising(SystemError("a bug of its own")))
    assert serve(lambda: 3) == 3


def test_only_losing_every_broker_the_login_or_the_handshake_makes_the_worker_unready() -> None:
    assert broker_unreachable(KafkaError(KafkaError._ALL_BROKERS_DOWN))
    assert broker_unreachable(KafkaError(KafkaError._AUTHENTICATION))
    assert broker_unreachable(KafkaError(KafkaError._SSL, WRONG_CA))
    assert broker_unreachable(KafkaError(KafkaError._TRANSPORT, CERTIFICATE_REFUSED))
    assert not broker_unreachable(KafkaError(KafkaError._TRANSPORT))
    assert not broker_unreachable(KafkaError(KafkaError._TRANSPORT, CONNECTION_CLOSED))


def test_readiness_follows_the_broker() -> None:
    health = Health()
    health.model_loaded.set()
    health.group_joined.set()
    assert health.ready
    health.broker_down("1/1 brokers are down")
    assert not health.ready
    health.broker_up()
    assert health.ready
