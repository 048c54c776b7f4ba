"""The brokers themselves: what the worker's integration tests and the demo take for granted.

Run against the session's broker (whichever conftest picked) and, for the
demo's sake, against a Tansu started here even when the session uses Kafka.
"""

from __future__ import annotations

import socket
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from worker.embedded import tansu as tansu_module
from worker.embedded.tansu import RECOMMENDED_SESSION_TIMEOUT_MS, TansuBroker
from worker.errors import BrokerError

if TYPE_CHECKING:
    from tests.integration.conftest import NameFactory, TopicFactory

RECORDS = 100
PARTITIONS = 3
DEADLINE_S = 60.0
"""Per wait. A group join takes ~3 s on Tansu, a cooperative rebalance ~11 s; this is the slack."""

POLL_S = 0.2


def consumer_config(bootstrap_servers: str, group_id: str, **overrides: Any) -> dict[str, Any]:
    """A test consumer reading a fresh group from the beginning, committing by hand."""
    return {
        "bootstrap.servers": bootstrap_servers,
        "group.id": group_id,
        # A fresh group has no committed offsets; the records were produced before it joined.
        "auto.offset.reset": "earliest",
        # The tests commit explicitly and then check what was committed.
        "enable.auto.commit": False,
        # Tansu's group join waits about half of it; the default 45 s would cost 22 s per join.
        "session.timeout.ms": RECOMMENDED_SESSION_TIMEOUT_MS,
        **overrides,
    }


def consume(consumer: Consumer, count: int, deadline_s: float = DEADLINE_S) -> list[Message]:
    """Poll until `count` records arrived; fail on a consumer error or at the deadline."""
    messages: list[Message] = []
    deadline = time.monotonic() + deadline_s
    while len(messages) < count:
        assert time.monotonic() < deadline, f"{len(messages)} of {count} records in {deadline_s} s"
        message = consumer.poll(POLL_S)
        if message is None:
            continue
        error = message.error()
        if error is not None and error.code() != KafkaError._PARTITION_EOF:
            raise AssertionError(f"consumer error: {error}")
        if error is None:
            messages.append(message)
    return messages


def number(message: Message) -> int:
    """The record number `produce_idempotently` wrote as the value."""
    value = message.value()
    assert value is not None
    return int(value)


def partition(message: Message) -> int:
    """The partition of a delivered or consumed record (never None for those)."""
    assigned = message.partition()
    assert assigned is not None
    return assigned


def produce_idempotently(bootstrap_servers: str, topic: str, count: int) -> list[Message]:
    """Produce `count` keyed records with the worker's producer guarantee; return their reports."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap_servers,
            # What the worker uses: retries cannot duplicate or reorder records.
            "enable.idempotence": True,
        }
    )
    reports: list[Message] = []
    for index in range(count):
        producer.produce(
            topic,
            key=f"key-{index}",
            value=f"{index}",
            on_delivery=lambda error, message: reports.append(message),
        )
    assert producer.flush(DEADLINE_S) == 0, "every record delivered"
    assert [m.error() for m in reports if m.error() is not None] == []
    return reports


def test_idempotent_records_reach_a_group_that_commits_them(
    bootstrap_servers: str, create_topics: TopicFactory, unique_name: NameFactory
) -> None:
    (topic,) = create_topics([unique_name("records")], partitions=PARTITIONS)
    reports = produce_idempotently(bootstrap_servers, topic, RECORDS)
    assert len(Counter(partition(m) for m in reports)) == PARTITIONS, "keys spread"

    group = unique_name("group")
    consumer = Consumer(consumer_config(bootstrap_servers, group))
    try:
        consumer.subscribe([topic])
        messages = consume(consumer, RECORDS)
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()

    assert sorted(number(m) for m in messages) == list(range(RECORDS))
    by_partition: dict[int, list[int]] = defaultdict(list)
    for message in messages:
        by_partition[partition(message)].append(number(message))
    for values in by_partition.values():
        assert values == sorted(values), "each partition keeps the produce order"

    # Read the commits back from the broker through another client.
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    committed = committed_offsets(admin, group, topic)
    produced = Counter(partition(m) for m in reports)
    assert committed == {index: produced[index] for index in range(PARTITIONS)}


def committed_offsets(admin: AdminClient, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition of `topic`, as the broker reports them."""
    request = ConsumerGroupTopicPartitions(
        group, [TopicPartition(topic, index) for index in range(PARTITIONS)]
    )
    (future,) = admin.list_consumer_group_offsets([request]).values()
    result = future.result(DEADLINE_S)
    return {tp.partition: tp.offset for tp in result.topic_partitions}


def test_read_committed_hides_an_aborted_transaction(
    exactly_once_bootstrap_servers: str, create_topics: TopicFactory, unique_name: NameFactory
) -> None:
    bootstrap_servers = exactly_once_bootstrap_servers
    (topic,) = create_topics([unique_name("txn")], partitions=1)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap_servers,
            # Makes the producer transactional; unique, so no other test's producer fences it.
            "transactional.id": unique_name("txn-id"),
        }
    )
    producer.init_transactions(DEADLINE_S)
    producer.begin_transaction()
    for _ in range(5):
        producer.produce(topic, value=b"aborted")
    producer.flush(DEADLINE_S)  # on the broker, so the abort has something to hide
    producer.abort_transaction(DEADLINE_S)
    producer.begin_transaction()
    for _ in range(3):
        producer.produce(topic, value=b"committed")
    producer.commit_transaction(DEADLINE_S)

    # One partition, aborted records first: once the committed ones have arrived,
    # any aborted record a reader would see has arrived too.
    # librdkafka's default is read_committed; both are spelled out because the
    # difference between them is what this test is about.
    committed_reader = Consumer(
        consumer_config(
            bootstrap_servers, unique_name("committed"), **{"isolation.level": "read_committed"}
        )
    )
    uncommitted_reader = Consumer(
        consumer_config(
            bootstrap_servers, unique_name("all"), **{"isolation.level": "read_uncommitted"}
        )
    )
    try:
        committed_reader.subscribe([topic])
        uncommitted_reader.subscribe([topic])
        assert [m.value() for m in consume(committed_reader, 3)] == [b"committed"] * 3
        everything = [m.value() for m in consume(uncommitted_reader, 8)]
        assert everything == [b"aborted"] * 5 + [b"committed"] * 3
    finally:
        committed_reader.close()
        uncommitted_reader.close()


@pytest.fixture(scope="module")
def tansu() -> Iterator[TansuBroker]:
    """A Tansu of this module's own, whatever broker the session uses: the demo runs on it."""
    started = time.monotonic()
    with TansuBroker() as broker:
        assert time.monotonic() - started < 5.0, "Tansu starts in well under a second"
        yield broker


def test_tansu_round_trip_through_a_group(
    tansu: TansuBroker, create_topics: TopicFactory, unique_name: NameFactory
) -> None:
    admin = AdminClient({"bootstrap.servers": tansu.bootstrap_servers})
    (topic,) = create_topics([unique_name("demo")], partitions=PARTITIONS, admin=admin)
    reports = produce_idempotently(tansu.bootstrap_servers, topic, RECORDS)

    group = unique_name("group")
    consumer = Consumer(consumer_config(tansu.bootstrap_servers, group))
    try:
        consumer.subscribe([topic])
        messages = consume(consumer, RECORDS)
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()

    assert sorted(number(m) for m in messages) == list(range(RECORDS))
    produced = Counter(partition(m) for m in reports)
    assert committed_offsets(admin, group, topic) == dict(produced)


def test_a_tansu_that_cannot_bind_its_port_raises_broker_error_with_its_log(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setattr(tansu_module, "free_loopback_ports", lambda count: [port])
        broker = TansuBroker()
        # Rust's error kind, from the log: the same on every platform, unlike strerror.
        with pytest.raises(BrokerError, match="AddrInUse"):
            broker.start()
    assert not broker.running
    with pytest.raises(BrokerError, match="not running"):
        _ = broker.bootstrap_servers


@pytest.mark.parametrize("broker", ["session", "tansu"])
def test_cooperative_sticky_moves_only_the_partitions_a_new_member_takes(
    broker: str,
    request: pytest.FixtureRequest,
    create_topics: TopicFactory,
    unique_name: NameFactory,
) -> None:
    if broker == "tansu":
        bootstrap_servers = request.getfixturevalue("tansu").bootstrap_servers
    else:
        bootstrap_servers = request.getfixturevalue("bootstrap_servers")
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    partitions = 4
    (topic,) = create_topics([unique_name("coop")], partitions=partitions, admin=admin)
    group = unique_name("group")
    # The incremental protocol: a new member takes partitions without the others
    # first giving up all of theirs (what the eager strategies do).
    cooperative = {"partition.assignment.strategy": "cooperative-sticky"}
    first = Consumer(consumer_config(bootstrap_servers, group, **cooperative))
    second = Consumer(consumer_config(bootstrap_servers, group, **cooperative))
    revoked: list[set[int]] = []
    try:
        first.subscribe(
            [topic], on_revoke=lambda _, lost: revoked.append({tp.partition for tp in lost})
        )
        wait_for(lambda: len(first.assignment()) == partitions, [first])
        second.subscribe([topic])

        def split() -> bool:
            mine = {tp.partition for tp in first.assignment()}
            theirs = {tp.partition for tp in second.assignment()}
            return bool(mine and theirs) and not mine & theirs and len(mine | theirs) == partitions

        wait_for(split, [first, second])
        kept = {tp.partition for tp in first.assignment()}
        assert revoked, "the first member gave up some partitions"
        assert all(lost.isdisjoint(kept) for lost in revoked), "it kept the others throughout"
    finally:
        second.close()
        first.close()


def wait_for(
    condition: Callable[[], bool], consumers: list[Consumer], deadline_s: float = DEADLINE_S
) -> None:
    """Keep the consumers polling (group protocol runs in poll) until `condition()` holds."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, f"not reached in {deadline_s} s"
        for consumer in consumers:
            message = consumer.poll(POLL_S / len(consumers))
            if message is not None and message.error() is not None:
                raise AssertionError(f"consumer error: {message.error()}")
