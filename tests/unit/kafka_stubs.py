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

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import TopicPartition

from worker.offsets import Partition


@dataclass(slots=True)
class StubMessage:
    """A consumed record, as confluent_kafka.Message shows it."""

    _topic: str
    _partition: int
    _offset: int
    _value: bytes | None
    _key: bytes | None = None

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

    def headers(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (0, 0)

    def error(self) -> None:
        return None


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

    def close(self) -> None:
        self.closed = True


@dataclass
class StubProducer:
    """A producer whose records are delivered at the next poll or flush."""

    sent: list[tuple[str, bytes | None]] = field(default_factory=list)
    undelivered: list[Callable[[], None]] = field(default_factory=list)

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: object = None,
        on_delivery: Callable[[None, None], None] | None = None,
    ) -> None:
        def deliver() -> None:
            self.sent.append((topic, value))
            if on_delivery is not None:
                on_delivery(None, None)

        self.undelivered.append(deliver)

    def poll(self, timeout: float = 0.0) -> int:
        undelivered, self.undelivered = self.undelivered, []
        for deliver in undelivered:
            deliver()
        return len(undelivered)

    def flush(self, timeout: float = 0.0) -> int:
        self.poll()
        return 0

    def purge(self) -> None:
        self.undelivered.clear()
