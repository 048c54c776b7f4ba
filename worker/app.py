"""The worker loop: poll, intake, batch, infer, publish, checkpoint.

Each stage has its own owner: `Intake` turns records into events,
`MicroBatcher` groups them, `InferenceRunner` scores them on its own thread
and gives them back as they are scored, `Release` says which may be published
(at once, or in offset order under exactly-once), `Outputs` turns results
into records, `Delivery` produces them and makes
offsets durable under the configured guarantee, `FlowControl` pauses and
resumes reading, `Rebalance` follows the assignment and rewinds, and
`Connectivity` reads client errors. The loop only calls them in order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, Producer

from config.settings import Settings
from worker.activity import Activity
from worker.batching import Batch, ModelBatchers
from worker.connectivity import Connectivity
from worker.control import ControlReader, ControlTopic, topic_exists
from worker.delivery import AtLeastOnce, Delivery, ExactlyOnce
from worker.errors import ZscError
from worker.flow import READ_MAX_RECORDS, FlowControl
from worker.formats import Formats
from worker.inference import Completed, InferenceRunner
from worker.inflight import InFlightEvent
from worker.intake import Intake, batch_cost, encoded
from worker.kafka.clients import (
    ErrorCallback,
    make_consumer_unsubscribed,
    make_control_consumer,
    make_producer,
    subscribe,
)
from worker.live_topics import LiveTopics
from worker.metrics import Health, Metrics
from worker.models import Models
from worker.offsets import OffsetTracker, Partition
from worker.outputs import Outputs
from worker.rebalance import Rebalance
from worker.registry import RegistryClientFactory, RegistryStatus, make_registry_client
from worker.release import Release
from worker.routing import Router

log = logging.getLogger(__name__)

ConsumerFactory = Callable[[Settings, ErrorCallback | None], Consumer]
"""Makes the consumer, not subscribed yet (worker.kafka.clients.make_consumer_unsubscribed);
a seam for stubs."""
ProducerFactory = Callable[[Settings, ErrorCallback | None], Producer]
"""Makes a producer (worker.kafka.clients.make_producer); a seam for stubs."""

# Longest the loop blocks waiting for a record, so finished batches are produced promptly.
MAX_POLL_BLOCK_S = 0.02


class Worker:
    """One consumer-group member: reads the input topics and writes enriched events.

    `models` is every model the topics use, loaded (`Models.load`).
    """

    def __init__(
        self,
        settings: Settings,
        models: Models,
        metrics: Metrics | None = None,
        health: Health | None = None,
        clock: Callable[[], float] = time.monotonic,
        consumer_factory: ConsumerFactory = make_consumer_unsubscribed,
        producer_factory: ProducerFactory = make_producer,
        registry_factory: RegistryClientFactory = make_registry_client,
    ) -> None:
        self.settings = settings
        self.models = models
        self.metrics = metrics or Metrics()
        for model in self.models:
            self.metrics.model_served(model.info)
        self.health = health or Health()
        self._clock = clock
        self._make_consumer = consumer_factory
        self._make_producer = producer_factory
        self._make_registry = registry_factory
        self._loop: Loop | None = None

    @property
    def assignment(self) -> frozenset[Partition]:
        """The input partitions this worker owns now."""
        return self._loop.rebalance.assigned if self._loop is not None else frozenset()

    def run(self, stop: threading.Event) -> None:
        """Process until `stop` is set, then shut down cleanly (see `Loop.shutdown`)."""
        self._loop = self._build()
        self._loop.run(stop)

    def _build(self) -> Loop:
        """Every stage, each given its clients, and the consumer subscribed."""
        settings, metrics, health, clock = self.settings, self.metrics, self.health, self._clock
        router = Router.from_settings(settings)
        exactly_once = settings.processing_guarantee == "exactly-once"
        connectivity = Connectivity(health, router.input_topics[0], clock)
        for route in router.routes:
            metrics.config_in_force(route.input, route.version)
        control = self._control_topic(router, connectivity) if settings.control_topic else None
        formats = Formats.from_settings(
            settings, RegistryStatus(health, clock), self._make_registry
        )
        consumer = self._make_consumer(settings, connectivity.on_consumer_error)
        tracker = OffsetTracker()

        def new_producer() -> Producer:
            return self._make_producer(settings, connectivity.on_producer_error)

        delivery: Delivery = (
            ExactlyOnce(consumer, new_producer, tracker, metrics, health)
            if exactly_once
            else AtLeastOnce(
                consumer, new_producer(), tracker, metrics, health, settings.shutdown_timeout_s
            )
        )
        batching = settings.batching
        batcher: ModelBatchers[InFlightEvent] = ModelBatchers(
            self.models.names,
            batching.max_events,
            batching.max_tokens,
            batching.max_wait_ms / 1000,
            clock,
        )
        flow = FlowControl(consumer, tracker, metrics, batching.max_events, clock)
        rebalance = Rebalance(consumer, tracker, delivery, flow, batcher, metrics, health, control)
        subscribe(consumer, router.input_topics, rebalance)
        return Loop(
            settings=settings,
            consumer=consumer,
            tracker=tracker,
            intake=Intake(router, self.models, tracker, metrics, clock, formats),
            batcher=batcher,
            runner=InferenceRunner(self.models, encoded, clock),
            release=Release(in_offset_order=exactly_once),
            outputs=Outputs(delivery, self.models),
            delivery=delivery,
            flow=flow,
            rebalance=rebalance,
            connectivity=connectivity,
            control=control,
            activity=Activity(metrics, clock),
            metrics=metrics,
            health=health,
            clock=clock,
            input_topics=router.input_topics,
            models=self.models,
        )

    def _control_topic(self, router: Router, connectivity: Connectivity) -> ControlTopic:
        """The control topic's reader, with every record up to its end applied."""
        settings = self.settings
        consumer = make_control_consumer(settings, connectivity.on_consumer_error)
        live = LiveTopics(settings.topics, settings.control_topic, topic_exists(consumer))
        reader = ControlReader(settings.control_topic, consumer, self._clock)
        control = ControlTopic(reader, live, router, self.metrics)
        try:
            control.start()
        except BaseException:
            control.close()
            raise
        return control


@dataclass(slots=True)
class Loop:
    """The protocol, one pass at a time; every piece of state lives in a stage."""

    settings: Settings
    consumer: Consumer
    tracker: OffsetTracker
    intake: Intake
    batcher: ModelBatchers[InFlightEvent]
    runner: InferenceRunner[InFlightEvent]
    release: Release
    outputs: Outputs
    delivery: Delivery
    flow: FlowControl
    rebalance: Rebalance
    connectivity: Connectivity
    control: ControlTopic | None
    activity: Activity
    metrics: Metrics
    health: Health
    clock: Callable[[], float]
    input_topics: list[str]
    models: Models

    def run(self, stop: threading.Event) -> None:
        """Pass after pass until `stop` is set or a stage fails for good; then shut down."""
        self.delivery.start()
        self.runner.start()
        self.health.model_loaded.set()
        log.info("worker started: topics %s", self.input_topics)
        try:
            while not stop.is_set() and self.failure() is None:
                self.step()
        finally:
            self.shutdown()
        if (failure := self.failure()) is not None:
            raise failure

    def step(self) -> None:
        """One pass: poll, control records, intake, batch, infer, publish, checkpoint, flow."""
        self.delivery.poll()
        if self.control is not None:
            self.control.poll()
        for event in self.intake.retry():
            self.admit(event)
        self.read(self.flow.room())
        # After the records the rebalance callback came with, which the rewind discards.
        if self.rebalance.rewind_due:
            self.rebalance.rewind()
        for model, batch in self.batcher.due():
            self.submit(model, batch)
        # While a transaction ends, results wait (and backpressure builds up).
        if self.delivery.producing:
            self.publish(self.runner.completed())
        if not self.delivery.checkpoint():
            self.rebalance.rewind()
        self.delivery.prune()
        # Partitions whose records wait for the schema registry are paused; the others read on.
        self.flow.apply(held=self.intake.held_partitions)
        self.flow.update_lag()
        self.activity.due()
        self.connectivity.probe(self.consumer)

    def read(self, room: int) -> None:
        """Take up to `room` records, each tracked before the next is fetched.

        One poll a record, not consume(n): a rebalance callback served in the
        middle of a consume(n) call leaves the records fetched before it in the
        same list as those after it, with nothing to tell them apart (a record
        of a revoked partition, or one of its earlier assignment, would be
        tracked as if of the new one). poll hands out a record only once every
        callback before it has run, and librdkafka discards what a rebalance or
        seek made outdated.
        """
        until_due = self.batcher.seconds_until_due()
        timeout = MAX_POLL_BLOCK_S if until_due is None else min(until_due, MAX_POLL_BLOCK_S)
        for _ in range(room):
            try:
                message = self.consumer.poll(timeout)
            except KafkaException as exc:
                # confluent-kafka raises the consumer's fatal error rather than pass it on.
                self.connectivity.on_consumer_error(exc.args[0])
                return
            if message is None:
                return
            timeout = 0.0
            if (error := message.error()) is not None:
                self.connectivity.on_consumer_error(error)
                continue
            if (event := self.intake.take(message)) is not None:
                self.admit(event)

    def admit(self, event: InFlightEvent) -> None:
        """An event read (or let through after being held) joins its model's batch."""
        self.rebalance.read(event)
        model = self.models.name_of(event.topic)
        for closed, batch in self.batcher.add(model, event, *batch_cost(event)):
            self.submit(closed, batch)

    def submit(self, model: str, batch: Batch[InFlightEvent]) -> None:
        """Hand a closed batch to the inference thread, for its model's queue."""
        self.metrics.batch_size.labels(model).observe(len(batch.items))
        self.metrics.batch_tokens.labels(model).observe(batch.tokens)
        log.debug(
            "batch of %d events, %d padded tokens for %s", len(batch.items), batch.tokens, model
        )
        self.release.submitted(batch.items)
        self.runner.submit(batch.items, model)

    def publish(self, parts: list[Completed[InFlightEvent]]) -> None:
        """Produce the records whose delivery failed again, then what each scored event became.

        A batch comes back part by part; each event is published as soon as
        its part is back (and, under exactly-once, every earlier event of its
        partition). The batch's time on the model is recorded once, with its
        last part.
        """
        self.outputs.send_again(self.delivery.take_redo())
        for completed in parts:
            if completed.last:
                self.metrics.inference_seconds.labels(completed.model).observe(completed.seconds)
                if completed.failed:
                    self.metrics.inference_failures.labels(completed.model).inc()
            queue_wait = self.metrics.queue_wait_seconds.labels(completed.model)
            for event, outcome in zip(completed.items, completed.outcomes, strict=True):
                queue_wait.observe(max(0.0, completed.started - event.read_at))
                for ready, result in self.release.completed(event, outcome):
                    # Revoked (or rewound) while on the model: its partition's owner redoes it.
                    if self.tracker.is_current(ready.tp, ready.epoch):
                        self.outputs.publish(ready, result)

    def failure(self) -> ZscError | None:
        """Why the worker must stop, if it must."""
        return self.connectivity.failure or self.delivery.failure or self.outputs.failure

    def shutdown(self) -> None:
        """Finish the in-flight batches, deliver, commit, close; abandon what the timeout cuts.

        Work an aborted transaction takes with it is not redone here: the
        partitions' next owner (or this worker's next start) redoes it.
        """
        deadline = self.clock() + self.settings.shutdown_timeout_s
        try:
            if self.failure() is None:
                for model, batch in self.batcher.flush():
                    self.submit(model, batch)
                # Nothing more is read, but the consumer is still polled: waiting
                # longer than max.poll.interval.ms would make it leave the group,
                # and the group would refuse the final commit.
                self.flow.stop_reading()
                while (self.runner.batches_in_flight or self.delivery.redo_waiting) and (
                    self.clock() < deadline
                ):
                    if self.delivery.producing:
                        self.publish(self.runner.completed(timeout=MAX_POLL_BLOCK_S))
                    elif not self.delivery.checkpoint():
                        break
                    self.delivery.poll()
                    # Records of partitions assigned meanwhile are left uncommitted.
                    self.consumer.consume(READ_MAX_RECORDS, 0)
            remaining = self.delivery.flush(max(0.0, deadline - self.clock()))
            if remaining:
                log.warning(
                    "shutdown: %d records undelivered; their inputs stay uncommitted", remaining
                )
            while self.delivery.checkpoint(force=True) and not self.delivery.producing:
                if self.clock() >= deadline:
                    break
        finally:
            self.runner.stop(timeout=max(0.0, deadline - self.clock()))
            self.consumer.close()
            if self.control is not None:
                self.control.close()
            log.info("worker stopped")
