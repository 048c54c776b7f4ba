"""Exactly-once: outputs and consumed offsets committed in one Kafka transaction.

Outputs are produced in the input order of each partition, so at any moment
the records of the open transaction are exactly those of the offsets below the
positions it will commit; an offset counts as done as soon as its output is produced.
A transaction that has to be aborted takes its outputs with it: the worker
then rewinds to where it last committed (`durable_positions`) and redoes them.
A transactional producer that fails for good (fenced: the coordinator aborts a
transaction that outlives `transaction.timeout.ms`, say in a broker outage, and
bumps the producer's epoch) is replaced by a new one with the same id, whether
a call of ours learns it or a delivery report does.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from worker.kafka.clients import ProducerFailed, producer_failed, serve, translate
from worker.offsets import OffsetTracker, Partition

log = logging.getLogger(__name__)

# A transaction is committed at most this often: each commit costs a round trip
# to the coordinator, and read_committed readers see outputs only once it lands.
TRANSACTION_INTERVAL_S = 0.1
# The wait for the coordinator at start-up, when there is nothing else to do.
INIT_TIMEOUT_S = 30.0
# Bound on one commit, abort or initialisation call in the loop. A healthy
# coordinator answers in milliseconds; during an outage the call is retried on
# the next pass, so the loop keeps polling (group membership, readiness).
CALL_TIMEOUT_S = 2.0
# Longest wait for the open transaction's records to be delivered before its
# offsets are sent (see TransactionalCommitter.checkpoint); the commit is tried
# again on the next pass.
DELIVERY_WAIT_S = 1.0
# Past this, a send_offsets_to_transaction call is deemed stuck and its producer
# replaced (see _OffsetsCall). The call itself gives up after CALL_TIMEOUT_S,
# or after transaction.timeout.ms (10 s) when a request to the coordinator
# times out; this leaves room for both. It is what a cluster that loses the
# group's coordinator waits: librdkafka 2.16 then hangs in the call until
# another broker changes state (librdkafka issues 5511 and 5456), and the
# outputs of exactly-once wait with it.
SEND_OFFSETS_DEADLINE_S = 15.0


class _Transaction(enum.Enum):
    STARTING = "starting"
    """The producer is to be initialised (fencing earlier ones) before a transaction opens."""
    OPEN = "open"
    """Records may be produced into it."""
    SENDING = "sending"
    """Its offsets are being sent, on a thread of their own (see `_OffsetsCall`)."""
    COMMITTING = "committing"
    """Its offsets are sent; the commit is to be completed."""
    ABORTING = "aborting"
    """The abort is to be completed."""


class _Sending(enum.Enum):
    """Where sending a transaction's offsets stands."""

    SENT = "sent"
    """The coordinator has them: the commit is next (state COMMITTING)."""
    WAITING = "waiting"
    """The call still runs, or failed retriably and the transaction is open again."""
    LOST = "lost"
    """The transaction is lost: the call failed for good, or got stuck and the producer
    was replaced."""


class _OffsetsCall:
    """send_offsets_to_transaction on a daemon thread of its own.

    After a broker outage librdkafka (2.16) can wait for ever for the group
    coordinator in this call, whatever timeout it is given. On a thread it
    cannot hang the loop, which keeps polling, and past a deadline its producer
    is replaced; the stuck call is left to its thread.
    """

    def __init__(
        self,
        producer: Producer,
        offsets: list[TopicPartition],
        metadata: object,
        started_at: float,
    ) -> None:
        self.offsets = offsets
        self.started_at = started_at
        self.failure: KafkaException | None = None
        self._done = threading.Event()
        thread = threading.Thread(
            target=self._send, args=(producer, metadata), name="zsc-send-offsets", daemon=True
        )
        thread.start()

    def _send(self, producer: Producer, metadata: object) -> None:
        try:
            producer.send_offsets_to_transaction(self.offsets, metadata, CALL_TIMEOUT_S)
        except KafkaException as exc:
            self.failure = exc
        finally:
            self._done.set()

    def wait(self, timeout_s: float) -> bool:
        """Whether the call has returned, waiting up to `timeout_s` for it."""
        return self._done.wait(timeout_s)


class TransactionalCommitter:
    """Exactly-once: outputs and consumed offsets committed in one transaction.

    A commit, abort or initialisation the coordinator does not answer in time
    is retried on the next `checkpoint`; until the transaction is open again,
    `producing` is False. `make_producer` makes the transactional producer, at
    start and to replace one that failed for good or got stuck.
    """

    def __init__(
        self,
        consumer: Consumer,
        make_producer: Callable[[], Producer],
        tracker: OffsetTracker,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._consumer = consumer
        self._make_producer = make_producer
        self._producer = make_producer()
        self._tracker = tracker
        self._clock = clock
        self._state = _Transaction.STARTING
        self._opened_at = 0.0
        self._sending: _OffsetsCall | None = None
        self._committed: dict[Partition, int] = {}
        # Partitions forgotten since the offsets being sent were taken.
        self._forgotten: set[Partition] = set()
        self._record_failed = False
        self._failure: KafkaError | None = None

    @property
    def producer(self) -> Producer:
        """The transactional producer, now (see `_replace_producer`)."""
        return self._producer

    @property
    def producing(self) -> bool:
        """Whether a transaction is open for records (and the producer has not failed)."""
        return self._state is _Transaction.OPEN and self._failure is None

    def start(self) -> None:
        """Fence earlier instances of this transactional id and open the first transaction."""
        try:
            self._producer.init_transactions(INIT_TIMEOUT_S)
        except KafkaException as exc:
            raise translate(exc, "cannot initialise transactions") from None
        self._begin()

    def checkpoint(self, force: bool = False) -> bool:
        """Commit the open transaction with the done positions when due; finish a pending end.

        With `force` (revocation, shutdown) it waits for offsets being sent.
        """
        if self._state is _Transaction.OPEN and (
            force or self._clock() - self._opened_at >= TRANSACTION_INTERVAL_S
        ):
            self._send_offsets()
        if self._failure is not None:
            self._replace_producer(self._failure)
            return False
        # For these two, the rewind was asked for when they began.
        if self._state is _Transaction.STARTING:
            self._try_init()
            return True
        if self._state is _Transaction.ABORTING:
            self._try_abort()
            return True
        if self._state is _Transaction.OPEN:
            if not self._record_failed:
                return True
            log.warning("aborting the transaction: a record of it was not delivered")
            return self.abandon()
        if self._state is _Transaction.SENDING:
            sending = self._sent_offsets(SEND_OFFSETS_DEADLINE_S if force else 0.0)
            if sending is not _Sending.SENT:
                return sending is _Sending.WAITING
        try:
            self._producer.commit_transaction(CALL_TIMEOUT_S)
        except KafkaException as exc:
            return self._recover(exc, "committing the transaction")
        assert self._sending is not None
        for tp in self._sending.offsets:
            partition = (tp.topic, tp.partition)
            if partition not in self._forgotten:
                self._committed[partition] = tp.offset
        self._begin()
        return True

    def revoked(self, partitions: list[TopicPartition]) -> bool:
        """Commit now, so the revoked partitions' next owner starts after our outputs.

        A transaction that cannot commit now (its records not delivered in
        time, the coordinator away) is aborted: its offsets were not sent, so
        the revoked partitions' next owner starts before its outputs, and
        committing them later would show them twice.
        """
        kept = self.checkpoint(force=True)
        if kept and self._state is _Transaction.OPEN and self._uncommitted_positions():
            log.warning("the transaction cannot commit before the revocation: aborting it")
            kept = self.abandon()
        if not kept:
            log.warning("transaction aborted at revocation: the new owners redo its events")
        return kept

    def forget(self, partitions: Collection[Partition]) -> None:
        """Partitions no longer ours, revoked or lost: what this worker committed of them,
        or has yet to hear it committed, says nothing of where a later assignment of them
        starts (another owner may have committed past it meanwhile). That start is what
        the new assignment reads first, until this worker commits again."""
        for partition in partitions:
            self._committed.pop(partition, None)
        self._forgotten.update(partitions)

    def lost(self) -> bool:
        """Abort: the open transaction may hold outputs of partitions we no longer own.

        A commit already under way is completed instead: its offsets were
        accepted for the generation that owned them, and they match its outputs.
        """
        if self._state in (_Transaction.SENDING, _Transaction.COMMITTING, _Transaction.STARTING):
            return True
        return self.abandon()

    def abandon(self) -> bool:
        """Abort the open transaction (retried until the coordinator answers); its work is lost."""
        if (
            self._state is _Transaction.SENDING
            and self._sent_offsets(SEND_OFFSETS_DEADLINE_S) is _Sending.LOST
        ):
            return False  # stuck: the producer was replaced, which aborts the transaction
        if self._state is not _Transaction.STARTING:
            self._state = _Transaction.ABORTING
            self._try_abort()
        return False

    def record_failed(self) -> None:
        """The open transaction cannot commit: it is aborted at the next checkpoint."""
        self._record_failed = True

    def producer_failed(self, error: KafkaError) -> None:
        """The producer failed for good (a delivery report or a call said so): it is
        replaced at the next checkpoint, and its transaction's work is lost."""
        if self._failure is None:
            self._failure = error

    def durable_positions(self) -> Mapping[Partition, int]:
        """The positions committed by this worker since it was assigned each partition."""
        return self._committed

    def _send_offsets(self) -> None:
        """Start sending the done positions (state SENDING), unless there are none, or the
        records are not all delivered yet, or one failed (`_record_failed`), or the producer
        did (`_failure`)."""
        offsets = self._uncommitted_positions()
        if not offsets:
            return
        # Every record delivered first, or its failure known: offsets sent to a
        # transaction that turns abortable meanwhile (a record refused,
        # librdkafka's epoch bump after an abort) can block the call for good.
        try:
            undelivered = serve(lambda: self._producer.flush(DELIVERY_WAIT_S))
        except ProducerFailed as failed:
            self.producer_failed(failed.error)
            return
        if undelivered > 0 or self._record_failed:
            return
        metadata = self._consumer.consumer_group_metadata()
        self._sending = _OffsetsCall(self._producer, offsets, metadata, self._clock())
        self._forgotten = set()
        self._state = _Transaction.SENDING

    def _uncommitted_positions(self) -> list[TopicPartition]:
        """The done positions this worker has not committed. Every produced record advanced
        a position, so none means an empty transaction."""
        return [
            tp
            for tp in self._tracker.positions(self._consumer.assignment())
            if self._committed.get((tp.topic, tp.partition)) != tp.offset
        ]

    def _sent_offsets(self, timeout_s: float) -> _Sending:
        """Whether the offsets are sent, waiting up to `timeout_s` for the call."""
        sending = self._sending
        assert sending is not None
        if not sending.wait(timeout_s):
            waited = max(timeout_s, self._clock() - sending.started_at)
            if waited < SEND_OFFSETS_DEADLINE_S:
                return _Sending.WAITING
            message = f"sending the offsets took over {SEND_OFFSETS_DEADLINE_S:.0f} s"
            self._replace_producer(KafkaError(KafkaError._TIMED_OUT, message))
            return _Sending.LOST
        if sending.failure is not None:
            self._state = _Transaction.OPEN
            kept = self._recover(sending.failure, "sending the offsets")
            return _Sending.WAITING if kept else _Sending.LOST
        self._state = _Transaction.COMMITTING
        return _Sending.SENT

    def _begin(self) -> None:
        try:
            self._producer.begin_transaction()
        except KafkaException as exc:
            raise translate(exc, "cannot begin a transaction") from None
        self._state = _Transaction.OPEN
        self._opened_at = self._clock()
        self._record_failed = False

    def _recover(self, exc: KafkaException, doing: str) -> bool:
        error = exc.args[0]
        if producer_failed(error):
            self._replace_producer(error)
            return False
        if error.txn_requires_abort():
            log.warning("aborting the transaction: %s", error.str())
            return self.abandon()
        if error.retriable():
            log.warning("%s will be retried: %s", doing, error.str())
            return True
        raise translate(exc, doing) from None

    def _try_abort(self) -> None:
        try:
            self._producer.abort_transaction(CALL_TIMEOUT_S)
        except KafkaException as exc:
            error = exc.args[0]
            if producer_failed(error):
                self._replace_producer(error)
            elif error.retriable():
                log.warning("aborting the transaction will be retried: %s", error.str())
            else:
                raise translate(exc, "cannot abort the transaction") from None
            return
        self._begin()

    def _replace_producer(self, error: KafkaError) -> None:
        """A new producer with the same transactional id: its initialisation aborts what the
        old one left open. Whatever the old one still holds is dropped with it."""
        log.error("the transactional producer failed for good, replacing it: %s", error.str())
        self._failure = None
        old, self._producer = self._producer, self._make_producer()
        old.purge()
        self._state = _Transaction.STARTING
        self._try_init()

    def _try_init(self) -> None:
        try:
            self._producer.init_transactions(CALL_TIMEOUT_S)
        except KafkaException as exc:
            error = exc.args[0]
            if not error.retriable() or error.fatal():
                raise translate(exc, "cannot initialise transactions") from None
            log.warning("initialising transactions will be retried: %s", error.str())
            return
        self._begin()
