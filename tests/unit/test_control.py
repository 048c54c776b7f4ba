"""The control topic's reader and applier on a stub consumer: start-up reads to the end,
records replace routes in order, invalid ones are counted and change nothing."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import SimpleNamespace

import orjson
import pytest
from confluent_kafka import KafkaError, TopicPartition

from config.topics import TopicSettings
from tests.unit.kafka_stubs import StubMessage
from worker import errors
from worker.control import ControlReader, ControlTopic
from worker.live_topics import LiveTopics
from worker.metrics import Metrics
from worker.routing import Route, Router

CONTROL = "control"
TOPICS = [TopicSettings(input="posts", output="posts.out", labels=["sports", "politics"])]


@dataclass
class ControlLog:
    """A one-partition control topic, served the way the reader's consumer serves it."""

    records: list[StubMessage] = field(default_factory=list)
    exists: bool = True
    _read: int = 0

    def append(self, key: bytes | None, value: dict[str, object] | bytes | None) -> None:
        raw = orjson.dumps(value) if isinstance(value, dict) else value
        self.records.append(StubMessage(CONTROL, 0, len(self.records), raw, key))

    def list_topics(self, topic: str, timeout: float) -> SimpleNamespace:
        found = SimpleNamespace(error=None, partitions={0: None})
        return SimpleNamespace(topics={topic: found} if self.exists else {})

    def assign(self, partitions: list[TopicPartition]) -> None:
        assert [(tp.topic, tp.partition) for tp in partitions] == [(CONTROL, 0)]

    def get_watermark_offsets(
        self, tp: TopicPartition, timeout: float, cached: bool
    ) -> tuple[int, int]:
        return 0, len(self.records)

    def consume(self, num_messages: int, timeout: float) -> list[StubMessage]:
        if self._read == len(self.records):
            return []
        batch = self.records[self._read : self._read + num_messages]
        self._read += len(batch)
        if self._read < len(self.records):
            return batch
        end = StubMessage(
            CONTROL, 0, self._read, None, _error=KafkaError(KafkaError._PARTITION_EOF)
        )
        return [*batch, end]

    def close(self) -> None:
        pass


def control_topic(log: ControlLog) -> tuple[ControlTopic, Router, Metrics]:
    router = Router([Route.from_settings(t) for t in TOPICS])
    metrics = Metrics()
    live = LiveTopics(TOPICS, CONTROL, lambda name: True)
    reader = ControlReader(CONTROL, log)  # type: ignore[arg-type]
    return ControlTopic(reader, live, router, metrics), router, metrics


def info(metrics: Metrics) -> dict[tuple[str, str], float]:
    family = next(iter(metrics.config_info.collect()))
    return {(s.labels["topic"], s.labels["version"]): s.value for s in family.samples}


def test_start_applies_every_record_up_to_the_end_in_order() -> None:
    log = ControlLog()
    log.append(b"posts", {"labels": ["music"]})
    log.append(b"posts", {"labels": ["music", "film"], "multi_label": True})
    control, router, metrics = control_topic(log)
    metrics.config_in_force("posts", "file")
    control.start()
    route = router.route("posts")
    assert route.version == "0:1"
    assert route.task.labels == ("music", "film") and route.task.multi_label
    assert info(metrics) == {("posts", "0:1"): 1.0}
    assert metrics.control_records._value.get() == 2


def test_records_arriving_later_replace_the_route_events_are_read_with() -> None:
    log = ControlLog()
    control, router, _ = control_topic(log)
    control.start()
    before = router.route("posts")
    log.append(b"posts", {"hypothesis_template": "About {}."})
    control.poll()
    after = router.route("posts")
    assert before.version == "file" and before.task.hypothesis_template == "This example is {}."
    assert after.version == "0:0" and after.task.hypothesis_template == "About {}."
    log.append(b"posts", None)
    control.poll()
    assert router.route("posts") == before


def test_an_invalid_record_is_logged_counted_and_changes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = ControlLog()
    log.append(b"posts", {"labels": ["music"]})
    log.append(b"posts", b"{oops")
    control, router, metrics = control_topic(log)
    with caplog.at_level(logging.WARNING, logger="worker.control"):
        control.start()
    assert router.route("posts").version == "0:0"
    assert metrics.control_records_rejected._value.get() == 1
    [warning] = caplog.records
    assert "control@0:1 rejected" in warning.getMessage()
    assert "not JSON" in warning.getMessage()


def test_a_missing_control_topic_stops_start_up_with_the_key() -> None:
    control, _, _ = control_topic(ControlLog(exists=False))
    with pytest.raises(errors.ConfigError, match="control_topic: topic 'control' does not exist"):
        control.start()
