"""The test brokers' TLS: certificates made by tests.brokers.tls, listeners of server_properties."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.brokers.apache_kafka import TlsListeners, server_properties
from tests.brokers.tls import Certificates, make_certificates, ssl_properties
from worker.embedded.base import LOOPBACK

PORT, CONTROLLER_PORT, SASL_SSL_PORT = 9093, 9094, 9095
USERS = {"broker": "broker-secret", "zsc": "zsc-secret"}


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certificates"))


def load(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def test_the_broker_certificate_names_loopback_and_chains_to_the_ca(
    certificates: Certificates,
) -> None:
    [broker, ca] = load(certificates.broker.certificate)
    [trusted] = load(certificates.ca)
    assert ca == trusted and broker.issuer == ca.subject
    broker.verify_directly_issued_by(ca)
    names = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address(LOOPBACK) in names.get_values_for_type(x509.IPAddress)
    assert "localhost" in names.get_values_for_type(x509.DNSName)


def test_the_stranger_is_signed_by_the_other_ca_only(certificates: Certificates) -> None:
    [stranger, issuer] = load(certificates.stranger.certificate)
    [other], [ca] = load(certificates.other_ca), load(certificates.ca)
    assert issuer == other and other != ca
    stranger.verify_directly_issued_by(other)
    with pytest.raises(ValueError):
        stranger.verify_directly_issued_by(ca)


def test_client_keys_open_with_their_password_and_the_broker_key_with_none(
    certificates: Certificates,
) -> None:
    client = certificates.client
    assert client.key_password is not None
    serialization.load_pem_private_key(client.key.read_bytes(), client.key_password.encode())
    with pytest.raises(TypeError):  # encrypted: no password, no key
        serialization.load_pem_private_key(client.key.read_bytes(), None)
    assert certificates.broker.key_password is None
    serialization.load_pem_private_key(certificates.broker.key.read_bytes(), None)


def test_ssl_properties_present_an_identity_only_when_given_one(
    certificates: Certificates,
) -> None:
    assert ssl_properties(certificates.ca) == {"ssl.ca.location": str(certificates.ca)}
    client = ssl_properties(certificates.ca, certificates.client)
    assert client["ssl.key.password"] == certificates.client.key_password
    assert client["ssl.certificate.location"] == str(certificates.client.certificate)


def properties(tmp_path: Path, **tls: int | None) -> dict[str, str]:
    return server_properties(
        port=PORT,
        controller_port=CONTROLLER_PORT,
        log_dir=tmp_path,
        sasl_users=USERS,
        tls=TlsListeners(keystore=tmp_path / "k.pem", truststore=tmp_path / "ca.pem", **tls),
    )


def test_tls_listeners_demand_client_certificates_and_keep_the_controller_plain(
    tmp_path: Path,
) -> None:
    config = properties(tmp_path, sasl_ssl_port=SASL_SSL_PORT)
    assert config["listeners"] == (
        f"SSL://{LOOPBACK}:{PORT},SASL_SSL://{LOOPBACK}:{SASL_SSL_PORT},"
        f"CONTROLLER://{LOOPBACK}:{CONTROLLER_PORT}"
    )
    assert config["inter.broker.listener.name"] == "SSL"
    assert config["listener.name.ssl.ssl.client.auth"] == "required"
    assert "ssl.client.auth" not in config, "SASL_SSL clients log in with a password"
    assert config["ssl.keystore.type"] == config["ssl.truststore.type"] == "PEM"
    assert "ssl.key.password" not in config, "Kafka refuses one with an unencrypted key"
    assert "CONTROLLER:PLAINTEXT" in config["listener.security.protocol.map"]
    assert 'user_zsc="zsc-secret"' in config["listener.name.sasl_ssl.plain.sasl.jaas.config"]
    assert not any("sasl_plaintext" in key for key in config)


def test_without_a_sasl_ssl_port_there_is_mutual_tls_only(tmp_path: Path) -> None:
    config = properties(tmp_path)
    assert config["advertised.listeners"] == f"SSL://{LOOPBACK}:{PORT}"
    assert "sasl.enabled.mechanisms" not in config
