"""The schema registry: which errors are the record's, which an outage, and the outage's course."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka.schema_registry.error import SchemaRegistryError

from config.registry import SchemaRegistrySettings
from config.topics import TopicSettings
from worker import serde
from worker.embedded.base import LOOPBACK, free_loopback_ports
from worker.errors import RegistryUnavailable
from worker.formats import Formats
from worker.metrics import Health
from worker.registry import (
    FIRST_RETRY_S,
    LOG_INTERVAL_S,
    MAX_RETRY_S,
    RegistryStatus,
    make_registry_client,
    schema_refused,
    unknown_schema,
)
from worker.routing import Route

AVRO_ROUTE = Route.from_settings(
    TopicSettings(input="posts", output="out", labels=["a"], format="avro")
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def not_found() -> SchemaRegistryError:
    return SchemaRegistryError(404, 40403, "No content with id 7")


def refused() -> SchemaRegistryError:
    return SchemaRegistryError(409, 409, "incompatible")


def server_error() -> SchemaRegistryError:
    return SchemaRegistryError(503, -1, "unavailable")


def test_registry_errors_are_told_apart() -> None:
    assert unknown_schema(not_found()) and not schema_refused(not_found())
    assert schema_refused(refused()) and schema_refused(SchemaRegistryError(422, 42201, "bad"))
    for outage in (server_error(), SchemaRegistryError(401, 401, "login"), OSError("refused")):
        assert not unknown_schema(outage) and not schema_refused(outage)


def failing(exc: BaseException):  # type: ignore[no-untyped-def]
    def request() -> None:
        raise exc

    return request


def test_an_outage_makes_the_worker_unready_backs_off_and_ends_when_the_registry_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    health, clock = Health(), Clock()
    health.model_loaded.set()
    health.group_joined.set()
    status = RegistryStatus(health, clock)
    waits = []
    with caplog.at_level(logging.INFO, logger="worker.registry"):
        for _ in range(8):
            assert status.retry_due()
            with pytest.raises(RegistryUnavailable):
                status.call("schema 7", failing(server_error()), unknown_schema)
            start = clock.now
            while not status.retry_due():
                clock.now += 0.125
            waits.append(clock.now - start)
            assert not health.ready and status.down
        assert waits[0] == FIRST_RETRY_S and waits[-1] == MAX_RETRY_S
        assert waits == sorted(waits)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, "one warning a minute, not one a retry"
        clock.now += LOG_INTERVAL_S
        with pytest.raises(RegistryUnavailable):
            status.call("schema 7", failing(server_error()), unknown_schema)
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2
        clock.now += MAX_RETRY_S
        assert status.call("schema 7", lambda: "the schema", unknown_schema) == "the schema"
    assert health.ready and not status.down
    assert "answers again" in caplog.records[-1].getMessage()


def test_between_the_retries_of_an_outage_a_call_fails_at_once_asking_nothing() -> None:
    clock = Clock()
    status = RegistryStatus(Health(), clock)
    with pytest.raises(RegistryUnavailable):
        status.call("schema 7", failing(server_error()), unknown_schema)
    asked: list[str] = []
    with pytest.raises(RegistryUnavailable):
        status.call("schema 8", lambda: asked.append("schema 8"), unknown_schema)
    assert asked == [], "a registry that timed out would hold the loop up once per call"
    clock.now += FIRST_RETRY_S
    assert status.call("schema 8", lambda: "the schema", unknown_schema) == "the schema"


def test_an_error_the_caller_handles_is_raised_as_it_is_and_is_no_outage() -> None:
    health = Health()
    status = RegistryStatus(health, Clock())
    with pytest.raises(SchemaRegistryError):
        status.call("schema 7", failing(not_found()), unknown_schema)
    assert not status.down and health.registry_reachable.is_set()
    with pytest.raises(RegistryUnavailable):
        status.call("registering out-value", failing(not_found()), schema_refused)


def test_a_registry_nobody_listens_for_is_an_outage_not_bad_input() -> None:
    [port] = free_loopback_ports(1)
    client = make_registry_client(SchemaRegistrySettings(url=f"http://{LOOPBACK}:{port}"))
    formats = Formats(client, RegistryStatus(Health(), Clock()))
    with pytest.raises(RegistryUnavailable):
        formats.decode(b"\x00\x00\x00\x00\x07\x02", None, AVRO_ROUTE)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, serde.EMPTY_VALUE),
        (b'{"text": "plain json"}', serde.INVALID_WIRE_FORMAT),
        (b"\x00\x00\x01", serde.INVALID_WIRE_FORMAT),
        (b"\x01" + bytes(16), serde.INVALID_WIRE_FORMAT),
    ],
)
def test_a_record_not_in_the_wire_format_is_rejected_without_asking_the_registry(
    value: bytes | None, reason: str
) -> None:
    [port] = free_loopback_ports(1)
    client = make_registry_client(SchemaRegistrySettings(url=f"http://{LOOPBACK}:{port}"))
    formats = Formats(client, RegistryStatus(Health(), Clock()))
    rejection = formats.decode(value, None, AVRO_ROUTE)
    assert isinstance(rejection, serde.Rejection) and rejection.error_type == reason


def test_the_client_gets_short_timeouts_no_retries_of_its_own_and_the_secret() -> None:
    settings = SchemaRegistrySettings.model_validate(
        {
            "url": "https://registry:8081",
            "basic_auth_user_info": "user:s3cret",
            "ssl.key.password": "k3y",
            "ssl.ca.location": "/etc/ca.pem",
            "bearer.auth.token": "t0ken",
        }
    )
    shown = repr(settings)
    assert "s3cret" not in shown and "k3y" not in shown and "t0ken" not in shown
    config = settings.client_config()
    assert config["basic.auth.user.info"] == "user:s3cret" and config["ssl.key.password"] == "k3y"
    assert config["max.retries"] == 0 and config["timeout"] == 2.0
    assert config["ssl.ca.location"] == "/etc/ca.pem" and config["bearer.auth.token"] == "t0ken"
    make_registry_client(SchemaRegistrySettings(url="http://registry:8081"))
