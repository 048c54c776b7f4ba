"""`zsc-worker replay`: send dead-lettered records back to their topics after a fix.

Where a replay starts. The command reads the dead-letter topic under a consumer
group of its own, `zsc-replay.<topic>` unless `--group-id` names another: a
group that never committed starts at the topic's beginning, and every later run
at the group's committed offsets, so a second replay does not send again what
the first one sent. It reads each partition up to its end as of the start and
stops there (or once `--max` records are selected).

What it commits. A record read is either selected (`--error-type`, `--since`)
and sent back, or skipped. Both are passed: the group's offset of a partition
moves past them, but never past the first record that could not be produced, so
the next run starts at that one. Skipped records are passed because the group's
position belongs to the runs, not to one error type: to replay other types of
the same records later, give that run a group of its own. A dry run produces
and commits nothing, so the real run that follows it does what it showed.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from config.kafka import KafkaSettings
from worker import errors
from worker.kafka.clients import (
    DeliveryFailure,
    delivery_failure,
    make_command_producer,
    make_replay_consumer,
    translate,
)
from worker.kafka.records import Headers, Record, headers_of
from worker.outputs import ERROR_TYPE, SOURCE_PARTITION, SOURCE_TOPIC, WORKER_HEADER_PREFIX

log = logging.getLogger(__name__)

# The group of a replay unless --group-id names one: one per dead-letter topic.
GROUP_PREFIX = "zsc-replay."
# How long a metadata, committed-offsets or watermark request may take.
REQUEST_TIMEOUT_S = 10.0
# How long reading may go without a record or a partition's end before the
# brokers are taken to be gone: fetches answer in milliseconds on a live cluster.
STALL_TIMEOUT_S = 30.0
# Records taken per consume call, and the longest wait of one.
CONSUME_RECORDS = 500
CONSUME_WAIT_S = 0.5
# How long the deliveries may take once everything is produced (librdkafka
# retries transient errors meanwhile); a record not acknowledged by then failed.
DELIVERY_TIMEOUT_S = 60.0
# While the producer's local queue is full, how long one wait for delivery reports lasts.
QUEUE_FULL_WAIT_S = 0.05
# The error type shown for a record without a `zsc.error.type` header.
NO_ERROR_TYPE = "(none)"


def default_group(dead_letter_topic: str) -> str:
    """The consumer group whose offsets say where replays of a dead-letter topic stand."""
    return GROUP_PREFIX + dead_letter_topic


def parse_since(text: str) -> datetime:
    """`--since` as an aware time: ISO 8601, a time without an offset being UTC."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise errors.ConfigError(
            f"--since: {text!r} is not an ISO 8601 time (e.g. 2026-12-06 or 2026-12-06T09:30:00Z)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def header_text(headers: Headers, name: str) -> str | None:
    """The first header called `name`, as text; None when there is none or it has no value."""
    for key, value in headers:
        if key == name and value is not None:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return None


def kept_headers(headers: Headers) -> Headers:
    """The headers a replayed record carries: the original's, without the worker's `zsc.*`."""
    return [(key, value) for key, value in headers if not key.startswith(WORKER_HEADER_PREFIX)]


@dataclass(frozen=True, slots=True)
class Target:
    """Where a record is sent back."""

    topic: str
    partition: int | None
    """None: the producer's partitioner picks one from the key."""

    def __str__(self) -> str:
        return self.topic if self.partition is None else f"{self.topic}[{self.partition}]"


def target_of(to: str | None, headers: Headers) -> Target | None:
    """`--to` (the partition picked by key), else the record's source topic and partition, so
    that a keyed record goes back beside the other records of its key; None when neither is
    known."""
    if to is not None:
        return Target(to, None)
    source = header_text(headers, SOURCE_TOPIC)
    if not source:
        return None
    partition = header_text(headers, SOURCE_PARTITION)
    return Target(source, int(partition) if partition and partition.isdigit() else None)


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead-letter records a replay sends back."""

    error_types: frozenset[str] = frozenset()
    """The `zsc.error.type` values selected; empty: every one."""
    since: datetime | None = None
    """The earliest record timestamp selected; None: any."""

    def skip_reason(self, error_type: str, timestamp: datetime | None) -> str | None:
        """Why a record is not selected; None when it is."""
        if self.error_types and error_type not in self.error_types:
            return "not an --error-type given"
        if self.since is not None:
            if timestamp is None:
                return "no timestamp to compare with --since"
            if timestamp < self.since:
                return "before --since"
        return None


class Fate(enum.Enum):
    """What became of a dead-letter record read by a replay."""

    SKIPPED = "skipped"
    """Not selected: passed over, not produced."""
    SELECTED = "selected"
    """Selected, not produced: where a dry run leaves it."""
    SENT = "sent"
    """Handed to the producer; its delivery is not reported yet."""
    REJECTED = "rejected"
    """Refused by the topic, perhaps for a neighbour in its batch: to be produced again alone."""
    PRODUCED = "produced"
    """Acknowledged by the broker."""
    FAILED = "failed"
    """Could not be produced; `reason` says why."""


# Fates the group's offset of a partition may move past.
PASSED = frozenset({Fate.SKIPPED, Fate.PRODUCED})


@dataclass(slots=True)
class DeadLetter:
    """A record of the dead-letter topic and what became of it."""

    partition: int
    offset: int
    error_type: str
    timestamp: datetime | None
    headers: Headers
    """The headers it is sent back with."""
    target: Target | None
    fate: Fate
    reason: str = ""
    record: Record | None = field(default=None, repr=False)
    """The record read, held from its production until its delivery is settled."""
    alone: bool = False
    """Whether it was produced on its own, after its batch was refused."""

    def delivered(self, error: KafkaError | None, _message: Message) -> None:
        """The producer's delivery report."""
        if error is None:
            self.fate, self.record = Fate.PRODUCED, None
        elif delivery_failure(error) is DeliveryFailure.REJECTED and not self.alone:
            self.fate, self.reason = Fate.REJECTED, error.str()
        else:
            self.fail(error.str())

    def fail(self, reason: str) -> None:
        """It cannot be produced, for `reason`."""
        self.fate, self.reason, self.record = Fate.FAILED, reason, None

    def line(self, topic: str) -> str:
        """Where it is in the dead-letter topic, its error type and what became of it."""
        when = "-" if self.timestamp is None else self.timestamp.isoformat(timespec="seconds")
        where = f"{topic}[{self.partition}]@{self.offset} {when} {self.error_type}"
        if self.fate is Fate.SKIPPED:
            return f"{where}: skipped, {self.reason}"
        if self.fate is Fate.FAILED:
            return f"{where}: cannot be produced to {self.target or '?'}: {self.reason}"
        kept = ", ".join(key for key, _ in self.headers) or "none"
        return f"{where} -> {self.target} (headers kept: {kept})"


def judge(record: Record, to: str | None, selection: Selection) -> DeadLetter:
    """A record read from the dead-letter topic: skipped, selected, or failed already when
    there is nowhere to send it."""
    partition, offset = record.partition(), record.offset()
    assert partition is not None and offset is not None
    headers = headers_of(record) or []
    error_type = header_text(headers, ERROR_TYPE) or NO_ERROR_TYPE
    kind, milliseconds = record.timestamp()
    timestamp = (
        None
        if kind == TIMESTAMP_NOT_AVAILABLE
        else datetime.fromtimestamp(milliseconds / 1000, tz=UTC)
    )
    letter = DeadLetter(
        partition,
        offset,
        error_type,
        timestamp,
        kept_headers(headers),
        target_of(to, headers),
        Fate.SELECTED,
    )
    if (reason := selection.skip_reason(error_type, timestamp)) is not None:
        letter.fate, letter.reason = Fate.SKIPPED, reason
    elif letter.target is None:
        letter.fail(f"no {SOURCE_TOPIC} header: give --to")
    return letter


def commit_positions(letters: Iterable[DeadLetter]) -> dict[int, int]:
    """The offset to commit for each partition read: past its last record, but never past
    its first record that was not produced (the next replay starts at that one)."""
    positions: dict[int, int] = {}
    held: set[int] = set()
    for letter in sorted(letters, key=lambda letter: (letter.partition, letter.offset)):
        if letter.partition in held:
            continue
        if letter.fate in PASSED:
            positions[letter.partition] = letter.offset + 1
        else:
            positions[letter.partition] = letter.offset
            held.add(letter.partition)
    return positions


class ClientErrors:
    """The replay clients' errors: each kind logged once, the last kept to say why the
    command could not go on."""

    def __init__(self) -> None:
        self.last = ""
        self._logged: set[int] = set()

    def on_error(self, error: KafkaError) -> None:
        """A client's error (its error callback), or one handed out with the records."""
        self.last = error.str()
        if error.code() not in self._logged:
            self._logged.add(error.code())
            log.warning("kafka: %s", self.last)

    def cause(self) -> str:
        """The last error, to add to a message; empty when there was none."""
        return f" (last client error: {self.last})" if self.last else ""


@dataclass(frozen=True, slots=True)
class Span:
    """The offsets of a partition a replay reads: from the group's position (or the
    partition's beginning) up to the partition's end as of the start."""

    start: int
    end: int


def open_spans(
    consumer: Consumer, topic: str, to: str | None, servers: str, client_errors: ClientErrors
) -> dict[int, Span]:
    """Each partition's span; ConfigError when the topic (or `--to`) does not exist."""
    try:
        partitions = _partitions(consumer, topic, "--from", servers, client_errors)
        if to is not None:
            _partitions(consumer, to, "--to", servers, client_errors)
        wanted = [TopicPartition(topic, p) for p in partitions]
        committed = consumer.committed(wanted, timeout=REQUEST_TIMEOUT_S)
        spans = {}
        for partition in committed:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition.partition), timeout=REQUEST_TIMEOUT_S, cached=False
            )
            # No committed offset reads as a negative one: the partition's beginning.
            spans[partition.partition] = Span(max(low, partition.offset), high)
    except KafkaException as exc:
        raise translate(exc, f"cannot read {topic!r} at {servers}") from None
    return spans


def _partitions(
    consumer: Consumer, topic: str, flag: str, servers: str, client_errors: ClientErrors
) -> list[int]:
    """The topic's partition numbers, or why it cannot be read."""
    try:
        metadata = consumer.list_topics(topic, timeout=REQUEST_TIMEOUT_S)
    except KafkaException as exc:
        # The client's errors wait for a poll to reach their callback: they say why.
        consumer.poll(0)
        failure = translate(exc, f"cannot reach the brokers at {servers}")
        raise errors.KafkaError(
            f"{failure}{client_errors.cause()}", failure.code, failure.retriable
        ) from None
    found = metadata.topics.get(topic)
    error = None if found is None else found.error
    if (
        found is None
        or not found.partitions
        or (error is not None and error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART)
    ):
        raise errors.ConfigError(f"{flag}: topic {topic!r} does not exist at {servers}")
    if error is not None:
        raise errors.KafkaError(f"{flag}: cannot read topic {topic!r}: {error.str()}", error.code())
    return sorted(found.partitions)


def read_to_ends(
    consumer: Consumer,
    topic: str,
    spans: dict[int, Span],
    take: Callable[[Message], bool],
    client_errors: ClientErrors,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Give `take` each record of the spans in offset order per partition, until every
    partition is read to its end or `take` returns False; KafkaError when the brokers stop
    answering for STALL_TIMEOUT_S."""
    pending = {p: span.end for p, span in spans.items() if span.start < span.end}
    consumer.assign([TopicPartition(topic, p, spans[p].start) for p in pending])
    last_progress = clock()
    while pending:
        for record in consumer.consume(CONSUME_RECORDS, CONSUME_WAIT_S):
            partition, offset = record.partition(), record.offset()
            assert partition is not None and offset is not None
            error = record.error()
            if error is not None and error.code() != KafkaError._PARTITION_EOF:
                # Reconnects and leader moves are routine: the stall timeout judges.
                client_errors.on_error(error)
                continue
            if partition not in pending:
                continue
            last_progress = clock()
            end = pending[partition]
            if error is not None or offset + 1 >= end:
                # Read to its end: records produced since the start are not fetched.
                del pending[partition]
                consumer.pause([TopicPartition(topic, partition)])
            if error is None and offset < end and not take(record):
                return
        if pending and clock() - last_progress > STALL_TIMEOUT_S:
            raise errors.KafkaError(
                f"reading {topic!r} stalled for {STALL_TIMEOUT_S:.0f} s{client_errors.cause()}",
                KafkaError._TIMED_OUT,
                retriable=True,
            )


class Sender:
    """Produces the selected records and settles every delivery."""

    def __init__(self, producer: Producer) -> None:
        self._producer = producer

    def send(self, letter: DeadLetter, record: Record) -> None:
        """Produce a selected record to its target; its fate follows the delivery."""
        target = letter.target
        assert target is not None
        letter.record = record
        where: dict[str, Any] = {} if target.partition is None else {"partition": target.partition}
        letter.fate = Fate.SENT
        while True:
            try:
                self._producer.produce(
                    target.topic,
                    record.value(),
                    record.key(),
                    headers=letter.headers,
                    on_delivery=letter.delivered,
                    **where,
                )
                break
            except BufferError:
                self._producer.poll(QUEUE_FULL_WAIT_S)
            except KafkaException as exc:
                letter.fail(str(translate(exc, "refused by the producer")))
                return
        self._producer.poll(0)

    def settle(self, letters: list[DeadLetter], timeout_s: float = DELIVERY_TIMEOUT_S) -> None:
        """Wait for every delivery; a record refused with its batch is produced again on its
        own, and one not acknowledged within `timeout_s` failed."""
        self._producer.flush(timeout_s)
        for letter in letters:
            if letter.fate is Fate.REJECTED:
                assert letter.record is not None
                letter.alone = True
                self.send(letter, letter.record)
                self._producer.flush(timeout_s)
        for letter in letters:
            if letter.fate is Fate.SENT:
                letter.fail(f"not acknowledged within {timeout_s:.0f} s")


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """What to replay, from where to where."""

    dead_letter_topic: str
    to: str | None
    selection: Selection
    max_records: int | None
    dry_run: bool
    group_id: str


def replay(kafka: KafkaSettings, options: ReplayOptions, out: TextIO) -> int:
    """Replay the dead-letter topic and report on `out`: 0, or 1 when a selected record could
    not be produced."""
    topic = options.dead_letter_topic
    client_errors = ClientErrors()
    consumer = make_replay_consumer(kafka, options.group_id, client_errors.on_error)
    try:
        spans = open_spans(consumer, topic, options.to, kafka.bootstrap_servers, client_errors)
        print(reading_line(topic, options.group_id, spans), file=out, flush=True)
        sender = (
            None
            if options.dry_run
            else Sender(make_command_producer(kafka, client_errors.on_error))
        )
        letters: list[DeadLetter] = []
        selected = 0

        def take(record: Message) -> bool:
            nonlocal selected
            letter = judge(record, options.to, options.selection)
            letters.append(letter)
            if letter.fate is not Fate.SKIPPED:
                selected += 1
            if options.dry_run:
                print(letter.line(topic), file=out)
            elif sender is not None and letter.fate is Fate.SELECTED:
                sender.send(letter, record)
            return options.max_records is None or selected < options.max_records

        stalled: errors.KafkaError | None = None
        try:
            read_to_ends(consumer, topic, spans, take, client_errors)
        except errors.KafkaError as exc:
            stalled = exc
        if sender is not None:
            sender.settle(letters)
            for letter in letters:
                if letter.fate is Fate.FAILED:
                    print(letter.line(topic), file=out)
        for line in summary_lines(letters, options.dry_run):
            print(line, file=out)
        positions = {} if options.dry_run else commit_positions(letters)
        _commit(consumer, topic, positions)
        held = {letter.partition for letter in letters if letter.fate is Fate.FAILED}
        print(commit_line(topic, positions, held, options.dry_run), file=out, flush=True)
        if stalled is not None:
            raise stalled
        return 1 if held else 0
    finally:
        consumer.close()


def _commit(consumer: Consumer, topic: str, positions: dict[int, int]) -> None:
    if not positions:
        return
    offsets = [TopicPartition(topic, p, offset) for p, offset in sorted(positions.items())]
    try:
        for result in consumer.commit(offsets=offsets, asynchronous=False) or []:
            if result.error is not None:
                raise KafkaException(result.error)
    except KafkaException as exc:
        raise translate(
            exc,
            "records were sent back but the group's offsets were not committed"
            " (the next replay sends them again)",
        ) from None


def reading_line(topic: str, group_id: str, spans: dict[int, Span]) -> str:
    """What the replay is about to read."""
    parts = [
        f"partition {p} offsets {span.start}-{span.end - 1}"
        for p, span in sorted(spans.items())
        if span.start < span.end
    ]
    what = "; ".join(parts) if parts else "nothing new since the last replay"
    return f"replaying {topic} as group {group_id}: {what}"


def summary_lines(letters: list[DeadLetter], dry_run: bool) -> list[str]:
    """A table of the records read by error type (selected, produced, failed, skipped), and
    how many went (or would go) to each topic."""
    counts: dict[str, Counter[str]] = {}
    for letter in letters:
        row = counts.setdefault(letter.error_type, Counter())
        row["selected" if letter.fate is not Fate.SKIPPED else "skipped"] += 1
        if letter.fate in (Fate.PRODUCED, Fate.FAILED):
            row[letter.fate.value] += 1
    total: Counter[str] = sum(counts.values(), Counter())
    width = max([len("error type"), *(len(name) for name in counts)])
    columns = ("selected", "produced", "failed", "skipped")
    lines = [f"{'error type':<{width}}" + "".join(f"{c:>10}" for c in columns)]
    for name, row in [*sorted(counts.items()), ("total", total)]:
        lines.append(f"{name:<{width}}" + "".join(f"{row[c]:>10}" for c in columns))
    went = Fate.SELECTED if dry_run else Fate.PRODUCED
    destinations = Counter(
        letter.target.topic for letter in letters if letter.fate is went and letter.target
    )
    verb = "would go to" if dry_run else "produced to"
    lines += [f"{verb} {name}: {n}" for name, n in sorted(destinations.items())]
    return lines


def commit_line(topic: str, positions: dict[int, int], held: set[int], dry_run: bool) -> str:
    """Where the group now stands, and which partitions a record not produced holds back."""
    if dry_run:
        return "dry run: nothing produced, nothing committed"
    if not positions:
        return "nothing committed"
    parts = [
        f"partition {partition} at {offset}"
        + (
            " (its first record not produced: the next replay starts there)"
            if partition in held
            else ""
        )
        for partition, offset in sorted(positions.items())
    ]
    return f"committed {topic}: " + ", ".join(parts)
