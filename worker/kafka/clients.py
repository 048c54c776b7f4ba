"""Consumer and producer construction: every non-default librdkafka setting says why."""

from __future__ import annotations

import enum
import logging
import os
import socket
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from pydantic import SecretStr

from config.kafka import DEFAULT_SESSION_TIMEOUT_MS, KafkaSettings, PropertyValue
from config.settings import Settings
from worker import errors

# See producer_config: how long a dead worker's transaction can block readers.
# Kafka Streams' choice under exactly-once, for the same reason.
TRANSACTION_TIMEOUT_MS = 10_000

# See consumer_config: the most librdkafka prefetches ahead of the worker.
PREFETCH_KBYTES = 16_384
# See consumer_config: how often stored offsets are committed (at-least-once).
AUTO_COMMIT_INTERVAL_MS = 1_000

ErrorCallback = Callable[[KafkaError], None]

# Client errors that mean no broker can be reached: the worker is not ready.
# A single connection dropping (_TRANSPORT) is routine (idle connections are
# reaped, leaders move) and librdkafka reconnects; _ALL_BROKERS_DOWN follows
# when it was the last one. A refused login will not cure itself either, nor a
# failed TLS handshake (_SSL: the broker's certificate does not verify).
# Reporting them here, rather than as one more client error, also logs the
# reason once instead of at every reconnect, many times a second.
BROKER_UNREACHABLE = frozenset(
    {KafkaError._ALL_BROKERS_DOWN, KafkaError._AUTHENTICATION, KafkaError._SSL}
)
# OpenSSL's words for a fatal TLS alert from the broker: it refused the
# handshake, most often the worker's certificate. Under TLS 1.3 the client's
# side of the handshake is over before the broker checks the client's
# certificate, so librdkafka sees the alert only when it reads the first
# response, and reports it as _TRANSPORT, not _SSL. No other _TRANSPORT error
# carries these words: a dropped connection is no alert.
TLS_ALERT_RECEIVED = "SSL alert number"

# Delivery errors of one record (and the records batched with it, since the
# broker refuses a whole batch): retrying it unchanged cannot succeed.
RECORD_REJECTED = frozenset(
    {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_RECORD}
)
# Delivery errors that say nothing about the record: the broker was away or
# slow, or the record was purged with an aborted transaction. librdkafka marks
# most retriable errors itself; these local ones it does not.
DELIVERY_TRANSIENT = frozenset(
    {
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._PURGE_QUEUE,
        KafkaError._PURGE_INFLIGHT,
    }
)


# Errors of a producer that failed for good, besides those flagged fatal: a call
# refused because of the fatal error, and the delivery reports of the records of
# a fenced producer (a newer producer took its transactional id, or the
# coordinator bumped its epoch when its transaction timed out).
PRODUCER_FAILED = frozenset(
    {
        KafkaError._FATAL,
        KafkaError._FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.PRODUCER_FENCED,
    }
)


class DeliveryFailure(enum.Enum):
    """What a failed delivery means for the record."""

    REJECTED = "rejected"
    """Refused for good, maybe for a neighbour in its batch: retry it alone, then dead-letter."""
    TRANSIENT = "transient"
    """Not the record's fault: produce it again."""
    FATAL = "fatal"
    """The topic or the cluster refuses (authorization, unknown topic...): stop the worker."""


# librdkafka's own log lines go through Python logging, not straight to stderr,
# so JSON log formatting and levels apply to them too.
LIBRDKAFKA_LOG = logging.getLogger("librdkafka")
# librdkafka's `log_level` that passes only critical lines (syslog levels, 7 = debug).
SYSLOG_CRITICAL = 2


def consumer_config(settings: Settings, on_error: ErrorCallback | None = None) -> dict[str, Any]:
    """The consumer's librdkafka properties.

    The worker's own, then `kafka.properties`, then `kafka.consumer`, each
    winning over the one before; `on_error` gets the client's errors.
    """
    config: dict[str, Any] = {
        **_client_base(settings.kafka, on_error),
        "group.id": settings.kafka.group_id,
        # librdkafka prefetches up to 64 MiB by default, whatever the worker can
        # take; paused partitions stop fetching, but a slow model with a large
        # backlog would still hold that much. This bounds the read-ahead to
        # thousands of typical events, minutes of work for a CPU model and
        # seconds for a GPU one.
        "queued.max.messages.kbytes": PREFETCH_KBYTES,
        # Offsets are stored by the worker once an event's output is acknowledged,
        # never by librdkafka when the record is handed out.
        "enable.auto.offset.store": False,
        # Auto-commit then commits only what was stored; shutdown and revocation
        # commit synchronously on top of it.
        "enable.auto.commit": True,
        # A crash repeats the events since the last commit: a second's worth
        # rather than librdkafka's default five, for one small request a second.
        "auto.commit.interval.ms": AUTO_COMMIT_INTERVAL_MS,
        # A new group classifies the topic from its start rather than skipping
        # whatever was produced before the first worker joined.
        "auto.offset.reset": "earliest",
    }
    if settings.kafka.classic_group_protocol:
        # The new protocol (KIP-848) assigns on the broker and sets the session
        # timeout there; librdkafka refuses these two with it.
        config |= {
            # A rebalance only moves the partitions that change owner, so workers
            # joining or leaving do not stall the others' in-flight batches.
            "partition.assignment.strategy": "cooperative-sticky",
            # A killed worker (without static membership) stays in the group, its
            # partitions unread, until its session times out; so does every
            # rebalance meanwhile, a restarted worker's join included. librdkafka
            # heartbeats from a thread of its own, whatever the model is doing,
            # so only a dead process or a cut connection misses 10 s of them.
            # Kafka's default before 3.0; KIP-735 raised it to 45 s for flaky
            # links, at the cost of 45 s of stalled partitions after each crash.
            "session.timeout.ms": DEFAULT_SESSION_TIMEOUT_MS,
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


def producer_config(settings: Settings, on_error: ErrorCallback | None = None) -> dict[str, Any]:
    """The producer's librdkafka properties.

    The worker's own, then `kafka.properties`, then `kafka.producer`, each
    winning over the one before; `on_error` gets the client's errors.
    """
    config: dict[str, Any] = {
        **_client_base(settings.kafka, on_error),
        # Retries can neither duplicate nor reorder outputs within a partition.
        "enable.idempotence": True,
        # A batch's outputs are produced together; a few ms lets them share requests.
        "linger.ms": 5,
    }
    if settings.processing_guarantee == "exactly-once":
        instance = consumer_config(settings).get("group.instance.id")
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
    """Secrets unwrapped for librdkafka, the one place that needs them in clear."""
    return {
        name: value.get_secret_value() if isinstance(value, SecretStr) else value
        for name, value in properties.items()
    }


class RebalanceListener(Protocol):
    """What the consumer tells of the assignment (worker.rebalance.Rebalance)."""

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None: ...
    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None: ...
    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None: ...


def subscribe(consumer: Consumer, topics: list[str], listener: RebalanceListener) -> None:
    """Subscribe to the input topics; the listener hears of every change of assignment."""
    try:
        consumer.subscribe(
            topics,
            on_assign=listener.on_assign,
            on_revoke=listener.on_revoke,
            on_lost=listener.on_lost,
        )
    except KafkaException as exc:
        raise translate(exc, "cannot subscribe") from None


def make_producer(settings: Settings, on_error: ErrorCallback | None = None) -> Producer:
    """The idempotent producer of outputs and dead-letter records."""
    try:
        return Producer(producer_config(settings, on_error))
    except KafkaException as exc:
        raise _creation_error(exc, "kafka.producer", "cannot create the producer") from None


def check_client_properties(settings: Settings) -> None:
    """Create and drop both clients, so librdkafka judges their properties before the model
    loads (minutes, for a download) rather than after. Nothing is sent to a broker."""
    consumer = make_consumer_unsubscribed(settings)
    consumer.close()
    make_producer(settings).flush(0)


def make_consumer_unsubscribed(
    settings: Settings, on_error: ErrorCallback | None = None
) -> Consumer:
    """A consumer of the worker's properties, subscribed to nothing yet."""
    try:
        return Consumer(consumer_config(settings, on_error))
    except KafkaException as exc:
        raise _creation_error(exc, "kafka.consumer", "cannot create the consumer") from None


def make_control_consumer(settings: Settings, on_error: ErrorCallback | None = None) -> Consumer:
    """A consumer of the control topic: assigned its partitions, never a group member.

    librdkafka wants a group id even so; this one is unique, and nothing is
    committed under it. `kafka.properties` (security, above all) apply; the
    group's own `kafka.consumer` properties do not.
    """
    config: dict[str, Any] = {
        **_client_base(settings.kafka, on_error),
        "group.id": f"{settings.kafka.group_id}.control.{uuid.uuid4().hex}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        # Tells when the reader has caught up with a partition's end.
        "enable.partition.eof": True,
        "isolation.level": "read_committed",
    }
    config.update(_plain(settings.kafka.properties))
    try:
        return Consumer(config)
    except KafkaException as exc:
        doing = "cannot create the control consumer"
        raise _creation_error(exc, "kafka.properties", doing) from None


def make_replay_consumer(
    kafka: KafkaSettings, group_id: str, on_error: ErrorCallback | None = None
) -> Consumer:
    """A consumer of a dead-letter topic for `zsc-worker replay`: assigned its partitions,
    never a group member, its position kept as the committed offsets of `group_id`.

    `kafka.properties` (security, above all) apply; the workers' own
    `kafka.consumer` properties (static membership, say) do not. `on_error` gets
    the client's errors.
    """
    config: dict[str, Any] = {
        **_command_client(kafka, on_error),
        "group.id": group_id,
        # The command commits once, after the deliveries, and never past a record
        # it could not produce.
        "enable.auto.commit": False,
        # A group that never committed starts at the topic's beginning, and so does
        # one whose position the topic's retention has deleted.
        "auto.offset.reset": "earliest",
        # Tells when a partition's end is reached even where its last offsets hold
        # no record to hand out (transaction markers, aborted or compacted records).
        "enable.partition.eof": True,
    }
    config.update(_plain(kafka.properties))
    try:
        return Consumer(config)
    except KafkaException as exc:
        raise _creation_error(exc, "kafka.properties", "cannot create the consumer") from None


def make_command_producer(kafka: KafkaSettings, on_error: ErrorCallback | None = None) -> Producer:
    """The producer of a one-shot command (`topics`, `replay`): idempotent, never
    transactional.

    `kafka.properties` apply; the workers' own `kafka.producer` properties
    (tuned for their outputs, transactional under exactly-once) do not.
    `on_error` gets the client's errors.
    """
    config: dict[str, Any] = {
        **_command_client(kafka, on_error),
        # A retry can neither duplicate nor reorder a record.
        "enable.idempotence": True,
        # The Java clients' partitioner: records of one key written by Kafka's own
        # tools and by these commands land in the same partition, in order.
        "partitioner": "murmur2_random",
    }
    config.update(_plain(kafka.properties))
    try:
        return Producer(config)
    except KafkaException as exc:
        raise _creation_error(exc, "kafka.properties", "cannot create the producer") from None


def _client_base(kafka: KafkaSettings, on_error: ErrorCallback | None) -> dict[str, Any]:
    """What every client of ours shares: where the brokers are, our logger, `on_error`."""
    config: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "logger": LIBRDKAFKA_LOG,
    }
    if on_error is not None:
        config["error_cb"] = on_error
    return config


def _command_client(kafka: KafkaSettings, on_error: ErrorCallback | None) -> dict[str, Any]:
    """What the clients of a one-shot command share: the base, and a log that leaves the
    client's errors to `on_error`."""
    # librdkafka logs a broker it cannot reach at every reconnect, many times a
    # second; the command reports the error itself (on_error), once.
    return {**_client_base(kafka, on_error), "log_level": SYSLOG_CRITICAL}


def _creation_error(exc: KafkaException, section: str, doing: str) -> errors.ZscError:
    """librdkafka refusing its properties (a value out of range, two that contradict each
    other) is a configuration error, with librdkafka's words naming the properties."""
    error = exc.args[0] if exc.args else None
    if isinstance(error, KafkaError) and error.code() == KafkaError._INVALID_ARG:
        return errors.ConfigError(f"{section} (or kafka.properties): {error.str()}")
    return translate(exc, doing)


def transactional_id(group_id: str, instance_id: str | None) -> str:
    """A transactional id unique to this worker, stable across restarts when it can be.

    With static membership (`group.instance.id`) the id is stable, so a restarted
    instance fences its predecessor and aborts its open transaction at once;
    otherwise host and process make it unique, and the broker aborts a dead
    instance's transaction after `transaction.timeout.ms`.
    """
    suffix = instance_id or f"{socket.gethostname()}-{os.getpid()}"
    return f"zsc-worker-{group_id}-{suffix}"


def broker_unreachable(error: KafkaError) -> bool:
    """Whether a client error means that no broker can be reached (or let us in)."""
    code = error.code()
    return code in BROKER_UNREACHABLE or (
        code == KafkaError._TRANSPORT and TLS_ALERT_RECEIVED in error.str()
    )


def delivery_failure(error: KafkaError) -> DeliveryFailure:
    """What a failed delivery (or a produce call's error) means for its record."""
    if error.fatal():
        return DeliveryFailure.FATAL
    if error.code() in RECORD_REJECTED:
        return DeliveryFailure.REJECTED
    if error.retriable() or error.code() in DELIVERY_TRANSIENT:
        return DeliveryFailure.TRANSIENT
    return DeliveryFailure.FATAL


class ProducerFailed(Exception):
    """The producer failed for good (librdkafka's fatal error): it takes no more records."""

    def __init__(self, error: KafkaError) -> None:
        super().__init__(error.str())
        self.error = error


def producer_failed(error: KafkaError) -> bool:
    """Whether an error says the producer failed for good: the fatal error itself, a call
    refused because of it, or a record refused because the producer was fenced."""
    return bool(error.fatal()) or error.code() in PRODUCER_FAILED


def serve(call: Callable[[], int]) -> int:
    """A producer call that serves callbacks (poll, flush), its fatal error as ProducerFailed.

    confluent-kafka raises the producer's fatal error out of the call that
    serves callbacks; it never reaches `error_cb`. A delivery report served
    after it in the same call finds it still pending, and the first C method
    the report calls fails with SystemError, chained to it (confluent-kafka
    2.16: that path of its `error_cb` does not set the exception aside, as its
    other callbacks do). Either way the producer is gone.
    """
    try:
        return call()
    except (KafkaException, SystemError) as exc:
        for raised in (exc, exc.__cause__):
            if isinstance(raised, KafkaException) and raised.args:
                error = raised.args[0]
                if isinstance(error, KafkaError) and producer_failed(error):
                    raise ProducerFailed(error) from exc
        raise


def translate(exc: KafkaException, doing: str) -> errors.KafkaError:
    """A confluent-kafka exception as the worker's own error, keeping the Kafka error code."""
    error = exc.args[0] if exc.args else None
    if isinstance(error, KafkaError):
        return errors.KafkaError(
            f"{doing}: {error.str()}", code=error.code(), retriable=error.retriable()
        )
    return errors.KafkaError(f"{doing}: {exc}")
