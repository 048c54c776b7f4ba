"""Consumer and producer construction: every non-default librdkafka setting says why."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from pydantic import SecretStr

from config.settings import PropertyValue, Settings
from worker import errors

# See producer_config: how long a dead worker's transaction can block readers.
TRANSACTION_TIMEOUT_MS = 15_000

RebalanceCallback = Callable[[Consumer, list[TopicPartition]], None]

# librdkafka's own log lines go through Python logging, not straight to stderr,
# so JSON log formatting and levels apply to them too.
LIBRDKAFKA_LOG = logging.getLogger("librdkafka")


def consumer_config(settings: Settings) -> dict[str, Any]:
    """The consumer's librdkafka properties; the user's `kafka.consumer` entries win."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka.bootstrap_servers,
        "logger": LIBRDKAFKA_LOG,
        "group.id": settings.kafka.group_id,
        # Offsets are stored by the worker once an event's output is acknowledged,
        # never by librdkafka when the record is handed out.
        "enable.auto.offset.store": False,
        # Auto-commit then commits only what was stored; shutdown and revocation
        # commit synchronously on top of it.
        "enable.auto.commit": True,
        # A new group classifies the topic from its start rather than skipping
        # whatever was produced before the first worker joined.
        "auto.offset.reset": "earliest",
        # A rebalance only moves the partitions that change owner, so workers
        # joining or leaving do not stall the others' in-flight batches.
        "partition.assignment.strategy": "cooperative-sticky",
    }
    if settings.processing_guarantee == "exactly-once":
        # Offsets are committed inside the producer's transactions instead.
        config["enable.auto.commit"] = False
        # Outputs of aborted transactions must never reach the worker either,
        # when it reads a topic that another transactional worker writes.
        config["isolation.level"] = "read_committed"
    config.update(_plain(settings.kafka.properties))
    config.update(_plain(settings.kafka.consumer))
    return config


def producer_config(settings: Settings) -> dict[str, Any]:
    """The producer's librdkafka properties; the user's `kafka.producer` entries win."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka.bootstrap_servers,
        "logger": LIBRDKAFKA_LOG,
        # Retries can neither duplicate nor reorder outputs within a partition.
        "enable.idempotence": True,
        # A batch's outputs are produced together; a few ms lets them share requests.
        "linger.ms": 5,
    }
    if settings.processing_guarantee == "exactly-once":
        instance = settings.kafka.consumer.get("group.instance.id")
        config["transactional.id"] = transactional_id(
            settings.kafka.group_id, str(instance) if instance else None
        )
        # A killed worker's open transaction holds back read_committed readers of
        # its output partitions until the broker times it out: keep that short.
        # Transactions here last one batch's produce and commit, well under it.
        config["transaction.timeout.ms"] = TRANSACTION_TIMEOUT_MS
    config.update(_plain(settings.kafka.properties))
    config.update(_plain(settings.kafka.producer))
    return config


def _plain(properties: Mapping[str, PropertyValue]) -> dict[str, Any]:
    """Secrets revealed here only, at the door of librdkafka."""
    return {
        name: value.get_secret_value() if isinstance(value, SecretStr) else value
        for name, value in properties.items()
    }


def make_consumer(
    settings: Settings,
    on_assign: RebalanceCallback,
    on_revoke: RebalanceCallback,
    on_lost: RebalanceCallback,
    topics: list[str],
) -> Consumer:
    """A consumer subscribed to the input topics with the worker's rebalance callbacks."""
    try:
        consumer = Consumer(consumer_config(settings))
        consumer.subscribe(topics, on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
    except KafkaException as exc:
        raise translate(exc, "cannot create the consumer") from None
    return consumer


def make_producer(settings: Settings) -> Producer:
    """The idempotent producer of outputs and dead-letter records."""
    try:
        return Producer(producer_config(settings))
    except KafkaException as exc:
        raise translate(exc, "cannot create the producer") from None


def transactional_id(group_id: str, instance_id: str | None) -> str:
    """A transactional id unique to this worker, stable across restarts when it can be.

    With static membership (`group.instance.id`) the id is stable, so a restarted
    instance fences its predecessor and aborts its open transaction at once;
    otherwise host and process make it unique, and the broker aborts a dead
    instance's transaction after `transaction.timeout.ms`.
    """
    suffix = instance_id or f"{socket.gethostname()}-{os.getpid()}"
    return f"zsc-worker-{group_id}-{suffix}"


def translate(exc: KafkaException, doing: str) -> errors.KafkaError:
    """A confluent-kafka exception as the worker's own error, keeping the Kafka error code."""
    error = exc.args[0] if exc.args else None
    if isinstance(error, KafkaError):
        return errors.KafkaError(
            f"{doing}: {error.str()}", code=error.code(), retriable=error.retriable()
        )
    return errors.KafkaError(f"{doing}: {exc}")
