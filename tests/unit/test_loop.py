"""The worker loop against stub clients: rebalance races and backpressure, without a broker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry._sync.mock_schema_registry_client import (
    MockSchemaRegistryClient,
)
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.common._httpx_compat import httpx
from confluent_kafka.serialization import MessageField, SerializationContext
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from config.settings import Settings
from tests.integration.harness import make_settings
from tests.unit.kafka_stubs import Partition, StubConsumer, StubMessage, StubProducer
from worker.app import Worker
from worker.errors import KafkaError as ZscKafkaError
from worker.models import Models
from worker.nli.base import EncodedEvent, Scores
from worker.nli.fake import FakeClassifier

TOPIC = "posts"
P0, P1 = (TOPIC, 0), (TOPIC, 1)
# Long enough for a loaded machine; a healthy run takes well under a second.
SETTLE_TIMEOUT_S = 20.0


def events(count: int) -> list[bytes]:
    """Texts of varied length: scored shortest first, a batch comes back out of offset order."""
    return [
        orjson.dumps({"id": i, "text": f"event number {i}" + " more" * (i * 7 % 5)})
        for i in range(count)
    ]


def settings(**batching: Any) -> Settings:
    topics = [{"input": TOPIC, "output": "posts.out", "labels": ["a", "b"]}]
    return make_settings(
        "stub:9092",
        "stub-group",
        topics,
        batching={"max_events": 4, "max_wait_ms": 5, **batching},
        shutdown_timeout_s=5,
    )


class FlakyRegistry(MockSchemaRegistryClient):
    """confluent-kafka's in-memory registry, whose schemas cannot be fetched while `down`."""

    def __init__(self) -> None:
        super().__init__({"url": "mock://registry"})
        self.down = False

    def get_schema(self, *args: Any, **kwargs: Any) -> Schema:
        if self.down:
            raise httpx.ConnectError("connection refused")
        return super().get_schema(*args, **kwargs)


class Loop:
    """A Worker running on a thread against a StubConsumer and a StubProducer."""

    def __init__(
        self,
        worker_settings: Settings,
        logs: dict[Partition, list[bytes]],
        models: Models | None = None,
        registry: SchemaRegistryClient | None = None,
    ) -> None:
        self.logs = logs
        self.producer = StubProducer()
        self.consumer: StubConsumer | None = None
        self.worker = Worker(
            worker_settings,
            models or Models.one(FakeClassifier(delay_s=0.04, forward_events=1)),
            consumer_factory=self._consumer,
            producer_factory=lambda _settings, _on_error: self.producer,  # type: ignore[arg-type,return-value]
            registry_factory=lambda _settings: registry or FlakyRegistry(),
        )
        self.stop = threading.Event()
        self.failure: list[BaseException] = []
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _consumer(self, _settings: Settings, _on_error: Any) -> Any:
        self.consumer = StubConsumer(self.logs)
        self.ready.set()
        return self.consumer

    def _serve(self) -> None:
        try:
            self.worker.run(self.stop)
        except BaseException as exc:
            self.failure.append(exc)

    @property
    def stub(self) -> StubConsumer:
        assert self.consumer is not None
        return self.consumer

    def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while not condition():
            assert not self.failure, f"the worker died: {self.failure[0]!r}"
            assert self.thread.is_alive(), "the worker stopped"
            assert time.monotonic() < deadline, f"no progress: {what}"
            time.sleep(0.005)

    def all_committed(self) -> bool:
        return all(self.stub.committed.get(tp) == len(log) for tp, log in self.logs.items())

    def outputs_of(self, tp: Partition) -> list[int]:
        return [
            orjson.loads(value)["classification"]["source"]["offset"]
            for topic, value in self.producer.sent
            if topic == "posts.out"
            and value is not None
            and orjson.loads(value)["classification"]["source"]["partition"] == tp[1]
        ]

    def stale(self) -> float:
        return self.worker.metrics.stale_records.labels(TOPIC)._value.get()


@contextmanager
def loop(
    worker_settings: Settings,
    logs: dict[Partition, list[bytes]],
    models: Models | None = None,
    registry: SchemaRegistryClient | None = None,
) -> Iterator[Loop]:
    running = Loop(worker_settings, logs, models, registry)
    running.thread.start()
    assert running.ready.wait(SETTLE_TIMEOUT_S)
    try:
        yield running
    finally:
        running.stop.set()
        running.thread.join(SETTLE_TIMEOUT_S)
    assert not running.failure, f"the worker died: {running.failure[0]!r}"
    assert not running.thread.is_alive(), "the worker did not stop"


def test_records_of_no_live_assignment_or_below_the_floor_are_dropped_and_counted() -> None:
    # The race behind a crash seen under exactly-once: records fetched before a
    # rebalance, handed out after it. They must not stop the worker.
    logs = {P0: events(20), P1: events(400)}
    with loop(settings(), logs) as running:
        stub = running.stub
        stub.rebalance("assign", [P0, P1])
        running.wait_until(lambda: len(running.outputs_of(P1)) >= 5, "first outputs")
        stub.rebalance("revoke", [P1])
        stub.inject(StubMessage(TOPIC, 1, 7, logs[P1][7]))  # P1 is not assigned now
        stub.rebalance("assign", [P1])
        running.wait_until(lambda: not stub.events, "the new assignment")
        start = stub.committed.get(P1, 0)
        running.wait_until(lambda: stub.positions[P1] >= start + 3, "reading P1 again")
        stub.inject(StubMessage(TOPIC, 1, start, logs[P1][start]))  # below what is tracked
        running.wait_until(running.all_committed, "everything committed")
        assert running.stale() == 2
    assert set(running.outputs_of(P0)) == set(range(20))
    assert set(running.outputs_of(P1)) == set(range(400)), "nothing lost"


@pytest.mark.parametrize("kind", ["lost", "revoke"])
def test_a_pause_kept_by_the_client_across_a_new_assignment_is_lifted(kind: str) -> None:
    # A partition paused by backpressure, lost (or revoked) and assigned again
    # stays paused in librdkafka: the worker must resume it or stall for good.
    logs = {P0: events(200)}
    with loop(settings(max_events=2), logs) as running:
        stub = running.stub
        stub.rebalance("assign", [P0])
        running.wait_until(lambda: P0 in stub.paused, "backpressure pauses the partition")
        stub.rebalance(kind, [P0])
        stub.rebalance("assign", [P0])
        running.wait_until(running.all_committed, "the partition read to its end")
        assert stub.paused == set()
        assert running.worker.metrics.paused_partitions._value.get() == 0
    assert set(running.outputs_of(P0)) == set(range(200))


def test_shutdown_commits_what_was_delivered_and_closes() -> None:
    logs = {P0: events(30)}
    with loop(settings(), logs) as running:
        running.stub.rebalance("assign", [P0])
        running.wait_until(running.all_committed, "everything committed")
    assert running.stub.closed
    assert sorted(running.outputs_of(P0)) == list(range(30)), "each once, in a clean run"


def avro_records(registry: SchemaRegistryClient, count: int) -> list[bytes]:
    """Avro records of TOPIC, their schema registered in `registry`."""
    schema = '{"type": "record", "name": "Post", "fields": [{"name": "text", "type": "string"}]}'
    serialize = AvroSerializer(registry, schema, conf={"subject.name.strategy.type": "TOPIC"})
    context = SerializationContext(TOPIC, MessageField.VALUE)
    return [serialize({"text": f"event number {i}"}, context) for i in range(count)]


def avro_settings(*more_topics: dict[str, Any]) -> Settings:
    """TOPIC in Avro through a schema registry, and `more_topics`."""
    topics = [
        {"input": TOPIC, "output": "posts.out", "labels": ["a", "b"], "format": "avro"},
        *more_topics,
    ]
    return make_settings(
        "stub:9092",
        "stub-group",
        topics,
        batching={"max_events": 4, "max_wait_ms": 5},
        schema_registry={"url": "http://registry:8081"},
        shutdown_timeout_s=5,
    )


def test_records_wait_while_the_registry_is_away_and_nothing_is_committed_past_them() -> None:
    registry = FlakyRegistry()
    logs = {P0: avro_records(registry, 30)}
    with loop(avro_settings(), logs, registry=registry) as running:
        stub = running.stub
        registry.down = True
        stub.rebalance("assign", [P0])
        running.wait_until(lambda: P0 in stub.paused, "the partition paused for the registry")
        running.wait_until(lambda: not running.worker.health.ready, "not ready")
        time.sleep(0.3)  # retries come and go; none lets a record through
        assert running.producer.sent == [] and stub.committed.get(P0, 0) == 0
        registry.down = False
        running.wait_until(running.all_committed, "everything read once the registry is back")
        assert running.worker.health.ready and stub.paused == set()
    assert [topic for topic, _ in running.producer.sent] == ["posts.out"] * 30


def test_a_partition_held_for_the_registry_leaves_the_others_flowing() -> None:
    registry = FlakyRegistry()
    notes = ("notes", 0)
    logs = {P0: avro_records(registry, 10), notes: events(10)}
    json_topic = {"input": "notes", "output": "notes.out", "labels": ["a", "b"]}
    with loop(avro_settings(json_topic), logs, registry=registry) as running:
        stub = running.stub
        registry.down = True
        stub.rebalance("assign", [P0, notes])
        running.wait_until(lambda: P0 in stub.paused, "the Avro partition paused")
        running.wait_until(lambda: stub.committed.get(notes) == 10, "the JSON topic went on")
        assert notes not in stub.paused
        assert stub.committed.get(P0, 0) == 0, "nothing committed past the held record"
        registry.down = False
        running.wait_until(running.all_committed, "the Avro partition once the registry is back")
        assert stub.paused == set()


class Gated(FakeClassifier):
    """Scores one event per forward pass; passes after a batch's first `free` wait for `gate`."""

    def __init__(self, free: int = 1) -> None:
        super().__init__(forward_events=1)
        self.free = free
        self.gate = threading.Event()
        self.passes = 0

    def classify_progressively(
        self, events: Sequence[EncodedEvent]
    ) -> Iterator[list[tuple[int, Scores]]]:
        for n, part in enumerate(super().classify_progressively(events)):
            if n >= self.free:
                assert self.gate.wait(SETTLE_TIMEOUT_S), "the test never opened the gate"
            self.passes += 1
            yield part


def one_long_then_short(count: int) -> list[bytes]:
    """Offset 0 the longest text: the classifier, shortest first, scores it last."""
    texts = ["a much longer event than all of the others", *(f"short {i}" for i in range(1, count))]
    return [orjson.dumps({"id": i, "text": text}) for i, text in enumerate(texts)]


def inference_batches(running: Loop) -> float | None:
    return running.worker.metrics.registry.get_sample_value(
        "zsc_inference_seconds_count", {"model": "fake-nli"}
    )


def test_an_event_is_published_before_the_last_forward_pass_of_its_batch() -> None:
    gated = Gated()
    logs = {P0: one_long_then_short(4)}
    with loop(settings(max_events=4, max_wait_ms=10_000), logs, Models.one(gated)) as running:
        stub = running.stub
        stub.rebalance("assign", [P0])
        running.wait_until(lambda: running.outputs_of(P0) == [1], "the first pass's event")
        time.sleep(0.05)  # the loop's passes go on: nothing more is published, nor committed
        assert running.outputs_of(P0) == [1]
        assert stub.committed.get(P0, 0) == 0, "never past offset 0, not published yet"
        assert inference_batches(running) == 0, "the batch's time counts once it is all back"
        gated.gate.set()
        running.wait_until(running.all_committed, "everything committed")
        assert sorted(running.outputs_of(P0)) == [0, 1, 2, 3]
        assert inference_batches(running) == 1
    assert gated.batch_sizes == [4], "one batch"


def test_exactly_once_publishes_a_partition_in_offset_order_whatever_order_it_is_scored() -> None:
    gated = Gated(free=2)
    logs = {P0: one_long_then_short(4), P1: [orjson.dumps({"text": "shortest"})]}
    worker_settings = settings(max_events=5, max_wait_ms=10_000).model_copy(
        update={"processing_guarantee": "exactly-once"}
    )
    with loop(worker_settings, logs, Models.one(gated)) as running:
        running.producer.consumer = running.stub
        stub = running.stub
        stub.rebalance("assign", [P0, P1])
        # One batch: P0's offsets 0-3 (the first the longest), then P1's, the shortest:
        # the first forward pass scores P1's, the second P0's offset 1.
        running.wait_until(lambda: running.outputs_of(P1) == [0], "P1 waits for nothing")
        running.wait_until(lambda: gated.passes == 2, "P0's offset 1 scored")
        time.sleep(0.05)
        assert running.outputs_of(P0) == []
        assert not running.producer.transaction, "P0's offset 1 waits for its offset 0"
        gated.gate.set()
        running.wait_until(running.all_committed, "everything committed")
        assert running.outputs_of(P0) == [0, 1, 2, 3], "in offset order"


@pytest.mark.parametrize("surfacing", ["report", "raised", "chained"])
def test_exactly_once_replaces_a_fenced_producer_and_redoes_its_transaction(
    surfacing: str,
) -> None:
    count = 30
    logs = {P0: events(count), P1: events(count)}
    worker_settings = settings().model_copy(update={"processing_guarantee": "exactly-once"})
    with loop(worker_settings, logs) as running:
        producer = running.producer
        producer.consumer = running.stub
        running.stub.rebalance("assign", [P0, P1])
        running.wait_until(lambda: bool(producer.commits), "a first transaction committed")
        producer.fence(surfacing)
        running.wait_until(running.all_committed, "everything committed after the fence")
        assert not producer.fenced, "replaced: a new producer initialised the transactional id"
        for tp in (P0, P1):
            assert running.outputs_of(tp) == list(range(count)), "each output once, in order"


def test_exactly_once_rewinds_a_partition_lost_and_assigned_again_to_where_the_group_stands() -> (
    None
):
    """Another owner went on while the partition was away: a rewind before this worker's
    first commit of the new assignment restarts where that assignment started."""
    logs = {P0: events(10)}
    worker_settings = settings().model_copy(update={"processing_guarantee": "exactly-once"})
    with loop(worker_settings, logs) as running:
        stub, producer = running.stub, running.producer
        producer.consumer = stub
        stub.rebalance("assign", [P0])
        running.wait_until(running.all_committed, "the first 10 committed")
        stub.rebalance("lost", [P0])
        running.wait_until(lambda: not stub.events, "the loss served")
        # The next owner did offsets 10 to 19 and committed them.
        logs[P0].extend(events(30)[10:])
        stub.committed[P0] = 20
        # This worker's first output of the new assignment fails: abort, rewind.
        producer.fail(1)
        stub.rebalance("assign", [P0])
        running.wait_until(running.all_committed, "the rest committed")
        assert running.outputs_of(P0) == [*range(10), *range(20, 30)]


def test_at_least_once_stops_with_the_error_when_its_producer_fails_for_good() -> None:
    running = Loop(settings(), {P0: events(30)})
    running.thread.start()
    assert running.ready.wait(SETTLE_TIMEOUT_S)
    running.stub.rebalance("assign", [P0])
    running.wait_until(lambda: bool(running.producer.sent), "a first output")
    running.producer.fence("raised")
    running.thread.join(SETTLE_TIMEOUT_S)
    assert not running.thread.is_alive(), "the worker stops"
    [failure] = running.failure
    assert isinstance(failure, ZscKafkaError)
    # From the poll that raised it, or from the next produce call refused for it.
    assert str(failure).startswith("the producer failed: ")


PARTITIONS = [(TOPIC, p) for p in range(3)]
rebalance_step = st.tuples(
    st.sampled_from(["revoke", "lost", "assign", "stale"]), st.sampled_from(PARTITIONS)
)


@hyp_settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(rebalance_step, min_size=1, max_size=12), pause_often=st.booleans())
def test_no_sequence_of_rebalances_and_stale_records_loses_or_stalls(
    steps: list[tuple[str, Partition]], pause_often: bool
) -> None:
    logs = {tp: events(60) for tp in PARTITIONS}
    with loop(settings(max_events=2 if pause_often else 8), logs) as running:
        stub = running.stub
        stub.rebalance("assign", PARTITIONS)
        owned = set(PARTITIONS)
        for kind, tp in steps:
            running.wait_until(lambda: not stub.events and not stub.injected, "the last step")
            if kind == "stale":
                offset = stub.positions.get(tp, 0) // 2
                stub.inject(StubMessage(tp[0], tp[1], offset, logs[tp][offset]))
            elif kind == "assign":
                if tp not in owned:
                    stub.rebalance("assign", [tp])
                    owned.add(tp)
            elif tp in owned:
                stub.rebalance(kind, [tp])
                owned.discard(tp)
        # A stale record is one fetched before a rebalance that was served after
        # it: it never follows a rebalance scheduled after it.
        running.wait_until(lambda: not stub.events and not stub.injected, "the last step")
        stub.rebalance("assign", sorted(set(PARTITIONS) - owned))
        running.wait_until(running.all_committed, "every partition read to its end")
        running.wait_until(lambda: not stub.paused, "every partition resumed")
    for tp in PARTITIONS:
        assert set(running.outputs_of(tp)) == set(range(60)), f"nothing lost of {tp}"
