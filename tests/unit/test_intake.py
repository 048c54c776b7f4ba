"""Intake: a record becomes a tracked, decoded, routed, tokenized event, or is dropped as stale."""

from __future__ import annotations

import orjson

from config.settings import TopicSettings
from tests.unit.kafka_stubs import StubMessage
from worker import serde
from worker.errors import RegistryUnavailable
from worker.formats import Formats
from worker.intake import Intake, batch_cost
from worker.kafka.records import Headers
from worker.metrics import Health, Metrics
from worker.models import Models
from worker.nli.base import EncodedEvent, Task
from worker.nli.fake import FakeClassifier
from worker.offsets import OffsetTracker
from worker.registry import RegistryStatus
from worker.routing import Route, Router

TOPIC = "posts"
ROUTE = Route.from_settings(TopicSettings(input=TOPIC, output="out", labels=["a", "b", "c"]))


class UntokenizableClassifier(FakeClassifier):
    """A tokenizer that refuses every text."""

    def encode(self, text: str, task: Task) -> EncodedEvent:
        raise ValueError("no such token")


class FlakyRegistry(Formats):
    """Records whose value starts with a zero byte need the registry, which is away while
    `down`; the rest of the value is plain JSON."""

    def __init__(self) -> None:
        super().__init__(None, RegistryStatus(Health(), lambda: 7.0))
        self.down = True

    def decode(
        self, value: bytes | None, headers: Headers | None, route: Route
    ) -> serde.DecodedEvent | serde.Rejection:
        if value is not None and value.startswith(b"\x00"):
            if self.down:
                raise RegistryUnavailable("no answer")
            value = value[1:]
        return super().decode(value, headers, route)


def intake(
    classifier: FakeClassifier | None = None, route: Route = ROUTE, formats: Formats | None = None
) -> tuple[Intake, OffsetTracker, Metrics]:
    tracker, metrics = OffsetTracker(), Metrics()
    tracker.assign((TOPIC, 0))
    formats = formats or Formats(None, RegistryStatus(Health(), lambda: 7.0))
    models = Models.one(classifier or FakeClassifier())
    taker = Intake(Router([route]), models, tracker, metrics, lambda: 7.0, formats)
    return taker, tracker, metrics


def record(offset: int, value: bytes | None, partition: int = 0) -> StubMessage:
    return StubMessage(TOPIC, partition, offset, value, b"key")


def test_a_valid_record_becomes_an_encoded_event_in_flight() -> None:
    taker, tracker, metrics = intake()
    event = taker.take(record(4, orjson.dumps({"text": "hello there"})))
    assert event is not None and event.rejection is None
    assert (event.source, event.key, event.read_at, event.route) == (
        (TOPIC, 0, 4),
        b"key",
        7.0,
        ROUTE,
    )
    assert event.decoded is not None and event.decoded.text == "hello there"
    assert event.encoded is not None and batch_cost(event) == (3, event.encoded.max_pair_tokens)
    assert tracker.in_flight() == 1
    assert metrics.consumed.labels(TOPIC)._value.get() == 1


def test_a_malformed_record_rides_along_rejected_and_costs_the_batch_nothing() -> None:
    taker, tracker, _ = intake()
    event = taker.take(record(0, b"{not json"))
    assert event is not None and event.rejection is not None
    assert event.rejection.error_type == serde.INVALID_JSON
    assert batch_cost(event) == (0, 0) and tracker.in_flight() == 1


def test_a_text_the_tokenizer_refuses_is_rejected_as_inference_failed() -> None:
    taker, _, _ = intake(UntokenizableClassifier())
    event = taker.take(record(0, orjson.dumps({"text": "hello"})))
    assert event is not None and event.rejection is not None
    assert event.rejection.error_type == serde.INFERENCE_FAILED
    assert "no such token" in event.rejection.message


def test_stale_records_are_dropped_and_counted() -> None:
    taker, tracker, metrics = intake()
    assert taker.take(record(0, b"{}", partition=1)) is None, "no live assignment"
    assert taker.take(record(5, orjson.dumps({"text": "x"}))) is not None
    assert taker.take(record(3, orjson.dumps({"text": "x"}))) is None, "below the floor"
    assert metrics.stale_records.labels(TOPIC)._value.get() == 2
    assert tracker.in_flight() == 1


def test_records_wait_behind_one_the_registry_cannot_decode_yet_and_follow_it_in_order() -> None:
    registry = FlakyRegistry()
    taker, tracker, _ = intake(formats=registry)
    tracker.assign((TOPIC, 1))
    assert taker.take(record(0, b"\x00" + orjson.dumps({"text": "needs the registry"}))) is None
    assert taker.take(record(1, orjson.dumps({"text": "plain, but after it"}))) is None
    other = taker.take(record(0, orjson.dumps({"text": "another partition"}), partition=1))
    assert other is not None, "another partition's records do not wait"
    assert taker.held_partitions == {(TOPIC, 0)}
    assert tracker.in_flight() == 3, "held records stay in flight"
    assert taker.retry() == [] and taker.held_partitions
    registry.down = False
    let_through = taker.retry()
    assert [event.offset for event in let_through] == [0, 1] and not taker.held_partitions
    assert all(event.encoded is not None and event.rejection is None for event in let_through)
    assert [event.decoded.text for event in let_through if event.decoded] == [
        "needs the registry",
        "plain, but after it",
    ]


def test_a_held_record_of_a_partition_rewound_or_revoked_meanwhile_is_dropped() -> None:
    registry = FlakyRegistry()
    taker, tracker, _ = intake(formats=registry)
    assert taker.take(record(0, b"\x00" + orjson.dumps({"text": "held"}))) is None
    tracker.assign((TOPIC, 0))  # a new epoch: its owner reads it again
    registry.down = False
    assert taker.retry() == [] and not taker.held_partitions


# The fake's pairs are words: 3 for "It is {}." plus 4 special tokens leave 13 of 20.
CHUNKED = Route.from_settings(
    TopicSettings(
        input=TOPIC,
        output="out",
        labels=["a", "b", "c"],
        hypothesis_template="It is {}.",
        long_text={"strategy": "chunk", "window": 10, "stride": 2, "max_chunks": 3},
    )
)


def test_a_chunked_text_costs_the_batch_a_pair_per_chunk_and_hypothesis() -> None:
    taker, _, metrics = intake(FakeClassifier(max_length=20), CHUNKED)
    event = taker.take(record(0, orjson.dumps({"text": " ".join(["word"] * 20)})))
    assert event is not None and event.encoded is not None and event.rejection is None
    assert event.encoded.chunks == ((0, 10), (8, 18), (16, 20))
    assert batch_cost(event) == (3 * 3, 10 + 3 + 4)
    assert metrics.text_chunks.labels(TOPIC)._sum.get() == 3


def test_a_text_needing_more_than_max_chunks_is_rejected_with_the_reason() -> None:
    taker, _, _ = intake(FakeClassifier(max_length=20), CHUNKED)
    event = taker.take(record(0, orjson.dumps({"text": " ".join(["word"] * 27)})))
    assert event is not None and event.rejection is not None
    assert event.rejection.error_type == serde.TOO_MANY_CHUNKS == "too_many_chunks"
    assert "27 tokens: 4 chunks" in event.rejection.message
    assert batch_cost(event) == (0, 0)
