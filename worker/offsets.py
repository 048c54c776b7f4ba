"""Which input offsets are safe to commit: those whose output, and all before, are done."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from confluent_kafka import TopicPartition

Partition = tuple[str, int]
"""A topic and partition number (confluent_kafka.TopicPartition also carries an offset)."""


@dataclass(slots=True)
class _PartitionState:
    epoch: int
    unfinished: deque[int] = field(default_factory=deque)
    """Offsets tracked in the order consumed, from the first not done on."""
    done: set[int] = field(default_factory=set)
    next_offset: int | None = None
    taken: int | None = None
    start: int | None = None
    """Where reading this assignment begins, when known (a seek's target)."""


class OffsetTracker:
    """Tracks in-flight offsets per partition and yields the offsets to commit.

    Offsets of a partition are tracked in the order they were consumed (gaps, as
    left by compaction or transaction markers, are fine). An offset is done when
    its output is acknowledged; the partition's commit position is one past the
    last offset of the longest done prefix, so an offset is never committed
    before its output and all earlier outputs exist.

    Each assignment of a partition gets a new epoch: acknowledgements carry the
    epoch they were tracked in, and those of an earlier assignment are ignored.
    """

    def __init__(self) -> None:
        self._partitions: dict[Partition, _PartitionState] = {}
        self._epochs = 0

    def assign(self, tp: Partition, start: int | None = None) -> int:
        """Start tracking `tp` afresh, reading from `start` if known; returns its epoch."""
        state = self._partitions[tp] = self._new_state()
        state.start = start
        return state.epoch

    def revoke(self, tp: Partition) -> None:
        """Forget `tp`: its in-flight offsets will be re-read by its next owner."""
        self._partitions.pop(tp, None)

    def epoch(self, tp: Partition) -> int | None:
        """The current epoch of `tp`, or None when it is not assigned."""
        state = self._partitions.get(tp)
        return state.epoch if state else None

    def track(self, tp: Partition, offset: int) -> int | None:
        """Record a consumed offset as in flight; returns the epoch to ack it with.

        None for a stale record, which is not tracked: its partition has no live
        assignment here, or it lies below what this assignment already tracked
        (a record fetched before a rebalance or seek, handed out after it). Its
        partition's current owner reads it again.
        """
        state = self._partitions.get(tp)
        if state is None:
            return None
        floor = state.unfinished[-1] + 1 if state.unfinished else state.next_offset
        if floor is None:
            floor = state.start
        if floor is not None and offset < floor:
            return None
        state.unfinished.append(offset)
        return state.epoch

    def ack(self, tp: Partition, offset: int, epoch: int) -> bool:
        """Mark an offset done; False when it belongs to an earlier assignment."""
        state = self._partitions.get(tp)
        if state is None or state.epoch != epoch:
            return False
        state.done.add(offset)
        while state.unfinished and state.unfinished[0] in state.done:
            head = state.unfinished.popleft()
            state.done.discard(head)
            state.next_offset = head + 1
        return True

    def is_current(self, tp: Partition, epoch: int) -> bool:
        """Whether `epoch` is the live assignment of `tp`."""
        state = self._partitions.get(tp)
        return state is not None and state.epoch == epoch

    def take_committable(self) -> dict[Partition, int]:
        """Commit positions that advanced since the last call (offset of the next record)."""
        advanced = {}
        for tp, state in self._partitions.items():
            if state.next_offset is not None and state.next_offset != state.taken:
                advanced[tp] = state.taken = state.next_offset
        return advanced

    def position(self, tp: Partition) -> int | None:
        """The commit position of `tp`: one past its longest done prefix."""
        state = self._partitions.get(tp)
        return state.next_offset if state else None

    def positions(
        self, partitions: Iterable[TopicPartition], wanted: set[Partition] | None = None
    ) -> list[TopicPartition]:
        """The commit positions of those of `partitions` (in `wanted`, if given) that have one."""
        offsets = []
        for tp in partitions:
            key = (tp.topic, tp.partition)
            position = self.position(key)
            if position is not None and (wanted is None or key in wanted):
                offsets.append(TopicPartition(tp.topic, tp.partition, position))
        return offsets

    def in_flight(self, tp: Partition | None = None) -> int:
        """Offsets consumed but not yet committable, for one partition or all."""
        if tp is not None:
            state = self._partitions.get(tp)
            return len(state.unfinished) if state else 0
        return sum(len(state.unfinished) for state in self._partitions.values())

    def _new_state(self) -> _PartitionState:
        self._epochs += 1
        return _PartitionState(epoch=self._epochs)
