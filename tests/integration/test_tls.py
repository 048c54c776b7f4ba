"""TLS against an Apache Kafka broker with certificates made by the test.

The broker takes mutual TLS on one listener (client certificates required) and
SASL/PLAIN over TLS on another. The worker classifies over either; a CA that
did not sign the broker's certificate, or a client certificate of a CA the
broker does not trust, leaves it up but not ready, saying why in its log. Key
passwords and the SASL password reach it through `ZSC_KAFKA_*` variables only
and, like the private keys themselves, never show up in its log.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.brokers import apache_kafka
from tests.brokers.apache_kafka import ApacheKafkaBroker
from tests.brokers.tls import Certificates, Identity, make_certificates, ssl_properties
from tests.integration.secured import (
    SecuredWorker,
    assert_classifies,
    assert_never_shown,
    assert_up_but_not_ready,
    secured_worker,
)

USER, PASSWORD = "zsc", "tls-s3cret-only-librdkafka-sees"
PEM_BOUNDARY = "-----"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certificates"))


@pytest.fixture(scope="module")
def tls_broker(certificates: Certificates) -> Iterator[ApacheKafkaBroker]:
    if not apache_kafka.can_run():
        pytest.skip("needs Java 17+ for a broker with TLS")
    with ApacheKafkaBroker(
        tls=certificates, sasl_users={"broker": "broker-secret", USER: PASSWORD}
    ) as broker:
        yield broker


def secrets_of(certificates: Certificates) -> list[str]:
    """Everything that must never be logged: passwords and every line of every private key."""
    identities = (certificates.broker, certificates.client, certificates.stranger)
    passwords = [i.key_password for i in identities if i.key_password is not None]
    key_lines = [
        line
        for identity in identities
        for line in identity.key.read_text().splitlines()
        if not line.startswith(PEM_BOUNDARY)
    ]
    return [PASSWORD, *passwords, *key_lines]


def mutual_tls_worker(
    broker: ApacheKafkaBroker, tmp_path: Path, ca: Path, identity: Identity
) -> SecuredWorker:
    return secured_worker(
        broker, tmp_path, {"security.protocol": "SSL", **ssl_properties(ca, identity)}
    )


def test_mutual_tls_classifies(
    tls_broker: ApacheKafkaBroker, certificates: Certificates, tmp_path: Path
) -> None:
    worker = mutual_tls_worker(tls_broker, tmp_path, certificates.ca, certificates.client)
    assert_classifies(
        worker, {**tls_broker.client_properties, "bootstrap.servers": tls_broker.bootstrap_servers}
    )
    assert_never_shown(worker, secrets_of(certificates))


def test_sasl_over_tls_classifies(
    tls_broker: ApacheKafkaBroker, certificates: Certificates, tmp_path: Path
) -> None:
    properties = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.username": USER,
        "sasl.password": PASSWORD,
        **ssl_properties(certificates.ca),
    }
    worker = secured_worker(
        tls_broker, tmp_path, properties, bootstrap_servers=tls_broker.sasl_ssl_bootstrap_servers
    )
    assert_classifies(
        worker,
        {**properties, "bootstrap.servers": tls_broker.sasl_ssl_bootstrap_servers},
    )
    assert_never_shown(worker, secrets_of(certificates))


@pytest.mark.parametrize(
    ("trusting", "presenting", "says"),
    [
        # The worker cannot verify the broker's certificate: its handshake fails.
        pytest.param("other_ca", "client", "certificate verify failed", id="wrong-ca"),
        # The broker refuses the worker's certificate. Under TLS 1.3 the client
        # finishes its side of the handshake first and reads the broker's alert
        # with the first response.
        pytest.param("ca", "stranger", "alert bad certificate", id="wrong-client-certificate"),
    ],
)
def test_a_refused_handshake_leaves_the_worker_up_not_ready_and_says_why(
    tls_broker: ApacheKafkaBroker,
    certificates: Certificates,
    tmp_path: Path,
    trusting: str,
    presenting: str,
    says: str,
) -> None:
    ca, identity = getattr(certificates, trusting), getattr(certificates, presenting)
    worker = mutual_tls_worker(tls_broker, tmp_path, ca, identity)
    assert_up_but_not_ready(worker, says)
    assert_never_shown(worker, secrets_of(certificates))
