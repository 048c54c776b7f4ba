"""Rebalance: partitions assigned, revoked and lost; where each restarts; the rewind.

The consumer calls `on_assign`, `on_revoke` and `on_lost` from inside its poll,
before the first record that follows the change. An assignment first reads
the control topic (when there is one) to its end, so that a partition taken
over is served with at least the configuration its last owner served it with.
A revocation makes what is
done of its partitions durable first (the delivery commits). Work the delivery
loses on the way (an aborted transaction) makes a rewind due: every partition
is read again from where this worker made it durable last, or where it first
read it since it was assigned.
"""

from __future__ import annotations

import logging

from confluent_kafka import Consumer, KafkaException, TopicPartition

from worker.batching import ModelBatchers
from worker.control import ControlTopic
from worker.delivery import Delivery
from worker.flow import FlowControl
from worker.inflight import InFlightEvent
from worker.kafka.clients import translate
from worker.metrics import Health, Metrics
from worker.offsets import OffsetTracker, Partition

log = logging.getLogger(__name__)


class Rebalance:
    """Owns the assignment and the restart points; tells every collaborator of a change."""

    def __init__(
        self,
        consumer: Consumer,
        tracker: OffsetTracker,
        delivery: Delivery,
        flow: FlowControl,
        batcher: ModelBatchers[InFlightEvent],
        metrics: Metrics,
        health: Health,
        control: ControlTopic | None = None,
    ) -> None:
        self._consumer = consumer
        self._control = control
        self._tracker = tracker
        self._delivery = delivery
        self._flow = flow
        self._batcher = batcher
        self._metrics = metrics
        self._health = health
        self.assigned: frozenset[Partition] = frozenset()
        """The input partitions this worker owns now."""
        self.rewind_due = False
        """Work was lost in a callback: rewind once the records that came with it are read."""
        self._first_read: dict[Partition, int] = {}
        """Where each partition was first read since it was assigned: where a rewind
        restarts it when this worker has made nothing of it durable yet."""

    def read(self, event: InFlightEvent) -> None:
        """An event was read: the first of its partition's assignment is a restart point."""
        self._first_read.setdefault(event.tp, event.offset)

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions are ours: track them afresh, from their committed offset when given."""
        self._metrics.rebalances.labels("assign").inc()
        if self._control is not None and partitions:
            self._control.catch_up()
        for tp in partitions:
            self._tracker.assign((tp.topic, tp.partition), tp.offset if tp.offset >= 0 else None)
            self._first_read.pop((tp.topic, tp.partition), None)
        fresh = {(tp.topic, tp.partition) for tp in partitions}
        self.assigned |= fresh
        self._flow.assigned(fresh)
        self._health.group_joined.set()
        log.info("assigned %s", describe(partitions))

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions are leaving: what is done of them becomes durable, the rest is dropped."""
        self._metrics.rebalances.labels("revoke").inc()
        if not self._delivery.revoked(partitions):
            self.rewind_due = True
        self._forget(partitions)
        log.info("revoked %s", describe(partitions))

    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions were taken from us: nothing of them may become durable any more."""
        self._metrics.rebalances.labels("lost").inc()
        self._forget(partitions)
        if not self._delivery.lost():
            self.rewind_due = True
        log.warning(
            "lost %s: their uncommitted events go to their next owner", describe(partitions)
        )

    def rewind(self) -> None:
        """Forget all work not yet durable and read each partition again from its restart point.

        Each partition gets a new epoch: what is still on the model, or waits
        to be produced again, belongs to the old ones and is dropped when it
        comes back. Local only (the restart points are known here), so it works
        while the broker is away: an aborted transaction during an outage is
        the usual case.
        """
        self.rewind_due = False
        durable = self._delivery.durable_positions()
        restarts = []
        for tp in self.assigned:
            offset = durable.get(tp, self._first_read.get(tp))
            self._tracker.assign(tp, offset)
            if offset is not None:  # None: nothing read since it was assigned
                self._first_read[tp] = offset
                restarts.append(TopicPartition(tp[0], tp[1], offset))
        self._batcher.discard(lambda event: False)
        try:
            for restart in restarts:
                self._consumer.seek(restart)
        except KafkaException as exc:
            raise translate(exc, "cannot rewind to the committed offsets") from None
        log.warning("rewound %s to the committed offsets", describe(restarts))

    def _forget(self, partitions: list[TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self.assigned -= gone
        for tp in gone:
            self._tracker.revoke(tp)
            self._first_read.pop(tp, None)
        self._delivery.forget(gone)
        self._flow.forget(gone)
        self._batcher.discard(lambda event: event.tp not in gone)


def describe(partitions: list[TopicPartition]) -> str:
    """Partitions as `topic[n]`, for logs."""
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"
