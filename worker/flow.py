"""Flow control: how much to read, pausing the partitions while too much is in flight, and lag."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection

from confluent_kafka import Consumer, KafkaException, TopicPartition

from worker.metrics import Metrics
from worker.offsets import OffsetTracker, Partition

# Records taken per pass of the loop: enough to fill a batch without starving the loop.
READ_MAX_RECORDS = 500
# In-flight events (consumed, not yet committable) per configured batch before the
# partitions are paused; resumed once back under half of it. Two batches on the
# accelerator's queue and one filling keep it busy; more only adds memory.
IN_FLIGHT_BATCHES = 4
# How often consumer lag is recomputed from the cached watermarks.
LAG_INTERVAL_S = 5.0


class FlowControl:
    """Backpressure over the whole assignment, pauses of single partitions, and the lag of
    each partition.

    librdkafka keeps a partition's pause across its revocation or loss and a
    new assignment, whatever this worker's record of it says: every newly
    assigned partition has its pause state set at the next `apply`.
    """

    def __init__(
        self,
        consumer: Consumer,
        tracker: OffsetTracker,
        metrics: Metrics,
        max_batch_events: int,
        clock: Callable[[], float],
    ) -> None:
        self._consumer = consumer
        self._tracker = tracker
        self._metrics = metrics
        self._clock = clock
        self._max_in_flight = IN_FLIGHT_BATCHES * max_batch_events
        self._paused = False
        self._paused_partitions: set[Partition] = set()
        self._fresh: set[Partition] = set()
        """Assigned since `apply` last set their pause state."""
        self._next_lag_at = 0.0

    def room(self) -> int:
        """How many records to read now: never more than the in-flight bound has room for."""
        return max(1, min(READ_MAX_RECORDS, self._max_in_flight - self._tracker.in_flight()))

    def assigned(self, partitions: Collection[Partition]) -> None:
        """Partitions just assigned: their pause state is set at the next `apply`."""
        self._fresh |= set(partitions)

    def forget(self, partitions: Collection[Partition]) -> None:
        """Partitions that left: their new owner reports their lag now."""
        self._fresh -= set(partitions)
        for topic, partition in partitions:
            with contextlib.suppress(KeyError):
                self._metrics.consumer_lag.remove(topic, str(partition))

    def apply(self, held: Collection[Partition] = ()) -> None:
        """Pause every assigned partition while too many events are in flight; else only the
        `held` ones (their records wait for the schema registry)."""
        in_flight = self._tracker.in_flight()
        if not self._paused and in_flight >= self._max_in_flight:
            self._paused = True
            self._metrics.paused.set(1)
        elif self._paused and in_flight <= self._max_in_flight // 2:
            self._paused = False
            self._metrics.paused.set(0)
        assignment = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        fresh, self._fresh = self._fresh & assignment, self._fresh - assignment
        wanted = assignment if self._paused else assignment & set(held)
        # Revoked partitions drop out. A fresh one is set either way: it may come
        # paused from an earlier assignment of it.
        known = self._paused_partitions - fresh
        pause = wanted - known
        resume = ((known & assignment) - wanted) | (fresh - wanted)
        if pause:
            self._consumer.pause([TopicPartition(topic, p) for topic, p in pause])
        if resume:
            self._resume([TopicPartition(topic, p) for topic, p in resume])
        self._paused_partitions = wanted
        self._metrics.paused_partitions.set(len(self._paused_partitions))

    def stop_reading(self) -> None:
        """Pause everything for good (shutdown); the consumer is still polled to stay in
        the group."""
        self._consumer.pause(self._consumer.assignment())

    def update_lag(self) -> None:
        """Recompute each partition's lag from the cached high watermarks, when due."""
        now = self._clock()
        if now < self._next_lag_at:
            return
        self._next_lag_at = now + LAG_INTERVAL_S
        for tp in self._consumer.assignment():
            try:
                _, high = self._consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            position = self._tracker.position((tp.topic, tp.partition))
            if high >= 0 and position is not None:
                lag = max(0, high - position)
                self._metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)

    def _resume(self, partitions: list[TopicPartition]) -> None:
        """Resume, and fetch again at once from where each partition stands.

        A pause drops what librdkafka prefetched of a partition, and after a
        resume its fetcher may sleep for up to a second before fetching again:
        with a backlog and backpressure cycling, that cut throughput thirtyfold.
        A seek to the current position starts the fetch at once.
        """
        self._consumer.resume(partitions)
        for tp in self._consumer.position(partitions):
            if tp.offset >= 0:  # else nothing read yet: it starts from the commit
                self._consumer.seek(tp)
