"""The worker loop: poll, decode, route, batch, classify, produce, store offsets, commit."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from config.settings import Settings
from worker import errors, serde
from worker.batching import Batch, MicroBatcher
from worker.checkpoint import Checkpointer, OffsetCommitter, TransactionalCommitter
from worker.inference import Completed, InferenceRunner
from worker.kafka.clients import make_consumer, make_producer, translate
from worker.kafka.records import Headers
from worker.metrics import Health, Metrics
from worker.nli.base import Classifier, EncodedEvent, Scores
from worker.offsets import OffsetTracker
from worker.routing import Route, Router

log = logging.getLogger(__name__)

# Records fetched per consume() call: enough to fill a batch without starving the loop.
CONSUME_MAX_RECORDS = 500
# Longest the loop blocks in consume(), so finished batches are produced promptly.
MAX_POLL_BLOCK_S = 0.02
# In-flight events (consumed, not yet committable) per configured batch before the
# partitions are paused; resumed once back under half of it. Two batches on the
# accelerator's queue and one filling keep it busy; more only adds memory.
IN_FLIGHT_BATCHES = 4
# How often consumer lag is recomputed from the cached watermarks.
LAG_INTERVAL_S = 5.0
# Headers of a dead-lettered record.
ERROR_TYPE = "zsc.error.type"
ERROR_MESSAGE = "zsc.error.message"
SOURCE_TOPIC = "zsc.source.topic"
SOURCE_PARTITION = "zsc.source.partition"
SOURCE_OFFSET = "zsc.source.offset"


@dataclass(slots=True)
class Pending:
    """An event between poll and the acknowledgement of its output."""

    topic: str
    partition: int
    offset: int
    epoch: int
    key: bytes | None
    value: bytes | None
    headers: Headers | None
    timestamp_ms: int
    route: Route
    event: serde.DecodedEvent | None = None
    encoded: EncodedEvent | None = None
    rejection: serde.Rejection | None = None
    awaiting: int = 0
    """Records of the event (output, routed copies, dead-letter) not yet acknowledged."""

    @property
    def tp(self) -> tuple[str, int]:
        """Its topic and partition."""
        return self.topic, self.partition


def _encoded(pending: Pending) -> EncodedEvent | None:
    return pending.encoded


class Worker:
    """One consumer-group member: reads the input topics and writes enriched events."""

    def __init__(
        self,
        settings: Settings,
        classifier: Classifier,
        metrics: Metrics | None = None,
        health: Health | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.classifier = classifier
        self.metrics = metrics or Metrics()
        self.health = health or Health()
        self._clock = clock
        self._router = Router.from_settings(settings)
        batching = settings.batching
        self._batcher: MicroBatcher[Pending] = MicroBatcher(
            batching.max_events, batching.max_tokens, batching.max_wait_ms / 1000, clock
        )
        self._tracker = OffsetTracker()
        self._runner: InferenceRunner[Pending] = InferenceRunner(classifier, _encoded)
        self._max_in_flight = IN_FLIGHT_BATCHES * batching.max_events
        self._paused = False
        self._paused_partitions: set[tuple[str, int]] = set()
        self._assigned: frozenset[tuple[str, int]] = frozenset()
        self._fatal: errors.ZscError | None = None
        self._next_lag_at = 0.0
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None
        self._checkpointer: Checkpointer | None = None

    @property
    def assignment(self) -> frozenset[tuple[str, int]]:
        """The input partitions this worker owns now."""
        return self._assigned

    def run(self, stop: threading.Event) -> None:
        """Process until `stop` is set, then shut down cleanly (see `_shutdown`)."""
        self._producer = make_producer(self.settings)
        self._consumer = make_consumer(
            self.settings,
            self._on_assign,
            self._on_revoke,
            self._on_lost,
            self._router.input_topics,
        )
        if self.settings.processing_guarantee == "exactly-once":
            self._checkpointer = TransactionalCommitter(
                self._consumer, self._producer, self._tracker, self._clock
            )
        else:
            self._checkpointer = OffsetCommitter(
                self._consumer, self._producer, self._tracker, self.settings.shutdown_timeout_s
            )
        self._checkpointer.start()
        self._runner.start()
        self.health.model_loaded.set()
        log.info("worker started: topics %s", self._router.input_topics)
        try:
            while not stop.is_set() and self._fatal is None:
                self._step()
        finally:
            self._shutdown()
        if self._fatal is not None:
            raise self._fatal

    def _step(self) -> None:
        consumer, producer = self._live()
        producer.poll(0)
        for message in consumer.consume(CONSUME_MAX_RECORDS, self._poll_timeout()):
            self._ingest(message)
        if (batch := self._batcher.due()) is not None:
            self._submit(batch)
        for completed in self._runner.completed():
            self._publish(completed)
        if not self._live_checkpointer().checkpoint():
            self._rewind()
        self._apply_backpressure()
        self._update_lag()

    def _poll_timeout(self) -> float:
        until_due = self._batcher.seconds_until_due()
        return MAX_POLL_BLOCK_S if until_due is None else min(until_due, MAX_POLL_BLOCK_S)

    def _ingest(self, message: Message) -> None:
        if (error := message.error()) is not None:
            self._on_consume_error(error)
            return
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        assert topic is not None and partition is not None and offset is not None
        self.metrics.consumed.labels(topic).inc()
        epoch = self._tracker.track((topic, partition), offset)
        pending = Pending(
            topic,
            partition,
            offset,
            epoch,
            message.key(),
            message.value(),
            message.headers(),
            message.timestamp()[1],
            self._router.route(topic),
        )
        decoded = serde.decode_event(pending.value, pending.route)
        pairs = max_pair_tokens = 0
        if isinstance(decoded, serde.Rejection):
            # It rides in the batch, unscored, so that every partition's results
            # are produced in offset order (which exactly-once relies on).
            pending.rejection = decoded
        else:
            pending.event = decoded
            task = pending.route.task_for(decoded.labels)
            pending.encoded = self.classifier.encode(decoded.text, task)
            pairs, max_pair_tokens = pending.encoded.pair_count, pending.encoded.max_pair_tokens
        for batch in self._batcher.add(pending, pairs, max_pair_tokens):
            self._submit(batch)

    def _on_consume_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._fatal = errors.KafkaError(
                f"consumer failed: {error.str()}", code=error.code(), retriable=False
            )
        else:
            log.warning("consumer: %s", error.str())

    def _submit(self, batch: Batch[Pending]) -> None:
        self.metrics.batch_size.observe(len(batch.items))
        self.metrics.batch_tokens.observe(batch.tokens)
        self._runner.submit(batch.items)

    def _publish(self, completed: Completed[Pending]) -> None:
        self.metrics.inference_seconds.observe(completed.seconds)
        if completed.failed:
            self.metrics.inference_failures.inc()
        for pending, outcome in zip(completed.items, completed.outcomes, strict=True):
            if not self._tracker.is_current(pending.tp, pending.epoch):
                continue  # revoked while on the model: its new owner classifies it again
            if pending.rejection is not None:
                self._dead_letter(pending, pending.rejection)
            elif isinstance(outcome, Scores):
                self._produce_output(pending, outcome)
            else:
                reason = serde.Rejection(serde.INFERENCE_FAILED, f"the model failed: {outcome}")
                self._dead_letter(pending, reason)

    def _produce_output(self, pending: Pending, scores: Scores) -> None:
        assert pending.event is not None and pending.encoded is not None
        route, task = pending.route, pending.encoded.task
        result = serde.classification(
            route,
            task,
            scores,
            model=self.classifier.model_name,
            label_ids=self.classifier.label_ids,
            source=(pending.topic, pending.partition, pending.offset),
        )
        value = serde.encode_output(pending.event.body, result)
        routed = route.destinations(dict(zip(task.labels, scores.scores, strict=True)))
        topics = [route.output, *routed]
        pending.awaiting += len(topics)
        for topic in topics:
            self._produce(
                topic, value, pending.key, pending.headers, self._on_output(pending, topic)
            )
            self._acknowledge(pending, produced=True)

    def _on_output(
        self, pending: Pending, topic: str
    ) -> Callable[[KafkaError | None, Message], None]:
        """The delivery report of an output (or routed copy) of `pending` to `topic`."""

        def delivered(error: KafkaError | None, _message: Message) -> None:
            if error is None:
                if topic == pending.route.output:
                    self.metrics.classified.labels(pending.topic).inc()
                    self._observe_end_to_end(pending)
                self._acknowledge(pending, produced=False)
            elif not self._live_checkpointer().ack_on_produce:
                pending.awaiting -= 1  # this record will never be acknowledged
                reason = f"the topic {topic!r} rejected its output: {error.str()}"
                self._dead_letter(pending, serde.Rejection(serde.OUTPUT_REJECTED, reason))
            else:
                log.warning("output lost with its transaction, which aborts: %s", error.str())

        return delivered

    def _dead_letter(self, pending: Pending, reason: serde.Rejection) -> None:
        headers: Headers = [
            *(pending.headers or []),
            (ERROR_TYPE, reason.error_type.encode()),
            (ERROR_MESSAGE, reason.message.encode()),
            (SOURCE_TOPIC, pending.topic.encode()),
            (SOURCE_PARTITION, str(pending.partition).encode()),
            (SOURCE_OFFSET, str(pending.offset).encode()),
        ]
        log.warning(
            "dead-lettering %s[%d]@%d: %s",
            pending.topic,
            pending.partition,
            pending.offset,
            reason.error_type,
        )

        def delivered(error: KafkaError | None, _message: Message) -> None:
            if error is None:
                self.metrics.dead_lettered.labels(pending.topic, reason.error_type).inc()
                self._acknowledge(pending, produced=False)
            elif self._live_checkpointer().ack_on_produce:
                log.warning("dead-letter lost with its transaction, which aborts: %s", error.str())
            else:
                # Nothing is committed past this record, so a restart retries it.
                self._fatal = errors.ProduceError(
                    f"dead-letter topic {pending.route.dead_letter!r} rejected a record: "
                    f"{error.str()}",
                    code=error.code(),
                )

        pending.awaiting += 1
        self._produce(pending.route.dead_letter, pending.value, pending.key, headers, delivered)
        self._acknowledge(pending, produced=True)

    def _acknowledge(self, pending: Pending, produced: bool) -> None:
        """Mark the event's offset done once all its records are produced (exactly-once)
        or delivered (at-least-once)."""
        if produced == self._live_checkpointer().ack_on_produce:
            pending.awaiting -= 1
            if pending.awaiting <= 0:
                self._tracker.ack(pending.tp, pending.offset, pending.epoch)

    def _produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Headers | None,
        on_delivery: Callable[[KafkaError | None, Message], None],
    ) -> None:
        _, producer = self._live()
        while True:
            try:
                producer.produce(topic, value, key, headers=headers, on_delivery=on_delivery)
                return
            except BufferError:
                # The local queue is full: serve delivery reports until it has room.
                producer.poll(MAX_POLL_BLOCK_S)
            except KafkaException as exc:
                raise translate(exc, f"cannot produce to {topic!r}") from None

    def _observe_end_to_end(self, pending: Pending) -> None:
        if pending.timestamp_ms > 0:
            self.metrics.end_to_end_seconds.observe(
                max(0.0, time.time() - pending.timestamp_ms / 1000)
            )

    def _apply_backpressure(self) -> None:
        """Pause every assigned partition while too many events are in flight."""
        in_flight = self._tracker.in_flight()
        if not self._paused and in_flight >= self._max_in_flight:
            self._paused = True
            self.metrics.paused.set(1)
        elif self._paused and in_flight <= self._max_in_flight // 2:
            self._paused = False
            self.metrics.paused.set(0)
        consumer, _ = self._live()
        assignment = {(tp.topic, tp.partition) for tp in consumer.assignment()}
        # Partitions assigned while paused are paused too; revoked ones drop out.
        change = (
            assignment - self._paused_partitions
            if self._paused
            else self._paused_partitions & assignment
        )
        if change:
            partitions = [TopicPartition(topic, partition) for topic, partition in change]
            (consumer.pause if self._paused else consumer.resume)(partitions)
        self._paused_partitions = assignment if self._paused else set()

    def _update_lag(self) -> None:
        now = self._clock()
        if now < self._next_lag_at:
            return
        self._next_lag_at = now + LAG_INTERVAL_S
        consumer, _ = self._live()
        for tp in consumer.assignment():
            try:
                _, high = consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            position = self._tracker.position((tp.topic, tp.partition))
            if high >= 0 and position is not None:
                lag = max(0, high - position)
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels("assign").inc()
        for tp in partitions:
            self._tracker.assign((tp.topic, tp.partition))
        self._assigned |= {(tp.topic, tp.partition) for tp in partitions}
        self.health.group_joined.set()
        log.info("assigned %s", _describe(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels("revoke").inc()
        self._live_checkpointer().revoked(partitions)
        self._forget(partitions)
        log.info("revoked %s", _describe(partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels("lost").inc()
        self._forget(partitions)
        if self._live_checkpointer().lost():
            self._rewind()
        log.warning(
            "lost %s: their uncommitted events go to their next owner", _describe(partitions)
        )

    def _forget(self, partitions: list[TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._assigned -= gone
        for tp in gone:
            self._tracker.revoke(tp)
        self._batcher.discard(lambda pending: pending.tp not in gone)

    def _rewind(self) -> None:
        """Forget all work not yet durable and read again from the committed offsets."""
        consumer, _ = self._live()
        assignment = consumer.assignment()
        for tp in assignment:
            self._tracker.assign((tp.topic, tp.partition))
        self._batcher.discard(lambda pending: False)
        try:
            for tp in consumer.committed(assignment, timeout=self.settings.shutdown_timeout_s):
                # No commit yet: from the start, as auto.offset.reset=earliest would.
                offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
                consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
        except KafkaException as exc:
            raise translate(exc, "cannot rewind to the committed offsets") from None
        log.warning("rewound %s to the committed offsets", _describe(assignment))

    def _shutdown(self) -> None:
        """Finish the in-flight batches, deliver, commit, close; abandon what the timeout cuts."""
        deadline = self._clock() + self.settings.shutdown_timeout_s
        consumer, producer = self._live()
        try:
            if self._fatal is None:
                if (batch := self._batcher.flush()) is not None:
                    self._submit(batch)
                while self._runner.pending and self._clock() < deadline:
                    for completed in self._runner.completed(timeout=MAX_POLL_BLOCK_S):
                        self._publish(completed)
                    producer.poll(0)
            remaining = producer.flush(max(0.0, deadline - self._clock()))
            if remaining:
                log.warning(
                    "shutdown: %d records undelivered; their inputs stay uncommitted", remaining
                )
            self._live_checkpointer().checkpoint(force=True)
        finally:
            self._runner.stop(timeout=max(0.0, deadline - self._clock()))
            consumer.close()
            log.info("worker stopped")

    def _live(self) -> tuple[Consumer, Producer]:
        assert self._consumer is not None and self._producer is not None, "run() not started"
        return self._consumer, self._producer

    def _live_checkpointer(self) -> Checkpointer:
        assert self._checkpointer is not None, "run() not started"
        return self._checkpointer


def _describe(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"
