"""When and how processed offsets become committed: the two delivery guarantees.

At-least-once: an offset counts as done when the broker acknowledged its
output; done offsets are stored and committed by the consumer.

Exactly-once: outputs and offsets go into one Kafka transaction. Outputs are
produced in the input order of each partition, so at any moment the records
of the open transaction are exactly those of the offsets below the positions
it will commit; an offset counts as done as soon as its output is produced.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from worker.kafka.clients import translate
from worker.offsets import OffsetTracker

log = logging.getLogger(__name__)

# A transaction is committed at most this often: each commit costs a round trip
# to the coordinator, and read_committed readers see outputs only once it lands.
TRANSACTION_INTERVAL_S = 0.1
# Bound on one transactional call; a broker that stays away longer is an outage.
TRANSACTION_TIMEOUT_S = 30.0


class Checkpointer(Protocol):
    """The delivery guarantee's part of the loop."""

    ack_on_produce: bool
    """True when producing an output is enough for its offset to be done."""

    def start(self) -> None:
        """Prepare the producer (transactions) before the first record."""
        ...

    def checkpoint(self, force: bool = False) -> bool:
        """Make done offsets durable when due (now if `force`); False if work was lost.

        Returns False when the transaction had to be aborted: the caller rewinds
        every partition to its committed offset.
        """
        ...

    def revoked(self, partitions: list[TopicPartition]) -> None:
        """Partitions are leaving: make what is done of them durable now."""
        ...

    def lost(self) -> bool:
        """Partitions were lost: nothing not yet durable may become so.

        True when that discarded the undurable work of the remaining partitions
        too, which the caller must then rewind.
        """
        ...


def _positions(
    tracker: OffsetTracker, assignment: list[TopicPartition], wanted: set[tuple[str, int]] | None
) -> list[TopicPartition]:
    offsets = []
    for tp in assignment:
        key = (tp.topic, tp.partition)
        position = tracker.position(key)
        if position is not None and (wanted is None or key in wanted):
            offsets.append(TopicPartition(tp.topic, tp.partition, position))
    return offsets


class OffsetCommitter:
    """At-least-once: store done offsets for auto-commit; commit synchronously when asked."""

    ack_on_produce = False

    def __init__(
        self, consumer: Consumer, producer: Producer, tracker: OffsetTracker, flush_timeout_s: float
    ) -> None:
        self._consumer = consumer
        self._producer = producer
        self._tracker = tracker
        self._flush_timeout_s = flush_timeout_s

    def start(self) -> None:
        """Nothing to prepare."""

    def checkpoint(self, force: bool = False) -> bool:
        """Store what advanced; with `force`, also commit it synchronously."""
        self._store()
        if force:
            self._commit(None)
        return True

    def revoked(self, partitions: list[TopicPartition]) -> None:
        """Deliver what was produced, then commit the revoked partitions' done offsets."""
        self._producer.flush(self._flush_timeout_s)
        self._store()
        self._commit({(tp.topic, tp.partition) for tp in partitions})

    def lost(self) -> bool:
        """Nothing to undo: lost partitions' offsets are simply not committed."""
        return False

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

    def _commit(self, wanted: set[tuple[str, int]] | None) -> None:
        offsets = _positions(self._tracker, self._consumer.assignment(), wanted)
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("%s", translate(exc, "committing offsets"))


class TransactionalCommitter:
    """Exactly-once: outputs and consumed offsets committed in one transaction."""

    ack_on_produce = True

    def __init__(
        self,
        consumer: Consumer,
        producer: Producer,
        tracker: OffsetTracker,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._consumer = consumer
        self._producer = producer
        self._tracker = tracker
        self._clock = clock
        self._opened_at = 0.0
        self._committed: dict[tuple[str, int], int] = {}

    def start(self) -> None:
        """Fence earlier instances of this transactional id and open the first transaction."""
        try:
            self._producer.init_transactions(TRANSACTION_TIMEOUT_S)
        except KafkaException as exc:
            raise translate(exc, "cannot initialise transactions") from None
        self._begin()

    def checkpoint(self, force: bool = False) -> bool:
        """Commit the open transaction with the done positions, when due."""
        if not force and self._clock() - self._opened_at < TRANSACTION_INTERVAL_S:
            return True
        # Every produced record advanced a position, so unchanged positions
        # mean an empty transaction: nothing to commit.
        offsets = [
            tp
            for tp in _positions(self._tracker, self._consumer.assignment(), None)
            if self._committed.get((tp.topic, tp.partition)) != tp.offset
        ]
        if not offsets:
            return True
        try:
            self._producer.send_offsets_to_transaction(
                offsets, self._consumer.consumer_group_metadata(), TRANSACTION_TIMEOUT_S
            )
            self._producer.commit_transaction(TRANSACTION_TIMEOUT_S)
        except KafkaException as exc:
            return self._recover(exc)
        self._committed.update({(tp.topic, tp.partition): tp.offset for tp in offsets})
        self._begin()
        return True

    def revoked(self, partitions: list[TopicPartition]) -> None:
        """Commit now, so the revoked partitions' next owner starts after our outputs."""
        if not self.checkpoint(force=True):
            log.warning("transaction aborted at revocation: the new owners redo its events")

    def lost(self) -> bool:
        """Abort: the open transaction may hold outputs of partitions we no longer own."""
        self._abort()
        return True

    def _begin(self) -> None:
        self._producer.begin_transaction()
        self._opened_at = self._clock()

    def _recover(self, exc: KafkaException) -> bool:
        error = exc.args[0]
        if error.fatal():
            raise translate(
                exc, "the transactional producer failed (fenced by a newer instance?)"
            ) from None
        if error.txn_requires_abort():
            log.warning("aborting the transaction: %s", error.str())
            self._abort()
            return False
        if error.retriable():
            log.warning("transaction commit will be retried: %s", error.str())
            return True
        raise translate(exc, "committing the transaction") from None

    def _abort(self) -> None:
        try:
            self._producer.abort_transaction(TRANSACTION_TIMEOUT_S)
        except KafkaException as exc:
            raise translate(exc, "cannot abort the transaction") from None
        self._begin()
