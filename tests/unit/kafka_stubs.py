"""Stand-ins for confluent-kafka's Consumer and Producer, for tests of the loop without a broker.

`StubConsumer` keeps a log per partition and serves it the way librdkafka does
where the loop depends on it: rebalance callbacks run inside `poll` before the
record that follows them, paused partitions are not fetched, and a pause
outlives the partition's revocation or loss (librdkafka keeps it on the
partition, not on the assignment). A test schedules rebalances with
`rebalance`, and with `inject` hands out a record out of turn (what a
consume(n) call interleaved with a rebalance can return).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from worker.offsets import Partition


@dataclass(slots=True)
class StubMessage:
    """A consumed record, as confluent_kafka.Message shows it."""

    _topic: str
    _partition: int
    _offset: int
    _value: bytes | None
    _key: bytes | None = None
    _headers: list[tuple[str, bytes | None]] | None = None
    _timestamp: tuple[int, int] = (0, 0)
    """(type, milliseconds); type 0 is TIMESTAMP_NOT_AVAILABLE."""
    _error: KafkaError | None = None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return self._timestamp

    def error(self) -> KafkaError | None:
        return self._error


Callback = Callable[[Any, list[TopicPartition]], None]


@dataclass
class StubConsumer:
    """A consumer of in-memory partition logs with librdkafka's rebalance and pause behaviour."""

    logs: dict[Partition, list[bytes]]
    on_assign: Callback | None = None
    on_revoke: Callback | None = None
    on_lost: Callback | None = None
    assigned: set[Partition] = field(default_factory=set)
    paused: set[Partition] = field(default_factory=set)
    positions: dict[Partition, int] = field(default_factory=dict)
    committed: dict[Partition, int] = field(default_factory=dict)
    events: deque[tuple[str, list[Partition]]] = field(default_factory=deque)
    injected: deque[StubMessage] = field(default_factory=deque)
    closed: bool = False

    def subscribe(
        self,
        topics: list[str],
        on_assign: Callback,
        on_revoke: Callback,
        on_lost: Callback,
    ) -> None:
        self.on_assign, self.on_revoke, self.on_lost = on_assign, on_revoke, on_lost

    def rebalance(self, kind: str, partitions: Iterable[Partition]) -> None:
        """Schedule a rebalance ("assign", "revoke" or "lost"), served by the next poll."""
        self.events.append((kind, list(partitions)))

    def inject(self, message: StubMessage) -> None:
        """Hand out this record at the next poll, whatever its partition's state."""
        self.injected.append(message)

    def poll(self, timeout: float = 0.0) -> StubMessage | None:
        if self.events:
            self._serve(*self.events.popleft())
        if self.injected:
            return self.injected.popleft()
        for tp in sorted(self.assigned - self.paused):
            position = self.positions.get(tp, 0)
            if position < len(self.logs[tp]):
                self.positions[tp] = position + 1
                return StubMessage(tp[0], tp[1], position, self.logs[tp][position])
        return None

    def _serve(self, kind: str, partitions: list[Partition]) -> None:
        tps = [TopicPartition(topic, partition) for topic, partition in partitions]
        assert self.on_assign and self.on_revoke and self.on_lost, "not subscribed"
        if kind == "assign":
            self.on_assign(self, tps)
            self.assigned |= set(partitions)
            for tp in partitions:
                self.positions[tp] = self.committed.get(tp, 0)
        else:
            (self.on_revoke if kind == "revoke" else self.on_lost)(self, tps)
            self.assigned -= set(partitions)

    def consume(self, num_messages: int = 1, timeout: float = 0.0) -> list[StubMessage]:
        return []

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(topic, partition) for topic, partition in sorted(self.assigned)]

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {(tp.topic, tp.partition) for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {(tp.topic, tp.partition) for tp in partitions}

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [
            TopicPartition(tp.topic, tp.partition, self.positions.get((tp.topic, tp.partition), -1))
            for tp in partitions
        ]

    def seek(self, tp: TopicPartition) -> None:
        self.positions[(tp.topic, tp.partition)] = tp.offset

    def store_offsets(self, offsets: list[TopicPartition]) -> None:
        # Auto-commit, at once: what is stored counts as committed.
        for tp in offsets:
            if (tp.topic, tp.partition) in self.assigned:
                self.committed[(tp.topic, tp.partition)] = tp.offset

    def commit(self, offsets: list[TopicPartition], asynchronous: bool = True) -> None:
        self.store_offsets(offsets)

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool = False) -> tuple[int, int]:
        return 0, len(self.logs[(tp.topic, tp.partition)])

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> None:
        return None

    def consumer_group_metadata(self) -> object:
        return object()

    def close(self) -> None:
        self.closed = True


DeliveryReport = Callable[[KafkaError | None, None], None]


@dataclass
class Queued:
    """A record in the producer's queue, and the error its report will carry (if any)."""

    topic: str
    value: bytes | None
    on_delivery: DeliveryReport | None
    error: KafkaError | None = None


@dataclass
class StubProducer:
    """A producer whose records are delivered at the next poll or flush.

    `fail(n)` makes the next n deliveries fail with a transient error (the
    broker did not answer in time). With `init_transactions` called it is
    transactional: delivered records join the open transaction, and only a
    commit adds them to `sent` (what a read_committed reader sees), together
    with the offsets sent to the transaction, which the consumer then holds
    as committed. An abort drops both. `fence` fences it until the next
    `init_transactions` (a new producer with the same transactional id).
    """

    consumer: StubConsumer | None = None
    sent: list[tuple[str, bytes | None]] = field(default_factory=list)
    undelivered: list[Queued] = field(default_factory=list)
    failures_due: int = 0
    transactional: bool = False
    transaction: list[tuple[str, bytes | None]] = field(default_factory=list)
    offsets: list[TopicPartition] = field(default_factory=list)
    commits: list[tuple[list[tuple[str, bytes | None]], dict[Partition, int]]] = field(
        default_factory=list
    )
    """Each committed transaction's records, and the consumer's committed offsets after it."""
    aborts: int = 0
    fenced: bool = False
    _surfacing: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fence(self, surfacing: str) -> None:
        """Fence the producer, as a newer one with its transactional id does: every call
        fails until `init_transactions`. `surfacing` is how it first learns it: "report"
        (the queued records' delivery reports), "raised" (the next poll or flush raises
        the fatal error, as confluent-kafka does), "chained" (a SystemError chained to
        it, as confluent-kafka 2.16 raises when a delivery report runs after it)."""
        old_epoch = KafkaError(KafkaError.INVALID_PRODUCER_EPOCH, "old epoch")
        with self._lock:
            self.fenced, self._surfacing = True, surfacing
            if surfacing == "report":
                for queued in self.undelivered:
                    queued.error = old_epoch

    def __len__(self) -> int:
        with self._lock:
            return len(self.undelivered)

    def _refuse_if_fenced(self) -> None:
        if self.fenced:
            raise KafkaException(KafkaError(KafkaError._FENCED, "fenced", fatal=True))

    def fail(self, deliveries: int) -> None:
        """Fail the next `deliveries` deliveries with a transient error."""
        with self._lock:
            self.failures_due += deliveries

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: object = None,
        on_delivery: DeliveryReport | None = None,
    ) -> None:
        if self.fenced:
            raise KafkaException(KafkaError(KafkaError._FATAL, "Local: Fatal error"))
        with self._lock:
            self.undelivered.append(Queued(topic, value, on_delivery))

    def poll(self, timeout: float = 0.0) -> int:
        with self._lock:
            surfacing = self._surfacing
            if surfacing in ("raised", "chained"):
                # The fatal error comes first; the reports it cut off are never served.
                self._surfacing, self.undelivered = None, []
        if surfacing == "raised":
            self._refuse_if_fenced()
        if surfacing == "chained":
            try:
                self._refuse_if_fenced()
            except KafkaException as exc:
                raise SystemError("returned a result with an exception set") from exc
        with self._lock:
            undelivered, self.undelivered = self.undelivered, []
        for queued in undelivered:
            with self._lock:
                error = queued.error
                if error is None and self.failures_due > 0:
                    self.failures_due -= 1
                    error = KafkaError(KafkaError._MSG_TIMED_OUT, "timed out", retriable=True)
                if error is None:
                    (self.transaction if self.transactional else self.sent).append(
                        (queued.topic, queued.value)
                    )
            if queued.on_delivery is not None:
                queued.on_delivery(error, None)
        return len(undelivered)

    def flush(self, timeout: float = 0.0) -> int:
        self.poll()
        return 0

    def purge(self) -> None:
        with self._lock:
            self.undelivered.clear()

    def init_transactions(self, timeout: float = -1) -> None:
        self.transactional, self.fenced, self._surfacing = True, False, None
        self.abort_transaction()
        self.aborts -= 1  # fencing leaves nothing to count

    def begin_transaction(self) -> None:
        pass

    def send_offsets_to_transaction(
        self, offsets: list[TopicPartition], metadata: object, timeout: float = -1
    ) -> None:
        self._refuse_if_fenced()
        with self._lock:
            self.offsets.extend(offsets)

    def commit_transaction(self, timeout: float = -1) -> None:
        assert self.consumer is not None
        self._refuse_if_fenced()
        with self._lock:
            self.sent.extend(self.transaction)
            for tp in self.offsets:
                self.consumer.committed[(tp.topic, tp.partition)] = tp.offset
            self.commits.append((self.transaction, dict(self.consumer.committed)))
            self.transaction, self.offsets = [], []

    def abort_transaction(self, timeout: float = -1) -> None:
        self._refuse_if_fenced()
        # As librdkafka does, queued records are purged: their reports say so.
        purged = KafkaError(KafkaError._PURGE_QUEUE, "purged by the abort")
        with self._lock:
            for queued in self.undelivered:
                queued.error = purged
            self.transaction, self.offsets = [], []
            self.aborts += 1
