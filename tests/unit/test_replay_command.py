"""The pure parts of `zsc-worker replay`: headers, selection, destinations, delivery outcomes,
the offsets it commits, reading to the ends and the report; bad arguments without a broker."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from tests.unit.kafka_stubs import StubMessage
from worker import cli, errors, outputs
from worker.kafka.records import Headers
from worker.replay_command import (
    NO_ERROR_TYPE,
    STALL_TIMEOUT_S,
    ClientErrors,
    DeadLetter,
    Fate,
    Selection,
    Sender,
    Span,
    Target,
    commit_line,
    commit_positions,
    header_text,
    judge,
    kept_headers,
    parse_since,
    read_to_ends,
    summary_lines,
    target_of,
)

DLQ = "posts.dlq"
MIDNIGHT = datetime(2026, 12, 6, tzinfo=UTC)
DEAD_LETTER_HEADERS = [
    outputs.ERROR_TYPE,
    outputs.ERROR_MESSAGE,
    outputs.SOURCE_TOPIC,
    outputs.SOURCE_PARTITION,
    outputs.SOURCE_OFFSET,
]


def dead_letter_headers(
    error_type: str = "text_too_long", source: str | None = "posts", partition: str = "2"
) -> Headers:
    """A dead-letter record's headers as the worker writes them, after two of the event's own."""
    headers: Headers = [
        ("trace", b"t-1"),
        ("empty", None),
        (outputs.ERROR_TYPE, error_type.encode()),
    ]
    headers.append((outputs.ERROR_MESSAGE, b"'text' has 900 characters, over 500"))
    if source is not None:
        headers.append((outputs.SOURCE_TOPIC, source.encode()))
    headers += [(outputs.SOURCE_PARTITION, partition.encode()), (outputs.SOURCE_OFFSET, b"41")]
    return headers


def record(
    offset: int = 0, partition: int = 0, headers: Headers | None = None, at: datetime | None = None
) -> StubMessage:
    """A record of the dead-letter topic; `at`: its timestamp (None: not available)."""
    timestamp = (0, 0) if at is None else (1, int(at.timestamp() * 1000))
    chosen = dead_letter_headers() if headers is None else headers
    return StubMessage(DLQ, partition, offset, b"value", b"key", chosen, timestamp)


def letter(
    partition: int, offset: int, fate: Fate, error_type: str = "text_too_long"
) -> DeadLetter:
    return DeadLetter(partition, offset, error_type, None, [], Target("posts", None), fate)


def test_every_header_the_worker_writes_has_the_prefix_replay_strips() -> None:
    assert all(name.startswith(outputs.WORKER_HEADER_PREFIX) for name in DEAD_LETTER_HEADERS)


def test_kept_headers_are_the_events_own_in_order() -> None:
    headers = [*dead_letter_headers(), ("zsc.other", b"x"), ("trace", b"t-2")]
    assert kept_headers(headers) == [("trace", b"t-1"), ("empty", None), ("trace", b"t-2")]


def test_header_text_is_the_first_with_a_value() -> None:
    headers: Headers = [("a", None), ("a", b"caf\xc3\xa9"), ("a", b"second"), ("s", "text")]
    assert header_text(headers, "a") == "café"
    assert header_text(headers, "s") == "text"
    assert header_text(headers, "missing") is None
    assert header_text([("bad", b"\xff")], "bad") == "\ufffd"


def test_the_destination_is_to_else_the_source_topic_and_partition() -> None:
    headers = dead_letter_headers(source="posts", partition="2")
    assert target_of("elsewhere", headers) == Target("elsewhere", None)
    assert target_of(None, headers) == Target("posts", 2)
    assert target_of(None, dead_letter_headers(partition="x")) == Target("posts", None)
    assert target_of(None, dead_letter_headers(source=None)) is None
    assert str(Target("posts", 2)) == "posts[2]" and str(Target("posts", None)) == "posts"


def test_since_is_iso_8601_and_utc_without_an_offset() -> None:
    assert parse_since("2026-12-06") == MIDNIGHT
    assert parse_since("2026-12-06T00:00:00Z") == MIDNIGHT
    assert parse_since("2026-12-06T01:00:00+01:00") == MIDNIGHT
    assert parse_since("2026-12-06T01:00:00+01:00").tzinfo == timezone(timedelta(hours=1))
    with pytest.raises(errors.ConfigError, match="--since: 'yesterday' is not an ISO 8601 time"):
        parse_since("yesterday")


def test_selection_by_error_type_and_time() -> None:
    every = Selection()
    assert every.skip_reason("anything", None) is None
    types = Selection(frozenset({"text_too_long", "invalid_json"}))
    assert types.skip_reason("invalid_json", None) is None
    assert types.skip_reason("missing_text", MIDNIGHT) == "not an --error-type given"
    since = Selection(since=MIDNIGHT)
    assert since.skip_reason("x", MIDNIGHT) is None, "at the time given is selected"
    assert since.skip_reason("x", MIDNIGHT - timedelta(milliseconds=1)) == "before --since"
    assert since.skip_reason("x", None) == "no timestamp to compare with --since"


def test_judge_skips_selects_or_fails_a_record_with_nowhere_to_go() -> None:
    selection = Selection(frozenset({"text_too_long"}), MIDNIGHT)
    selected = judge(record(3, at=MIDNIGHT), None, selection)
    assert (selected.partition, selected.offset, selected.fate) == (0, 3, Fate.SELECTED)
    assert selected.error_type == "text_too_long" and selected.timestamp == MIDNIGHT
    assert selected.target == Target("posts", 2)
    assert selected.headers == [("trace", b"t-1"), ("empty", None)]

    other_type = judge(
        record(headers=dead_letter_headers("invalid_json"), at=MIDNIGHT), None, selection
    )
    assert (other_type.fate, other_type.reason) == (Fate.SKIPPED, "not an --error-type given")
    assert judge(record(at=None), None, selection).fate is Fate.SKIPPED

    nowhere = judge(record(headers=dead_letter_headers(source=None)), None, Selection())
    assert nowhere.fate is Fate.FAILED and "no zsc.source.topic header: give --to" in nowhere.reason
    assert judge(
        record(headers=dead_letter_headers(source=None)), "to", Selection()
    ).target == Target("to", None)
    untyped = judge(record(headers=[("trace", b"t")]), "to", Selection())
    assert untyped.error_type == NO_ERROR_TYPE and untyped.fate is Fate.SELECTED


def test_commit_positions_go_past_the_passed_and_stop_at_the_first_not_produced() -> None:
    letters = [
        letter(0, 10, Fate.SKIPPED),
        letter(0, 11, Fate.PRODUCED),
        letter(1, 7, Fate.PRODUCED),
        letter(1, 8, Fate.FAILED),
        letter(1, 9, Fate.PRODUCED),
        letter(1, 10, Fate.FAILED),
        letter(2, 4, Fate.SENT),
        letter(3, 0, Fate.SKIPPED),
    ]
    expected = {0: 12, 1: 8, 2: 4, 3: 1}
    assert commit_positions(letters) == expected
    assert commit_positions(reversed(letters)) == expected, "the order of reading does not matter"
    assert commit_positions([]) == {}


def test_a_delivery_refused_with_its_batch_is_tried_alone_once() -> None:
    too_large = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large")
    produced, rejected, timed_out = (letter(0, n, Fate.SENT) for n in range(3))
    produced.delivered(None, None)
    assert produced.fate is Fate.PRODUCED
    rejected.delivered(too_large, None)
    assert rejected.fate is Fate.REJECTED
    rejected.alone = True
    rejected.delivered(too_large, None)
    assert (rejected.fate, rejected.reason) == (Fate.FAILED, "Broker: Message size too large")
    timed_out.delivered(KafkaError(KafkaError._MSG_TIMED_OUT, "timed out"), None)
    assert timed_out.fate is Fate.FAILED


@dataclass
class SizeLimitedProducer:
    """Delivers at flush; like a broker, refuses every record queued with one over `limit`.
    Like librdkafka, refuses at once a record over `local_limit`."""

    limit: int
    local_limit: int
    silent: set[bytes] = field(default_factory=set)
    """Values never acknowledged."""
    sent: list[tuple[str, bytes, int | None, object]] = field(default_factory=list)
    queued: list[tuple[str, bytes, int | None, object, object]] = field(default_factory=list)

    def produce(self, topic, value, key=None, headers=None, on_delivery=None, partition=None):
        if len(value) > self.local_limit:
            raise KafkaException(
                KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "over message.max.bytes")
            )
        self.queued.append((topic, value, partition, headers, on_delivery))

    def poll(self, timeout: float = 0.0) -> int:
        return 0

    def flush(self, timeout: float = 0.0) -> int:
        batch, self.queued = self.queued, []
        refused = any(len(value) > self.limit for _, value, *_ in batch)
        for topic, value, partition, headers, on_delivery in batch:
            if value in self.silent:
                continue
            if refused:
                on_delivery(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "too large"), None)
            else:
                self.sent.append((topic, value, partition, headers))
                on_delivery(None, None)
        return 0


def test_the_sender_produces_neighbours_of_a_refused_record_alone_and_fails_only_it() -> None:
    producer = SizeLimitedProducer(limit=10, local_limit=100)
    sender = Sender(producer)  # type: ignore[arg-type]
    values = [b"small", b"x" * 11, b"small too", b"silent", b"y" * 101]
    producer.silent.add(b"silent")
    letters = []
    for offset, value in enumerate(values):
        letter_ = judge(record(offset), None, Selection())
        sender.send(letter_, StubMessage(DLQ, 0, offset, value, b"key"))
        letters.append(letter_)
    sender.settle(letters, timeout_s=1)
    fates = [x.fate for x in letters]
    assert fates == [Fate.PRODUCED, Fate.FAILED, Fate.PRODUCED, Fate.FAILED, Fate.FAILED]
    assert letters[1].reason == "too large"
    assert letters[3].reason == "not acknowledged within 1 s"
    assert letters[4].reason == "refused by the producer: over message.max.bytes"
    kept = [("trace", b"t-1"), ("empty", None)]
    assert producer.sent == [("posts", b"small", 2, kept), ("posts", b"small too", 2, kept)]
    assert all(x.record is None for x in letters), "settled records are not held"
    assert commit_positions(letters) == {0: 1}


def eof(partition: int, offset: int) -> StubMessage:
    return StubMessage(
        DLQ, partition, offset, None, None, None, (0, 0), KafkaError(KafkaError._PARTITION_EOF)
    )


@dataclass
class ScriptedConsumer:
    """Hands out one list of records per consume call, then nothing."""

    batches: list[list[StubMessage]]
    assigned: list[TopicPartition] = field(default_factory=list)
    paused: list[int] = field(default_factory=list)

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = partitions

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused += [tp.partition for tp in partitions]

    def consume(self, num_messages: int = 1, timeout: float = 0.0) -> list[StubMessage]:
        return self.batches.pop(0) if self.batches else []


def test_reading_stops_at_each_partitions_end_as_of_the_start() -> None:
    spans = {0: Span(5, 7), 1: Span(0, 3), 2: Span(4, 4)}
    consumer = ScriptedConsumer(
        [
            [record(5, 0), record(0, 1)],
            # Partition 1's last offsets hold no record (a transaction marker): its end
            # is reported instead. Partition 0 got a record since the start.
            [eof(1, 3), record(6, 0), record(7, 0)],
        ]
    )
    taken: list[tuple[int, int]] = []
    read_to_ends(
        consumer,
        DLQ,
        spans,
        lambda r: taken.append((r.partition(), r.offset())) or True,
        ClientErrors(),
    )  # type: ignore[arg-type]
    assert [(tp.partition, tp.offset) for tp in consumer.assigned] == [(0, 5), (1, 0)]
    assert taken == [(0, 5), (1, 0), (0, 6)]
    assert sorted(consumer.paused) == [0, 1]


def test_reading_stops_when_take_says_so() -> None:
    consumer = ScriptedConsumer([[record(0), record(1), record(2)]])
    taken: list[int] = []

    def take(r: StubMessage) -> bool:
        taken.append(r.offset())
        return len(taken) < 2

    read_to_ends(consumer, DLQ, {0: Span(0, 3)}, take, ClientErrors())  # type: ignore[arg-type]
    assert taken == [0, 1]


def test_reading_that_stalls_is_an_error_naming_the_last_client_error() -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += STALL_TIMEOUT_S / 2 + 1
        return now[0]

    transport = StubMessage(
        DLQ, 0, 0, None, None, None, (0, 0), KafkaError(KafkaError._TRANSPORT, "gone")
    )
    consumer = ScriptedConsumer([[transport]])
    with pytest.raises(
        errors.KafkaError, match=r"reading 'posts.dlq' stalled for 30 s \(last client error: gone\)"
    ):
        read_to_ends(consumer, DLQ, {0: Span(0, 3)}, lambda r: True, ClientErrors(), clock)  # type: ignore[arg-type]


def test_the_summary_counts_by_error_type_and_destination() -> None:
    letters = [
        letter(0, 0, Fate.PRODUCED),
        letter(0, 1, Fate.PRODUCED),
        letter(0, 2, Fate.FAILED),
        letter(0, 3, Fate.SKIPPED, "invalid_json"),
    ]
    lines = summary_lines(letters, dry_run=False)
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:3]}
    assert lines[0].split() == ["error", "type", "selected", "produced", "failed", "skipped"]
    assert rows == {"invalid_json": ["0", "0", "0", "1"], "text_too_long": ["3", "2", "1", "0"]}
    assert lines[3].split() == ["total", "3", "2", "1", "1"]
    assert lines[4:] == ["produced to posts: 2"]
    planned = summary_lines([letter(0, 0, Fate.SELECTED)], dry_run=True)
    assert planned[-1] == "would go to posts: 1"


def test_the_commit_line_says_where_the_group_stands() -> None:
    assert (
        commit_line(DLQ, {}, set(), dry_run=True) == "dry run: nothing produced, nothing committed"
    )
    assert commit_line(DLQ, {}, set(), dry_run=False) == "nothing committed"
    line = commit_line(DLQ, {0: 12, 1: 8}, {1}, dry_run=False)
    assert line.startswith("committed posts.dlq: partition 0 at 12, partition 1 at 8 (its first")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "last tuesday"], "--since: 'last tuesday' is not an ISO 8601 time"),
        (["--max", "0"], "--max: give a number of records, 1 or more"),
        (["--to", DLQ], "--to: the dead-letter topic itself"),
    ],
)
def test_bad_arguments_exit_with_the_config_status_before_any_broker_is_asked(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing listens on port 1: reaching for a broker would fail differently.
    code = cli.main(["replay", "--from", DLQ, "--bootstrap-servers", "127.0.0.1:1", *args])
    assert code == cli.EXIT_CONFIG
    assert message in capsys.readouterr().err
