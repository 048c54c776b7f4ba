"""Intake: a consumed record becomes a tracked, decoded, routed and tokenized event."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

from worker import serde
from worker.errors import RegistryUnavailable, TooManyChunksError
from worker.formats import Formats
from worker.inflight import InFlightEvent
from worker.kafka.records import Record, headers_of
from worker.metrics import Metrics
from worker.models import Models
from worker.nli.base import EncodedEvent
from worker.offsets import OffsetTracker, Partition
from worker.routing import Router

log = logging.getLogger(__name__)


class Intake:
    """Turns records into in-flight events; the tokenizer runs here, on the polling thread.

    Each event is tokenized by its topic's model.

    While the schema registry cannot be reached, a record that needs it is held,
    with every record of its partition read after it (nothing overtakes a held
    record in its partition), and decoded again once the registry answers
    (`retry`). Held records stay in flight: nothing is committed past them, and
    their partitions are paused meanwhile (`held_partitions`); the others flow.
    """

    def __init__(
        self,
        router: Router,
        models: Models,
        tracker: OffsetTracker,
        metrics: Metrics,
        clock: Callable[[], float],
        formats: Formats,
    ) -> None:
        self._router = router
        self._models = models
        self._tracker = tracker
        self._metrics = metrics
        self._clock = clock
        self._formats = formats
        self._held: dict[Partition, deque[InFlightEvent]] = {}

    @property
    def held_partitions(self) -> frozenset[Partition]:
        """The partitions whose records wait for the schema registry."""
        return frozenset(self._held)

    def take(self, message: Record) -> InFlightEvent | None:
        """The record as an event in flight; None for a stale record, which is dropped, and
        for a held one (see `retry`).

        A record is stale when its partition has no live assignment here, or it
        lies below what the assignment already read (fetched before a rebalance
        or seek, handed out after it): its partition's owner reads it again.
        An event that cannot be decoded or tokenized carries its rejection and
        rides through the batch unscored, so that every partition's results
        are produced in offset order (which exactly-once relies on).
        """
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        assert topic is not None and partition is not None and offset is not None
        self._metrics.consumed.labels(topic).inc()
        epoch = self._tracker.track((topic, partition), offset)
        if epoch is None:
            self._metrics.stale_records.labels(topic).inc()
            log.debug("dropped stale %s[%d]@%d: its owner reads it", topic, partition, offset)
            return None
        event = InFlightEvent(
            topic,
            partition,
            offset,
            epoch,
            message.key(),
            message.value(),
            headers_of(message),
            message.timestamp()[1],
            self._router.route(topic),
            self._clock(),
        )
        if event.tp in self._held or not self._decoded(event):
            self._held.setdefault(event.tp, deque()).append(event)
            return None
        return event

    def retry(self) -> list[InFlightEvent]:
        """The held records the registry lets through now, each partition's in the order
        they were read.

        Only once it is time to ask the registry again, and until it fails
        again; records of partitions no longer owned (or rewound) since are
        dropped.
        """
        ready: list[InFlightEvent] = []
        if not self._held or not self._formats.retry_due():
            return ready
        for tp, held in list(self._held.items()):
            while held:
                event = held[0]
                current = self._tracker.is_current(tp, event.epoch)
                if current and not self._decoded(event):
                    return ready
                held.popleft()
                if current:
                    ready.append(event)
            del self._held[tp]
        return ready

    def _decoded(self, event: InFlightEvent) -> bool:
        """Decode and tokenize the event, or set its rejection; False while the registry
        cannot be reached."""
        try:
            decoded = self._formats.decode(event.value, event.headers, event.route)
        except RegistryUnavailable:
            return False
        if isinstance(decoded, serde.Rejection):
            event.rejection = decoded
            return True
        event.decoded = decoded
        task = event.route.task_for(decoded.labels)
        try:
            with self._metrics.tokenization_seconds.time():
                event.encoded = self._models.of_topic(event.topic).encode(decoded.text, task)
        except TooManyChunksError as exc:
            event.rejection = serde.Rejection(serde.TOO_MANY_CHUNKS, str(exc))
        except Exception as exc:
            # A text the tokenizer cannot take is that event's problem, not the worker's.
            reason = f"the text cannot be tokenized: {exc}"
            event.rejection = serde.Rejection(serde.INFERENCE_FAILED, reason)
        if event.encoded is not None and event.encoded.chunks:
            self._metrics.text_chunks.labels(event.topic).observe(len(event.encoded.chunks))
        return True


def batch_cost(event: InFlightEvent) -> tuple[int, int]:
    """What the event adds to a batch: its premise/hypothesis pairs and its longest pair.

    A chunked text has a pair per chunk and hypothesis, so its chunks count
    into the batch's token budget.
    """
    if event.encoded is None:
        return 0, 0
    return event.encoded.pair_count, event.encoded.max_pair_tokens


def encoded(event: InFlightEvent) -> EncodedEvent | None:
    """What the model scores of the event; None for an event that rides along unscored."""
    return event.encoded
