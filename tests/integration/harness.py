"""Running workers and reading their results in integration tests."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from config.settings import Settings
from worker.app import Worker
from worker.embedded.tansu import RECOMMENDED_SESSION_TIMEOUT_MS
from worker.models import Models, forward_budget, load_nli_classifier
from worker.nli.base import Classifier

# Tansu's group join waits about half the session timeout; Apache Kafka does not mind.
SESSION_TIMEOUT_MS = RECOMMENDED_SESSION_TIMEOUT_MS
READ_TIMEOUT_S = 120.0
REFERENCE_BATCH_SIZE = 32
ADMIN_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Output:
    """A record read back from an output or dead-letter topic."""

    topic: str
    partition: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes | None]

    def json(self) -> dict[str, Any]:
        """The value as a JSON object."""
        assert self.value is not None
        decoded: dict[str, Any] = orjson.loads(self.value)
        return decoded


def make_settings(
    bootstrap_servers: str, group_id: str, topics: list[dict[str, Any]], **overrides: Any
) -> Settings:
    """Settings for a test worker: short session timeout, no metrics server."""
    values: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": bootstrap_servers,
            "group_id": group_id,
            "consumer": {"session.timeout.ms": SESSION_TIMEOUT_MS},
        },
        "batching": {"max_events": 16, "max_wait_ms": 20},
        "metrics_port": 0,
        "shutdown_timeout_s": 30,
        "topics": topics,
    }
    values.update(overrides)
    return Settings(**values)


class RunningWorker:
    """A worker on a thread of this process, stopped like SIGTERM would stop it.

    `classifier` is the top-level model's; topics with a model of their own
    have it loaded here, as `zsc-worker run` would (`Models.load`).
    """

    def __init__(self, settings: Settings, classifier: Classifier) -> None:
        models = Models.load(settings, load_nli_classifier, forward_budget(settings), classifier)
        self.worker = Worker(settings, models)
        self._stop = threading.Event()
        self._failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._serve, name="test-worker", daemon=True)

    def _serve(self) -> None:
        try:
            self.worker.run(self._stop)
        except BaseException as exc:
            self._failure.append(exc)

    def start(self) -> RunningWorker:
        """Start the worker's thread."""
        self._thread.start()
        return self

    def wait_for_assignment(self, timeout_s: float = 60.0) -> None:
        """Block until the worker owns at least one partition."""
        deadline = time.monotonic() + timeout_s
        while not self.worker.assignment:
            assert time.monotonic() < deadline, "the worker was assigned no partition"
            assert not self._failure, self._failure
            time.sleep(0.05)

    def partitions(self) -> set[int]:
        """The partition numbers the worker owns now."""
        return {partition for _, partition in self.worker.assignment}

    def stop(self, timeout: float = 60.0) -> None:
        """Ask the worker to stop, wait for it, and re-raise what it failed with."""
        self._stop.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the worker did not stop in time"
        if self._failure:
            raise self._failure[0]


@contextlib.contextmanager
def running(settings: Settings, classifier: Classifier) -> Iterator[RunningWorker]:
    """A worker running for the duration of the block."""
    worker = RunningWorker(settings, classifier).start()
    try:
        yield worker
    finally:
        worker.stop()


def produce(
    bootstrap_servers: str,
    topic: str,
    values: Sequence[bytes | None],
    keys: Sequence[bytes | None] | None = None,
    headers: Sequence[list[tuple[str, bytes]]] | None = None,
    partition: int | None = None,
) -> None:
    """Produce the values in order and wait for every acknowledgement."""
    producer = Producer({"bootstrap.servers": bootstrap_servers, "enable.idempotence": True})
    for i, value in enumerate(values):
        kwargs: dict[str, Any] = {}
        if keys is not None:
            kwargs["key"] = keys[i]
        if headers is not None:
            kwargs["headers"] = headers[i]
        if partition is not None:
            kwargs["partition"] = partition
        producer.produce(topic, value, **kwargs)
    assert producer.flush(30) == 0, "test records were not all acknowledged"


def read(
    bootstrap_servers: str,
    topics: Sequence[str],
    expected: int,
    timeout_s: float = READ_TIMEOUT_S,
    settle_s: float = 1.0,
) -> list[Output]:
    """Read the topics from the start until `expected` records arrived, then `settle_s` more.

    The extra wait catches records beyond the expected count (duplicates).
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": SESSION_TIMEOUT_MS,
        }
    )
    consumer.subscribe(list(topics))
    outputs: list[Output] = []
    deadline = time.monotonic() + timeout_s
    settle_until: float | None = None
    try:
        while time.monotonic() < (settle_until or deadline):
            message = consumer.poll(0.2)
            if message is None or message.error() is not None:
                continue
            outputs.append(
                Output(
                    message.topic() or "",
                    message.partition() or 0,
                    message.key(),
                    message.value(),
                    dict(message.headers() or []),
                )
            )
            if len(outputs) >= expected and settle_until is None:
                settle_until = time.monotonic() + settle_s
    finally:
        consumer.close()
    return outputs


def committed(bootstrap_servers: str, group_id: str, topic: str, partitions: int) -> list[int]:
    """The group's committed offset of each partition (-1001 when none)."""
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": group_id})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=30)
    finally:
        consumer.close()
    return [tp.offset for tp in tps]


def limit_record_size(admin: AdminClient, topic: str, max_bytes: int) -> None:
    """Set the topic's max.message.bytes, and wait until the broker reports it."""
    resource = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry(
                "max.message.bytes",
                str(max_bytes),
                incremental_operation=AlterConfigOpType.SET,
            )
        ],
    )
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(ADMIN_TIMEOUT_S)
    deadline = time.monotonic() + ADMIN_TIMEOUT_S
    while True:
        [described] = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
        if described.result(ADMIN_TIMEOUT_S)["max.message.bytes"].value == str(max_bytes):
            return
        assert time.monotonic() < deadline, "the topic's max.message.bytes did not change"
        time.sleep(0.1)


def pipeline_scores(
    model_dir: str, texts: Sequence[str], labels: Sequence[str], template: str, multi_label: bool
) -> list[dict[str, float]]:
    """transformers' own zero-shot pipeline on the same model, in float32: the reference.

    Batched, because at batch size 1 the pipeline's per-pair overhead makes a few
    hundred texts take minutes; padding moves float32 scores by ~1e-7 at most.
    """
    from transformers import pipeline

    classifier = pipeline("zero-shot-classification", model=str(model_dir), device="cpu")
    results = classifier(
        list(texts),
        candidate_labels=list(labels),
        hypothesis_template=template,
        multi_label=multi_label,
        batch_size=REFERENCE_BATCH_SIZE,
    )
    if isinstance(results, dict):
        results = [results]
    return [dict(zip(r["labels"], r["scores"], strict=True)) for r in results]


def assert_scores_match(
    classification: dict[str, Any], expected: dict[str, float], tolerance: float = 1e-4
) -> None:
    """The worker's scores equal the pipeline's, label by label, and are sorted the same way."""
    got = dict(zip(classification["labels"], classification["scores"], strict=True))
    assert got.keys() == expected.keys()
    for label, score in expected.items():
        assert abs(got[label] - score) <= tolerance, (label, got[label], score)
    assert classification["scores"] == sorted(classification["scores"], reverse=True)
