"""Certificates made by the tests: a CA, a broker and a client it signed, and a stranger.

`make_certificates(directory)` writes PEM files for TLS tests against a real
broker: the CA the broker and its clients trust, the broker's certificate
(SAN 127.0.0.1 and localhost, for hostname verification on loopback), a client
certificate of that CA (mutual TLS), and an unrelated second CA with a client
certificate of its own, for the tests that must be refused.

Keys are EC P-256 (quick to make; Java, OpenSSL and librdkafka take them) in
PKCS#8, the one PEM key format Kafka reads. The broker's key is unencrypted:
Java 17 cannot decrypt the PBES2 encryption that `cryptography` (like OpenSSL)
uses, and Kafka then wants no `ssl.key.password`. Client keys are encrypted
with a password, as a client's key is in production, so that the tests pass
it to librdkafka as a secret.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from worker.embedded.base import LOOPBACK

VALIDITY = datetime.timedelta(days=2)
"""Longer than any test session, short enough that a leaked test key is soon worthless."""

CLOCK_SKEW = datetime.timedelta(minutes=5)
"""Certificates are valid from a little before now: a peer whose clock lags still accepts them."""

_PASSWORD_BYTES = 16


@dataclass(frozen=True, slots=True)
class Identity:
    """A certificate and its private key, in PEM files."""

    certificate: Path
    """The certificate, then the CA's that signed it (the chain a peer is shown)."""
    key: Path
    """The private key, PKCS#8; encrypted when `key_password` is set."""
    key_password: str | None

    def keystore_pem(self) -> str:
        """Key and chain in one PEM text: what Kafka's `ssl.keystore.type=PEM` file holds."""
        return self.key.read_text(encoding="ascii") + self.certificate.read_text(encoding="ascii")


@dataclass(frozen=True, slots=True)
class Certificates:
    """Everything a TLS test needs, written by `make_certificates`."""

    ca: Path
    """The CA certificate that the broker and its clients trust."""
    broker: Identity
    """The broker's: SAN 127.0.0.1 and localhost, for servers and (inter-broker) clients."""
    client: Identity
    """A client the broker accepts: signed by `ca`."""
    other_ca: Path
    """An unrelated CA: a client trusting only it must refuse the broker."""
    stranger: Identity
    """A client the broker must refuse: signed by `other_ca`."""


def make_certificates(directory: Path) -> Certificates:
    """Write a CA, a broker and a client it signed, an unrelated CA and client, to `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = _authority("zsc-worker test CA")
    other_key, other = _authority("unrelated test CA")
    return Certificates(
        ca=_write(directory / "ca.crt", _pem(ca)),
        broker=_identity(directory, "broker", ca_key, ca, server=True, key_password=None),
        client=_identity(directory, "client", ca_key, ca, server=False, key_password=_password()),
        other_ca=_write(directory / "other-ca.crt", _pem(other)),
        stranger=_identity(
            directory, "stranger", other_key, other, server=False, key_password=_password()
        ),
    )


def ssl_properties(ca: Path, identity: Identity | None = None) -> dict[str, str]:
    """librdkafka properties that trust `ca` and, with `identity`, present its certificate.

    `ssl.key.password` is among them when the key is encrypted; `security.protocol`
    is not (SSL or SASL_SSL is the caller's choice).
    """
    properties = {"ssl.ca.location": str(ca)}
    if identity is not None:
        properties |= {
            "ssl.certificate.location": str(identity.certificate),
            "ssl.key.location": str(identity.key),
        }
        if identity.key_password is not None:
            properties["ssl.key.password"] = identity.key_password
    return properties


def _authority(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(name)
    certificate = (
        _builder(subject, subject, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def _identity(
    directory: Path,
    name: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    *,
    server: bool,
    key_password: str | None,
) -> Identity:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _builder(_name(name), ca.subject, key).add_extension(
        x509.BasicConstraints(ca=False, path_length=None), critical=True
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(LOOPBACK)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    # A broker is also a client of its own inter-broker listener, which demands
    # a certificate; Java checks the extended key usage of both sides.
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
    builder = builder.add_extension(
        x509.ExtendedKeyUsage([*usages, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
    )
    certificate = builder.sign(ca_key, hashes.SHA256())
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(key_password.encode())
        if key_password is not None
        else serialization.NoEncryption()
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    return Identity(
        certificate=_write(directory / f"{name}.crt", _pem(certificate) + _pem(ca)),
        key=_write(directory / f"{name}.key", key_pem),
        key_password=key_password,
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + VALIDITY)
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _password() -> str:
    return secrets.token_urlsafe(_PASSWORD_BYTES)


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    # Private keys among them: readable by this user only, as a key file should be.
    path.chmod(0o600)
    return path
