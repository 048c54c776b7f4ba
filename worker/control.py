"""The control topic: live topic entries, read by every worker with a consumer of its own.

The worker reads the whole control topic before it joins the group, then keeps
reading it once a loop pass. A valid record replaces its topic's route, so the
events read after it are scored with the new entry; events already read keep
theirs. Whenever partitions are assigned, the worker reads the control topic
up to its end first: a partition taken over from another worker is never
served with an older entry than its previous owner served it with, since that
owner read its entry from the same topic before it was revoked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from worker import errors
from worker.kafka.clients import translate
from worker.live_topics import InForce, LiveTopics, TopicExists, version_of
from worker.metrics import Metrics
from worker.routing import Route, Router

log = logging.getLogger(__name__)

# Records applied per loop pass at most (a burst of control records is rare).
POLL_RECORDS = 100
# How long a worker may take to read the control topic before it consumes input.
START_TIMEOUT_S = 60.0
# How long an assignment waits for the control topic's end; past it the worker
# goes on with what it has read (and says so).
ASSIGN_TIMEOUT_S = 10.0
# How long a metadata or watermark request may take.
REQUEST_TIMEOUT_S = 10.0


class ControlReader:
    """Reads a control topic from its beginning with a consumer of its own, never a group
    member, and tells when it has read up to the topic's end."""

    def __init__(
        self, name: str, consumer: Consumer, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self._consumer = consumer
        self._clock = clock
        self._next: dict[int, int] = {}
        """Each partition's next offset to read: past its last record or its end seen."""

    def open(self) -> None:
        """Assign every partition of the topic from its beginning; ConfigError if it is missing."""
        try:
            metadata = self._consumer.list_topics(self.name, timeout=REQUEST_TIMEOUT_S)
        except KafkaException as exc:
            raise translate(exc, f"cannot read control_topic {self.name!r}") from None
        topic = metadata.topics.get(self.name)
        if topic is None or topic.error is not None or not topic.partitions:
            raise errors.ConfigError(
                f"control_topic: topic {self.name!r} does not exist; create it, compacted"
                " (cleanup.policy=compact), or leave control_topic empty"
            )
        partitions = sorted(topic.partitions)
        self._next = dict.fromkeys(partitions, 0)
        self._consumer.assign([TopicPartition(self.name, p, OFFSET_BEGINNING) for p in partitions])

    def read_all(self, take: Callable[[Message], None], timeout_s: float) -> None:
        """Open the topic and give `take` every record from its beginning to its end as of
        now; ConfigError if it is missing, KafkaError if that takes over `timeout_s`."""
        self.open()
        if not self.catch_up(take, timeout_s):
            raise errors.KafkaError(
                f"cannot read control_topic {self.name!r} to its end in {timeout_s:.0f} s",
                code=KafkaError._TIMED_OUT,
                retriable=True,
            )

    def catch_up(self, take: Callable[[Message], None], timeout_s: float) -> bool:
        """Give `take` every record up to the topic's end as of now; False if that timed out."""
        deadline = self._clock() + timeout_s
        try:
            ends = {
                p: self._consumer.get_watermark_offsets(
                    TopicPartition(self.name, p), timeout=timeout_s, cached=False
                )[1]
                for p in self._next
            }
        except KafkaException as exc:
            log.warning("control topic %s: its end is unknown (%s)", self.name, exc)
            return False
        while any(self._next[p] < end for p, end in ends.items()):
            if self._clock() >= deadline:
                behind = {p: end - self._next[p] for p, end in ends.items() if end > self._next[p]}
                log.warning(
                    "control topic %s: not read to its end in %.0f s (records behind: %s)",
                    self.name,
                    timeout_s,
                    behind,
                )
                return False
            self._read(take, 0.1)
        return True

    def poll(self, take: Callable[[Message], None]) -> None:
        """Give `take` the records that arrived since the last call; never blocks."""
        self._read(take, 0)

    def close(self) -> None:
        """Close the consumer."""
        self._consumer.close()

    def _read(self, take: Callable[[Message], None], timeout_s: float) -> None:
        for record in self._consumer.consume(POLL_RECORDS, timeout_s):
            partition, offset = record.partition(), record.offset()
            assert partition is not None and offset is not None
            error = record.error()
            if error is None:
                self._next[partition] = offset + 1
                take(record)
            elif error.code() == KafkaError._PARTITION_EOF:
                self._next[partition] = max(self._next.get(partition, 0), offset)
            else:
                log.warning("control topic %s: %s", self.name, error.str())


class ControlTopic:
    """Applies the control topic's records, in order, to the routes the intake reads."""

    def __init__(
        self, reader: ControlReader, live: LiveTopics, router: Router, metrics: Metrics
    ) -> None:
        self._reader = reader
        self._live = live
        self._router = router
        self._metrics = metrics

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Apply the control topic from its beginning to its end; raise if that cannot be done."""
        self._reader.read_all(self._apply, timeout_s)
        in_force = {topic: self._live[topic].version for topic in self._live.topics}
        log.info("control topic %s read: configuration versions %s", self._reader.name, in_force)

    def catch_up(self, timeout_s: float = ASSIGN_TIMEOUT_S) -> None:
        """Apply every record up to the control topic's end as of now, for `timeout_s` at most
        (then the worker goes on with the versions read so far)."""
        self._reader.catch_up(self._apply, timeout_s)

    def poll(self) -> None:
        """Apply the records that arrived since the last call; never blocks."""
        self._reader.poll(self._apply)

    def close(self) -> None:
        """Close the control consumer."""
        self._reader.close()

    def _apply(self, record: Message) -> None:
        partition, offset = record.partition(), record.offset()
        assert partition is not None and offset is not None
        version = version_of(partition, offset)
        try:
            in_force = self._live.apply(record.key(), record.value(), version)
        except errors.ControlRecordError as exc:
            self._metrics.control_records_rejected.inc()
            log.warning(
                "control record %s@%s rejected, nothing changed: %s",
                self._reader.name,
                version,
                exc,
            )
            return
        self._metrics.control_records.inc()
        topic = in_force.entry.input
        replaced = self._router.route(topic).version
        self._router.replace(Route.from_settings(in_force.entry, in_force.version))
        self._metrics.config_in_force(topic, in_force.version, replaced)
        log.info(
            "control record %s@%s: topic %s served with configuration %s from now on (%s)",
            self._reader.name,
            version,
            topic,
            in_force.version,
            describe(in_force),
        )


def describe(in_force: InForce) -> str:
    """The entry in force, for the log: its labels, template and mode, and what changed."""
    entry = in_force.entry
    change = in_force.change
    changed = "the file's entry" if change is None else f"changed {sorted(change)}"
    mode = "multi-label" if entry.multi_label else "single-label"
    return f"{changed}; labels {entry.label_names}, template {entry.hypothesis_template!r}, {mode}"


def topic_exists(client: Consumer) -> TopicExists:
    """Whether a topic exists, asked of the cluster's metadata through a consumer (which,
    unlike a producer, never has a topic created by asking).

    A topic that cannot be looked up counts as existing, with a WARNING: an
    outage must not make one worker refuse a record the others apply.
    """

    def exists(name: str) -> bool:
        try:
            metadata = client.list_topics(name, timeout=REQUEST_TIMEOUT_S)
        except KafkaException as exc:
            log.warning("cannot tell whether topic %r exists (%s): taken to exist", name, exc)
            return True
        topic = metadata.topics.get(name)
        return topic is not None and topic.error is None

    return exists
