"""Delivery: producing an event's records, and making its offset durable once they are settled.

The two guarantees differ only here.

At-least-once: a record is settled when the broker acknowledges it; done
offsets are stored for the consumer's auto-commit, and committed synchronously
on revocation and shutdown. A record whose delivery failed is produced again
(`take_redo`), record by record: a rewind would also repeat every record
delivered after it.

Exactly-once: a record is settled as soon as it is produced into the open
transaction (see worker.transactions). A failure aborts the transaction and
takes its work with it: `checkpoint` then reports the loss and the loop
rewinds to `durable_positions`.

Both keep the registry of records a topic refused (worker.rejections): a
suspect is produced alone, and `send` returns why a record was refused alone,
so that its event is dead-lettered instead.
"""

from __future__ import annotations

import abc
import functools
import logging
from collections.abc import Callable, Collection, Mapping

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from worker import errors
from worker.inflight import OutRecord, RecordKind
from worker.kafka.clients import (
    DeliveryFailure,
    ProducerFailed,
    delivery_failure,
    producer_failed,
    serve,
    translate,
)
from worker.metrics import Health, Metrics
from worker.offsets import OffsetTracker, Partition
from worker.rejections import RefusedRecords
from worker.transactions import TransactionalCommitter

log = logging.getLogger(__name__)

# While the producer's local queue is full, how long one wait for delivery reports lasts.
QUEUE_FULL_WAIT_S = 0.02
# Longest wait for the producer's queue to drain around a record produced alone
# (see worker.rejections): milliseconds on a healthy broker.
ALONE_FLUSH_TIMEOUT_S = 2.0


class Delivery(abc.ABC):
    """Produces records for in-flight events and acknowledges their offsets once settled."""

    def __init__(
        self, consumer: Consumer, tracker: OffsetTracker, metrics: Metrics, health: Health
    ) -> None:
        self._consumer = consumer
        self._tracker = tracker
        self._metrics = metrics
        self._health = health
        self._refused = RefusedRecords()
        self.failure: errors.ZscError | None = None
        """An error the worker must stop for (a topic refusing records for good, the
        idempotent producer failing)."""

    @property
    @abc.abstractmethod
    def producer(self) -> Producer:
        """The producer of outputs and dead-letter records, now."""

    @property
    @abc.abstractmethod
    def producing(self) -> bool:
        """Whether records may be produced now; not while a transaction ends."""

    @abc.abstractmethod
    def start(self) -> None:
        """Prepare the producer before the first record."""

    @abc.abstractmethod
    def checkpoint(self, force: bool = False) -> bool:
        """Make done offsets durable when due (now if `force`); False if work was lost and the
        loop must rewind every partition to `durable_positions`."""

    @abc.abstractmethod
    def revoked(self, partitions: list[TopicPartition]) -> bool:
        """Partitions are leaving: make what is done of them durable now; False if work was
        lost."""

    @abc.abstractmethod
    def lost(self) -> bool:
        """Partitions were lost: nothing not yet durable may become so; False if work was
        lost."""

    @abc.abstractmethod
    def durable_positions(self) -> Mapping[Partition, int]:
        """Per partition, the position this worker made durable last (where a rewind restarts)."""

    @abc.abstractmethod
    def take_redo(self) -> list[OutRecord]:
        """Records to produce once more (their delivery failed), if the guarantee redoes them
        one by one."""

    @property
    @abc.abstractmethod
    def redo_waiting(self) -> bool:
        """Whether records wait to be produced again (see `take_redo`)."""

    def poll(self) -> None:
        """Serve delivery reports."""
        self._serve(self.producer.poll, 0)

    def flush(self, timeout_s: float) -> int:
        """Wait for what was produced to be delivered; returns how many records are left."""
        return self._serve(self.producer.flush, timeout_s)

    def send(self, record: OutRecord) -> str | None:
        """Produce an event's record: alone if its topic refused it in company.

        Returns why its topic refused it alone, for good: it is not produced,
        and its event is to be dead-lettered instead.
        """
        if (refusal := self._refused.condemnation(record.id)) is not None:
            return refusal
        if not self._refused.suspected(record.id):
            return self._produce(record)
        record.alone = self.flush(ALONE_FLUSH_TIMEOUT_S) == 0
        refusal = self._produce(record)
        if self.flush(ALONE_FLUSH_TIMEOUT_S) != 0:
            record.alone = False  # still queued: what is produced next may join it
        return refusal

    def forget(self, partitions: Collection[Partition]) -> None:
        """Partitions this worker no longer owns: drop what is known of their records."""
        self._refused.forget(partitions)

    def prune(self) -> None:
        """Forget refusals of records whose inputs are durable."""
        if self._refused:
            self._refused.prune(self.durable_positions())

    def _produce(self, record: OutRecord) -> str | None:
        producer = self.producer
        while True:
            try:
                producer.produce(
                    record.topic,
                    record.value,
                    record.event.key,
                    headers=record.headers,
                    on_delivery=functools.partial(self._report, record),
                )
                break
            except BufferError:
                # The local queue is full: serve delivery reports until it has room.
                self._serve(producer.poll, QUEUE_FULL_WAIT_S)
            except KafkaException as exc:
                error = exc.args[0]
                if delivery_failure(error) is DeliveryFailure.REJECTED:
                    # Over the producer's own message.max.bytes: refused alone, at once.
                    return str(error.str())
                if producer_failed(error):
                    self._producer_failed(error)
                else:
                    self._cannot_produce(exc, record)
                return None
        self._produced(record)
        return None

    def _report(self, record: OutRecord, error: KafkaError | None, _message: Message) -> None:
        """A delivery report: settle the record, or decide what its failure means."""
        if error is None:
            self._refused.delivered(record.id)
            self._health.broker_up()
            event = record.event
            if record.kind is RecordKind.OUTPUT:
                self._metrics.classified.labels(event.topic).inc()
                self._metrics.observe_end_to_end(event.timestamp_ms)
            elif record.rejection is not None:
                self._metrics.dead_lettered.labels(event.topic, record.rejection.error_type).inc()
            self._delivered(record)
            return
        if producer_failed(error):
            self._producer_failed(error)
            return
        failure = delivery_failure(error)
        if failure is DeliveryFailure.FATAL:
            self.failure = errors.ProduceError(
                f"topic {record.topic!r} refused a record: {error.str()}", code=error.code()
            )
            return
        if failure is DeliveryFailure.REJECTED:
            self._refused.refused(record.id, record.alone, error.str())
        self._undelivered(record, error)

    def _serve(self, call: Callable[[float], int], timeout_s: float) -> int:
        """Serve the producer's callbacks with `call` (its poll or flush); returns how many
        records are left. The producer failing for good meanwhile goes to `_producer_failed`."""
        try:
            return serve(functools.partial(call, timeout_s))
        except ProducerFailed as failed:
            self._producer_failed(failed.error)
            return len(self.producer)

    def _settle(self, record: OutRecord) -> None:
        event = record.event
        if event.settle():
            self._tracker.ack(event.tp, event.offset, event.epoch)

    @abc.abstractmethod
    def _produced(self, record: OutRecord) -> None:
        """The record is in the producer's queue."""

    @abc.abstractmethod
    def _delivered(self, record: OutRecord) -> None:
        """The broker acknowledged the record."""

    @abc.abstractmethod
    def _undelivered(self, record: OutRecord, error: KafkaError) -> None:
        """The record was not delivered, and may be retried."""

    @abc.abstractmethod
    def _cannot_produce(self, exc: KafkaException, record: OutRecord) -> None:
        """The producer refused to take the record (and has not failed for good)."""

    @abc.abstractmethod
    def _producer_failed(self, error: KafkaError) -> None:
        """The producer failed for good: it takes no more records."""


class AtLeastOnce(Delivery):
    """Settled on acknowledgement; done offsets stored for auto-commit; failures produced again."""

    def __init__(
        self,
        consumer: Consumer,
        producer: Producer,
        tracker: OffsetTracker,
        metrics: Metrics,
        health: Health,
        flush_timeout_s: float,
    ) -> None:
        super().__init__(consumer, tracker, metrics, health)
        self._producer = producer
        self._flush_timeout_s = flush_timeout_s
        self._redo: list[OutRecord] = []

    @property
    def producer(self) -> Producer:
        """The idempotent producer, for the whole run."""
        return self._producer

    @property
    def producing(self) -> bool:
        """Always: there are no transactions to wait for."""
        return True

    def start(self) -> None:
        """Nothing to prepare."""

    def checkpoint(self, force: bool = False) -> bool:
        """Store what advanced; with `force`, also commit it synchronously."""
        self._store()
        if force:
            self._commit(None)
        return True

    def revoked(self, partitions: list[TopicPartition]) -> bool:
        """Deliver what was produced, then commit the revoked partitions' done offsets."""
        self.flush(self._flush_timeout_s)
        self._store()
        self._commit({(tp.topic, tp.partition) for tp in partitions})
        return True

    def lost(self) -> bool:
        """Nothing to undo: lost partitions' offsets are simply not committed."""
        return True

    def durable_positions(self) -> Mapping[Partition, int]:
        """The delivered positions: nothing delivered is ever undone here."""
        positions = self._tracker.positions(self._consumer.assignment())
        return {(tp.topic, tp.partition): tp.offset for tp in positions}

    @property
    def redo_waiting(self) -> bool:
        """Whether records whose delivery failed wait to be produced again."""
        return bool(self._redo)

    def take_redo(self) -> list[OutRecord]:
        """The records whose delivery failed, of events still owned here."""
        redo, self._redo = self._redo, []
        return [r for r in redo if self._tracker.is_current(r.event.tp, r.event.epoch)]

    def _produced(self, record: OutRecord) -> None:
        """Nothing yet: it counts once delivered."""

    def _delivered(self, record: OutRecord) -> None:
        self._settle(record)

    def _undelivered(self, record: OutRecord, error: KafkaError) -> None:
        if self._tracker.is_current(record.event.tp, record.event.epoch):
            log.info("record for %s to be produced again: %s", record.event.source, error.str())
            self._redo.append(record)

    def _cannot_produce(self, exc: KafkaException, record: OutRecord) -> None:
        raise translate(exc, f"cannot produce to {record.topic!r}") from None

    def _producer_failed(self, error: KafkaError) -> None:
        """The worker stops (with the first error seen): an idempotent producer that
        failed cannot keep its order."""
        if self.failure is None:
            self.failure = errors.KafkaError(
                f"the producer failed: {error.str()}", code=error.code(), retriable=False
            )

    def _store(self) -> None:
        committable = self._tracker.take_committable()
        if not committable:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in committable.items()]
        try:
            self._consumer.store_offsets(offsets=offsets)
        except KafkaException as exc:
            # A partition revoked meanwhile: its new owner starts from the last commit.
            log.info("%s", translate(exc, "storing offsets"))

    def _commit(self, wanted: set[Partition] | None) -> None:
        offsets = self._tracker.positions(self._consumer.assignment(), wanted)
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("%s", translate(exc, "committing offsets"))


class ExactlyOnce(Delivery):
    """Settled once produced into the open transaction; a failure loses the transaction's work.

    Records produced after the transaction was given up are dropped: they
    belong to the work the coming rewind redoes.
    """

    def __init__(
        self,
        consumer: Consumer,
        make_producer: Callable[[], Producer],
        tracker: OffsetTracker,
        metrics: Metrics,
        health: Health,
    ) -> None:
        super().__init__(consumer, tracker, metrics, health)
        self._transactions = TransactionalCommitter(consumer, make_producer, tracker)
        self._work_lost = False

    @property
    def producer(self) -> Producer:
        """The transactional producer, now: replaced when it fails for good."""
        return self._transactions.producer

    @property
    def producing(self) -> bool:
        """Whether a transaction is open for records."""
        return self._transactions.producing and not self._work_lost

    def start(self) -> None:
        """Fence earlier instances of this transactional id and open the first transaction."""
        self._transactions.start()

    def checkpoint(self, force: bool = False) -> bool:
        """Commit the open transaction when due; False once its work was given up."""
        if self._work_lost:
            self._work_lost = False
            return False
        return self._transactions.checkpoint(force)

    def revoked(self, partitions: list[TopicPartition]) -> bool:
        """Commit now, so the revoked partitions' next owner starts after our outputs."""
        return self._transactions.revoked(partitions)

    def lost(self) -> bool:
        """Abort the open transaction: it may hold outputs of partitions owned elsewhere now."""
        return self._transactions.lost()

    def forget(self, partitions: Collection[Partition]) -> None:
        """Partitions no longer owned: neither their refusals nor their commits count."""
        super().forget(partitions)
        self._transactions.forget(partitions)

    def durable_positions(self) -> Mapping[Partition, int]:
        """The positions committed by this worker since it was assigned each partition."""
        return self._transactions.durable_positions()

    @property
    def redo_waiting(self) -> bool:
        """Never: a failed record's transaction aborts, and the rewind redoes it."""
        return False

    def take_redo(self) -> list[OutRecord]:
        """None: a failed record's transaction aborts, and the rewind redoes it."""
        return []

    def send(self, record: OutRecord) -> str | None:
        """Produce into the open transaction; nothing once its work was given up, or once
        the producer failed (the rewind after its replacement redoes the event)."""
        if self._work_lost or not self._transactions.producing:
            return None
        return super().send(record)

    def _produced(self, record: OutRecord) -> None:
        self._settle(record)

    def _delivered(self, record: OutRecord) -> None:
        """Nothing more: it counted once produced."""

    def _undelivered(self, record: OutRecord, error: KafkaError) -> None:
        if not self._tracker.is_current(record.event.tp, record.event.epoch):
            return  # of work already given up (an abort purges what it left queued)
        # Its transaction aborts at the next checkpoint; the rewind redoes it.
        self._transactions.record_failed()
        log.info("record for %s lost with its transaction: %s", record.event.source, error.str())

    def _cannot_produce(self, exc: KafkaException, record: OutRecord) -> None:
        if exc.args[0].code() != KafkaError._STATE:
            raise translate(exc, f"cannot produce to {record.topic!r}") from None
        # A transaction that must abort (a record of it was refused) takes no
        # more records: give up its work.
        self._transactions.abandon()
        self._work_lost = True

    def _producer_failed(self, error: KafkaError) -> None:
        """Replaced at the next checkpoint, which reports its transaction's work lost."""
        self._transactions.producer_failed(error)
