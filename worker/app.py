"""The worker loop: poll, decode, route, batch, classify, produce, store offsets, commit."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from config.settings import Settings
from worker import errors, serde
from worker.activity import Activity
from worker.batching import Batch, MicroBatcher
from worker.checkpoint import Checkpointer, OffsetCommitter, TransactionalCommitter
from worker.inference import Completed, InferenceRunner
from worker.kafka.clients import (
    DeliveryFailure,
    ErrorCallback,
    RebalanceCallback,
    broker_unreachable,
    delivery_failure,
    make_consumer,
    make_producer,
    translate,
)
from worker.kafka.records import Headers, headers_of
from worker.metrics import Health, Metrics
from worker.nli.base import Classifier, EncodedEvent, Scores
from worker.offsets import OffsetTracker
from worker.rejections import RecordId, RefusedRecords
from worker.routing import Route, Router

log = logging.getLogger(__name__)

ConsumerFactory = Callable[
    [
        Settings,
        RebalanceCallback,
        RebalanceCallback,
        RebalanceCallback,
        list[str],
        ErrorCallback | None,
    ],
    Consumer,
]
"""Makes the subscribed consumer (worker.kafka.clients.make_consumer); a seam for stubs."""
ProducerFactory = Callable[[Settings, ErrorCallback | None], Producer]
"""Makes a producer (worker.kafka.clients.make_producer); a seam for stubs."""

# Records taken per pass of the loop: enough to fill a batch without starving the
# loop. Never more than the in-flight bound has room for (see IN_FLIGHT_BATCHES).
CONSUME_MAX_RECORDS = 500
# Longest the loop blocks waiting for a record, so finished batches are produced promptly.
MAX_POLL_BLOCK_S = 0.02
# In-flight events (consumed, not yet committable) per configured batch before the
# partitions are paused; resumed once back under half of it. Two batches on the
# accelerator's queue and one filling keep it busy; more only adds memory.
IN_FLIGHT_BATCHES = 4
# How often consumer lag is recomputed from the cached watermarks.
LAG_INTERVAL_S = 5.0
# While no broker is reachable, how often a metadata request checks whether one
# answers again, and how long it may block the loop (nothing flows meanwhile).
PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 0.25
# Longest wait for the producer's queue to drain around a record produced alone
# (see worker.rejections): milliseconds on a healthy broker.
ALONE_FLUSH_TIMEOUT_S = 2.0
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
    read_at: float
    """When it was read, on the worker's clock."""
    event: serde.DecodedEvent | None = None
    encoded: EncodedEvent | None = None
    rejection: serde.Rejection | None = None
    awaiting: int = 0
    """Records of the event (output, routed copies, dead-letter) not yet acknowledged."""

    @property
    def tp(self) -> tuple[str, int]:
        """Its topic and partition."""
        return self.topic, self.partition

    @property
    def source(self) -> tuple[str, int, int]:
        """Its topic, partition and offset."""
        return self.topic, self.partition, self.offset


@dataclass(slots=True)
class Outgoing:
    """A record an event produces: its output, a routed copy, or its dead-letter record."""

    pending: Pending
    topic: str
    value: bytes | None
    headers: Headers | None
    rejection: serde.Rejection | None
    """Why it is dead-lettered; None for an output."""
    alone: bool = False
    """Produced with nothing else in the producer's queue, so in a batch of its own."""
    without_value: bool = False
    """A dead-letter record sent again without the value its topic refused."""

    @property
    def id(self) -> RecordId:
        """Which record this is, across redos."""
        return RecordId(*self.pending.source, self.topic, self.without_value)


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
        consumer_factory: ConsumerFactory = make_consumer,
        producer_factory: ProducerFactory = make_producer,
    ) -> None:
        self.settings = settings
        self._make_consumer = consumer_factory
        self._make_producer = producer_factory
        self.classifier = classifier
        self.metrics = metrics or Metrics()
        self.metrics.model.info(classifier.info)
        self.health = health or Health()
        self._clock = clock
        self._router = Router.from_settings(settings)
        batching = settings.batching
        self._batcher: MicroBatcher[Pending] = MicroBatcher(
            batching.max_events, batching.max_tokens, batching.max_wait_ms / 1000, clock
        )
        self._tracker = OffsetTracker()
        self._refused = RefusedRecords()
        # At-least-once: records whose delivery failed, produced again next pass.
        self._redo: list[Outgoing] = []
        # Where each partition was first read since it was assigned: where a
        # rewind restarts it when this worker has committed nothing of it yet.
        self._first_read: dict[tuple[str, int], int] = {}
        self._rewind_due = False
        self._next_probe_at = 0.0
        self._runner: InferenceRunner[Pending] = InferenceRunner(classifier, _encoded, clock)
        self._max_in_flight = IN_FLIGHT_BATCHES * batching.max_events
        self._paused = False
        self._paused_partitions: set[tuple[str, int]] = set()
        self._assigned: frozenset[tuple[str, int]] = frozenset()
        # Assigned since backpressure last set their pause state.
        self._fresh: set[tuple[str, int]] = set()
        self._fatal: errors.ZscError | None = None
        self._next_lag_at = 0.0
        self._activity = Activity(self.metrics, clock)
        self._consumer: Consumer | None = None
        self._checkpointer: Checkpointer | None = None

    @property
    def assignment(self) -> frozenset[tuple[str, int]]:
        """The input partitions this worker owns now."""
        return self._assigned

    def run(self, stop: threading.Event) -> None:
        """Process until `stop` is set, then shut down cleanly (see `_shutdown`)."""
        self._consumer = self._make_consumer(
            self.settings,
            self._on_assign,
            self._on_revoke,
            self._on_lost,
            self._router.input_topics,
            self._on_consumer_error,
        )
        if self.settings.processing_guarantee == "exactly-once":
            self._checkpointer = TransactionalCommitter(
                self._consumer,
                lambda: self._make_producer(self.settings, self._on_producer_error),
                self._tracker,
                self._clock,
            )
        else:
            self._checkpointer = OffsetCommitter(
                self._consumer,
                self._make_producer(self.settings, self._on_producer_error),
                self._tracker,
                self.settings.shutdown_timeout_s,
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
        checkpointer = self._live_checkpointer()
        producer.poll(0)
        # Paused partitions return nothing, but the call keeps the consumer in its
        # group (max.poll.interval.ms) and serves rebalances.
        room = max(1, min(CONSUME_MAX_RECORDS, self._max_in_flight - self._tracker.in_flight()))
        self._read(consumer, room)
        # After the records a rebalance callback came with, which the rewind discards.
        if self._rewind_due:
            self._rewind()
        if (batch := self._batcher.due()) is not None:
            self._submit(batch)
        # While a transaction ends, results wait (and backpressure builds up).
        if checkpointer.producing:
            self._produce_again()
            for completed in self._runner.completed():
                self._publish(completed)
        if not checkpointer.checkpoint():
            self._rewind()
        if self._refused:
            self._refused.prune(checkpointer.durable_positions())
        self._apply_backpressure()
        self._update_lag()
        self._activity.due()
        self._probe_broker()

    def _poll_timeout(self) -> float:
        until_due = self._batcher.seconds_until_due()
        return MAX_POLL_BLOCK_S if until_due is None else min(until_due, MAX_POLL_BLOCK_S)

    def _read(self, consumer: Consumer, room: int) -> None:
        """Take up to `room` records, each tracked before the next is fetched.

        One poll a record, not consume(n): a rebalance callback served in the
        middle of a consume(n) call leaves the records fetched before it in the
        same list as those after it, with nothing to tell them apart (a record
        of a revoked partition, or one of its earlier assignment, would be
        tracked as if of the new one). poll hands out a record only once every
        callback before it has run, and librdkafka discards what a rebalance or
        seek made outdated.
        """
        timeout = self._poll_timeout()
        for _ in range(room):
            message = consumer.poll(timeout)
            if message is None:
                return
            self._ingest(message)
            timeout = 0.0

    def _ingest(self, message: Message) -> None:
        if (error := message.error()) is not None:
            self._on_consumer_error(error)
            return
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        assert topic is not None and partition is not None and offset is not None
        self.metrics.consumed.labels(topic).inc()
        epoch = self._tracker.track((topic, partition), offset)
        if epoch is None:
            self.metrics.stale_records.labels(topic).inc()
            log.debug("dropped stale %s[%d]@%d: its owner reads it", topic, partition, offset)
            return
        self._first_read.setdefault((topic, partition), offset)
        pending = Pending(
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
        decoded = serde.decode_event(pending.value, pending.route)
        pairs = max_pair_tokens = 0
        if isinstance(decoded, serde.Rejection):
            # It rides in the batch, unscored, so that every partition's results
            # are produced in offset order (which exactly-once relies on).
            pending.rejection = decoded
        else:
            pending.event = decoded
            task = pending.route.task_for(decoded.labels)
            try:
                with self.metrics.tokenization_seconds.time():
                    pending.encoded = self.classifier.encode(decoded.text, task)
            except Exception as exc:
                # The tokenizer runs here, on the polling thread: a text it cannot
                # take is that event's problem, not the worker's.
                reason = f"the text cannot be tokenized: {exc}"
                pending.rejection = serde.Rejection(serde.INFERENCE_FAILED, reason)
            else:
                pairs = pending.encoded.pair_count
                max_pair_tokens = pending.encoded.max_pair_tokens
        for batch in self._batcher.add(pending, pairs, max_pair_tokens):
            self._submit(batch)

    def _on_consumer_error(self, error: KafkaError) -> None:
        """The consumer's error callback (served by poll), and errors that poll hands out."""
        if error.fatal():
            self._fatal = errors.KafkaError(
                f"the consumer failed: {error.str()}", code=error.code(), retriable=False
            )
        else:
            self._on_client_error(error)

    def _on_producer_error(self, error: KafkaError) -> None:
        """The producer's error callback (served by poll and flush)."""
        if error.fatal() and not self._live_checkpointer().ack_on_produce:
            self._fatal = errors.KafkaError(
                f"the producer failed: {error.str()}", code=error.code(), retriable=False
            )
        else:
            # A transactional producer's fatal error reaches the checkpointer
            # too, at its next call, and it replaces the producer.
            self._on_client_error(error)

    def _on_client_error(self, error: KafkaError) -> None:
        if broker_unreachable(error):
            self.health.broker_down(error.str())
        else:
            log.warning("kafka: %s", error.str())

    def _probe_broker(self) -> None:
        """While no broker is reachable, ask for metadata now and then: ready again if it comes."""
        now = self._clock()
        if self.health.broker_reachable.is_set() or now < self._next_probe_at:
            return
        self._next_probe_at = now + PROBE_INTERVAL_S
        consumer, _ = self._live()
        try:
            consumer.list_topics(self._router.input_topics[0], timeout=PROBE_TIMEOUT_S)
        except KafkaException:
            return
        self.health.broker_up()

    def _submit(self, batch: Batch[Pending]) -> None:
        self.metrics.batch_size.observe(len(batch.items))
        self.metrics.batch_tokens.observe(batch.tokens)
        log.debug("batch of %d events, %d padded tokens", len(batch.items), batch.tokens)
        self._runner.submit(batch.items)

    def _publish(self, completed: Completed[Pending]) -> None:
        self.metrics.inference_seconds.observe(completed.seconds)
        if completed.failed:
            self.metrics.inference_failures.inc()
        for pending, outcome in zip(completed.items, completed.outcomes, strict=True):
            self.metrics.queue_wait_seconds.observe(max(0.0, completed.started - pending.read_at))
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
        try:
            value = serde.encode_output(pending.event.body, result)
        except orjson.JSONEncodeError as exc:
            # orjson reads JSON nested 1024 deep but writes only 254 levels.
            reason = f"the event cannot be written back as JSON: {exc}"
            self._dead_letter(pending, serde.Rejection(serde.INVALID_JSON, reason))
            return
        scores_by_label = dict(zip(task.labels, scores.scores, strict=True))
        topics = [route.output, *route.destinations(scores_by_label)]
        pending.awaiting += len(topics)
        for topic in topics:
            self._send(Outgoing(pending, topic, value, pending.headers, None))

    def _dead_letter(
        self, pending: Pending, reason: serde.Rejection, keep_value: bool = True
    ) -> None:
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
        pending.awaiting += 1
        value = pending.value if keep_value else None
        dead_letter = pending.route.dead_letter
        self._send(
            Outgoing(pending, dead_letter, value, headers, reason, without_value=not keep_value)
        )

    def _send(self, record: Outgoing) -> None:
        """Produce an event's record: alone if its topic refused it in company, and if
        it refused it alone, dead-letter the event instead (see worker.rejections)."""
        if (refusal := self._refused.condemnation(record.id)) is not None:
            self._refused_alone(record, refusal)
        elif self._refused.suspected(record.id):
            self._produce_alone(record)
        else:
            self._produce(record)

    def _refused_alone(self, record: Outgoing, refusal: str) -> None:
        """The topic refused the record itself: dead-letter the event instead.

        A dead-letter record refused for good is sent again without its value
        (too large even there, say): its headers still say where the input is.
        One refused without a value stops the worker (nothing is committed past
        it, so a restart retries it) rather than drop an event silently.
        """
        pending, rejection = record.pending, record.rejection
        if rejection is not None and record.value is None:
            self._fatal = errors.ProduceError(
                f"dead-letter topic {record.topic!r} refused a record: {refusal}"
            )
            return
        pending.awaiting -= 1  # this record will never be acknowledged
        if rejection is None:
            message = f"the output topic {record.topic!r} refused it: {refusal}"
            self._dead_letter(pending, serde.Rejection(serde.OUTPUT_REJECTED, message))
        else:
            assert record.value is not None
            message = (
                f"{rejection.message}; the dead-letter topic refused the value "
                f"({len(record.value)} bytes: {refusal}): read it at the source offset"
            )
            self._dead_letter(pending, serde.Rejection(rejection.error_type, message), False)

    def _produce_alone(self, record: Outgoing) -> None:
        """Produce with an empty queue before and after, so the record has a batch of its own."""
        _, producer = self._live()
        record.alone = producer.flush(ALONE_FLUSH_TIMEOUT_S) == 0
        self._produce(record)
        if producer.flush(ALONE_FLUSH_TIMEOUT_S) != 0:
            record.alone = False  # still queued: what is produced next may join it

    def _produce(self, record: Outgoing) -> None:
        _, producer = self._live()

        def delivered(error: KafkaError | None, _message: Message) -> None:
            self._delivered(record, error)

        while True:
            try:
                producer.produce(
                    record.topic,
                    record.value,
                    record.pending.key,
                    headers=record.headers,
                    on_delivery=delivered,
                )
                break
            except BufferError:
                # The local queue is full: serve delivery reports until it has room.
                producer.poll(MAX_POLL_BLOCK_S)
            except KafkaException as exc:
                error = exc.args[0]
                if delivery_failure(error) is DeliveryFailure.REJECTED:
                    # Over the producer's own message.max.bytes: refused alone, at once.
                    self._refused_alone(record, error.str())
                    return
                if (
                    error.code() == KafkaError._STATE or error.fatal()
                ) and not self._live_checkpointer().abandon():
                    # A transaction that must abort (a record of it was refused)
                    # or a fenced producer takes no more records: end it now and
                    # redo its events. What is left of this pass belongs to the
                    # old epochs.
                    self._rewind()
                    return
                raise translate(exc, f"cannot produce to {record.topic!r}") from None
        self._acknowledge(record.pending, produced=True)

    def _delivered(self, record: Outgoing, error: KafkaError | None) -> None:
        """A delivery report: acknowledge, or decide what the failure means."""
        pending, checkpointer = record.pending, self._live_checkpointer()
        if error is None:
            self._refused.delivered(record.id)
            self.health.broker_up()
            if record.rejection is None and record.topic == pending.route.output:
                self.metrics.classified.labels(pending.topic).inc()
                self._observe_end_to_end(pending)
            elif record.rejection is not None:
                self.metrics.dead_lettered.labels(pending.topic, record.rejection.error_type).inc()
            self._acknowledge(pending, produced=False)
            return
        failure = delivery_failure(error)
        if failure is DeliveryFailure.FATAL:
            self._fatal = errors.ProduceError(
                f"topic {record.topic!r} refused a record: {error.str()}", code=error.code()
            )
            return
        if failure is DeliveryFailure.REJECTED:
            self._refused.refused(record.id, record.alone, error.str())
        if checkpointer.ack_on_produce:
            # Its transaction aborts at the next checkpoint; the redo retries it.
            checkpointer.record_failed()
            log.info("record for %s lost with its transaction: %s", pending.source, error.str())
        elif self._tracker.is_current(pending.tp, pending.epoch):
            log.info("record for %s to be produced again: %s", pending.source, error.str())
            self._redo.append(record)

    def _produce_again(self) -> None:
        """At-least-once: produce the records whose delivery failed once more."""
        redo, self._redo = self._redo, []
        for record in redo:
            if self._tracker.is_current(record.pending.tp, record.pending.epoch):
                self._send(record)

    def _acknowledge(self, pending: Pending, produced: bool) -> None:
        """Mark the event's offset done once all its records are produced (exactly-once)
        or delivered (at-least-once)."""
        if produced == self._live_checkpointer().ack_on_produce:
            pending.awaiting -= 1
            if pending.awaiting <= 0:
                self._tracker.ack(pending.tp, pending.offset, pending.epoch)

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
        fresh, self._fresh = self._fresh & assignment, self._fresh - assignment
        # Partitions assigned while paused are paused too; revoked ones drop out.
        # A fresh one is set either way: it may come paused from an earlier
        # assignment of it, whatever this worker's record of it says.
        change = (
            assignment - (self._paused_partitions - fresh)
            if self._paused
            else (self._paused_partitions & assignment) | fresh
        )
        if change:
            partitions = [TopicPartition(topic, partition) for topic, partition in change]
            if self._paused:
                consumer.pause(partitions)
            else:
                self._resume(consumer, partitions)
        self._paused_partitions = assignment if self._paused else set()
        self.metrics.paused_partitions.set(len(self._paused_partitions))

    def _resume(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Resume, and fetch again at once from where each partition stands.

        A pause drops what librdkafka prefetched of a partition, and after a
        resume its fetcher may sleep for up to a second before fetching again:
        with a backlog and backpressure cycling, that cut throughput thirtyfold.
        A seek to the current position starts the fetch at once.
        """
        consumer.resume(partitions)
        for tp in consumer.position(partitions):
            if tp.offset >= 0:  # else nothing read yet: it starts from the commit
                consumer.seek(tp)

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
            self._tracker.assign((tp.topic, tp.partition), tp.offset if tp.offset >= 0 else None)
            self._first_read.pop((tp.topic, tp.partition), None)
        fresh = {(tp.topic, tp.partition) for tp in partitions}
        self._assigned |= fresh
        # librdkafka keeps a partition's pause across its revocation or loss and
        # a new assignment; backpressure sets each one as it wants it.
        self._fresh |= fresh
        self.health.group_joined.set()
        log.info("assigned %s", _describe(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels("revoke").inc()
        if not self._live_checkpointer().revoked(partitions):
            self._rewind_due = True
        self._forget(partitions)
        log.info("revoked %s", _describe(partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels("lost").inc()
        self._forget(partitions)
        if not self._live_checkpointer().lost():
            self._rewind_due = True
        log.warning(
            "lost %s: their uncommitted events go to their next owner", _describe(partitions)
        )

    def _forget(self, partitions: list[TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._assigned -= gone
        self._fresh -= gone
        for tp in gone:
            self._tracker.revoke(tp)
            self._first_read.pop(tp, None)
        self._refused.forget(gone)
        self._batcher.discard(lambda pending: pending.tp not in gone)
        for topic, partition in gone:
            # Its new owner reports its lag now; a value left here would go stale.
            with contextlib.suppress(KeyError):
                self.metrics.consumer_lag.remove(topic, str(partition))

    def _rewind(self) -> None:
        """Forget all work not yet durable and read each partition again from where it is.

        Local only (the restart points are known here), so it works while the
        broker is away: an aborted transaction during an outage is the usual case.
        """
        self._rewind_due = False
        consumer, _ = self._live()
        durable = self._live_checkpointer().durable_positions()
        restarts = []
        for tp in self._assigned:
            offset = durable.get(tp, self._first_read.get(tp))
            self._tracker.assign(tp, offset)
            if offset is not None:  # None: nothing read since it was assigned
                self._first_read[tp] = offset
                restarts.append(TopicPartition(tp[0], tp[1], offset))
        self._batcher.discard(lambda pending: False)
        self._redo.clear()
        try:
            for restart in restarts:
                consumer.seek(restart)
        except KafkaException as exc:
            raise translate(exc, "cannot rewind to the committed offsets") from None
        log.warning("rewound %s to the committed offsets", _describe(restarts))

    def _shutdown(self) -> None:
        """Finish the in-flight batches, deliver, commit, close; abandon what the timeout cuts.

        Work an aborted transaction takes with it is not redone here: the
        partitions' next owner (or this worker's next start) redoes it.
        """
        deadline = self._clock() + self.settings.shutdown_timeout_s
        consumer, producer = self._live()
        checkpointer = self._live_checkpointer()
        try:
            if self._fatal is None:
                if (batch := self._batcher.flush()) is not None:
                    self._submit(batch)
                # Nothing more is read, but the consumer is still polled: waiting
                # longer than max.poll.interval.ms would make it leave the group,
                # and the group would refuse the final commit.
                consumer.pause(consumer.assignment())
                while (self._runner.pending or self._redo) and self._clock() < deadline:
                    if checkpointer.producing:
                        self._produce_again()
                        for completed in self._runner.completed(timeout=MAX_POLL_BLOCK_S):
                            self._publish(completed)
                    elif not checkpointer.checkpoint():
                        break
                    producer.poll(0)
                    # Records of partitions assigned meanwhile are left uncommitted.
                    consumer.consume(CONSUME_MAX_RECORDS, 0)
            remaining = producer.flush(max(0.0, deadline - self._clock()))
            if remaining:
                log.warning(
                    "shutdown: %d records undelivered; their inputs stay uncommitted", remaining
                )
            while checkpointer.checkpoint(force=True) and not checkpointer.producing:
                if self._clock() >= deadline:
                    break
        finally:
            self._runner.stop(timeout=max(0.0, deadline - self._clock()))
            consumer.close()
            log.info("worker stopped")

    def _live(self) -> tuple[Consumer, Producer]:
        assert self._consumer is not None and self._checkpointer is not None, "run() not started"
        return self._consumer, self._checkpointer.producer

    def _live_checkpointer(self) -> Checkpointer:
        assert self._checkpointer is not None, "run() not started"
        return self._checkpointer


def _describe(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"
