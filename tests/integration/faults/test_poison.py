"""Poison input: generated garbage interleaved with good events, through one running worker.

Every record comes back exactly once, classified or dead-lettered; the worker
never stops; every partition's committed offset reaches its end.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import NameFactory
from tests.integration.faults.conftest import EventTopics, FaultRow, Recorder
from tests.integration.faults.support import (
    LABELS,
    TEST_ID,
    Tally,
    event_value,
    produce_events,
    wait_until,
)
from tests.integration.harness import committed, make_settings, running
from worker import serde
from worker.nli.fake import FakeClassifier

PARTITIONS = 3
EXAMPLES = 6
POISON_PER_EXAMPLE = 25
ROUND_TIMEOUT_S = 60.0
COMMIT_TIMEOUT_S = 30.0
# Just under librdkafka's default message.max.bytes (1,000,000): the input fits,
# its output (plus the classification) does not, and its dead-letter record
# (plus the error headers) does not fit either.
NEAR_LIMIT_BYTES = 999_900
MAX_TEXT_CHARS = 2_000
# orjson reads 1024 levels of nesting and writes 254.
DEPTHS = (200, 300, 1_100)
# Every reason a record of this test may be dead-lettered for.
REASONS = {
    serde.EMPTY_VALUE,
    serde.INVALID_UTF8,
    serde.INVALID_JSON,
    serde.NOT_AN_OBJECT,
    serde.MISSING_TEXT,
    serde.INVALID_TEXT,
    serde.TEXT_TOO_LONG,
    serde.INVALID_LABELS,
    serde.OUTPUT_REJECTED,
}

# JSON numbers orjson can write: 64-bit integers, finite floats.
json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def nested(depth: int) -> bytes:
    """A valid event carrying a field nested `depth` levels deep."""
    return b'{"text": "deep", "x": ' + b"[" * depth + b"]" * depth + b"}"


def text_too_long() -> bytes:
    """An event whose text is over the topic's `max_text_chars`."""
    return orjson.dumps({"text": "x" * (MAX_TEXT_CHARS + 1)})


def near_the_limit() -> bytes:
    """A valid event of almost a megabyte: too large to produce once classified."""
    return b'{"text": "big", "blob": "' + b"b" * (NEAR_LIMIT_BYTES - 32) + b'"}'


poison_values: st.SearchStrategy[bytes | None] = st.one_of(
    st.none(),
    st.binary(max_size=200),
    st.binary(min_size=1, max_size=40).map(lambda tail: b"\xff\xfe" + tail),
    st.text(max_size=200).map(str.encode),
    json_values.map(orjson.dumps),
    st.fixed_dictionaries({"text": json_values}).map(orjson.dumps),
    st.fixed_dictionaries({"text": st.text(min_size=1), "labels": json_values}).map(orjson.dumps),
    st.fixed_dictionaries({"text": st.text(min_size=1, max_size=50), "extra": json_values}).map(
        orjson.dumps
    ),
    st.sampled_from(DEPTHS).map(nested),
    # Built on demand, so that a failure's report does not print a megabyte.
    st.builds(text_too_long),
    st.builds(near_the_limit),
)
poison_keys: st.SearchStrategy[bytes | None] = st.none() | st.binary(max_size=64)


def end_offsets(bootstrap_servers: str, topic: str) -> list[int]:
    """Each partition's high watermark."""
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": "end-offsets"})
    try:
        return [
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in range(PARTITIONS)
        ]
    finally:
        consumer.close()


def test_poison_records_are_dead_lettered_and_never_stall_a_partition(
    bootstrap_servers: str,
    event_topics: EventTopics,
    unique_name: NameFactory,
    record_fault: Recorder,
) -> None:
    source, sink, dlq = event_topics(PARTITIONS)
    topics: list[dict[str, Any]] = [
        {
            "input": source,
            "output": sink,
            "dead_letter": dlq,
            "labels": LABELS,
            "allow_event_labels": True,
            "max_text_chars": MAX_TEXT_CHARS,
        }
    ]
    group = unique_name("g")
    worker_settings = make_settings(bootstrap_servers, group, topics)
    produced: dict[int, bytes | None] = {}
    started = time.monotonic()

    with (
        running(worker_settings, FakeClassifier()) as worker,
        Tally(bootstrap_servers, [sink, dlq]) as tally,
    ):

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(
            poison=st.lists(
                st.tuples(poison_values, poison_keys),
                min_size=POISON_PER_EXAMPLE,
                max_size=POISON_PER_EXAMPLE,
            )
        )
        def round_trip(poison: list[tuple[bytes | None, bytes | None]]) -> None:
            first = len(produced)
            values: list[bytes | None] = []
            keys: list[bytes | None] = []
            for index, (value, key) in enumerate(poison):
                # A good event between every two bad ones, on any partition.
                values += [value, event_value(first + 2 * index + 1)]
                keys += [key, None]
            produce_events(bootstrap_servers, source, values, first_id=first, keys=keys)
            produced.update(enumerate(values, start=first))
            wait_until(
                lambda: not tally.missing(range(first, len(produced))),
                ROUND_TIMEOUT_S,
                "a record for every event of the round",
            )
            assert worker.worker.assignment, "the worker is still running"

        round_trip()
        time.sleep(1.0)  # duplicates, if any, would arrive now
        wait_until(
            lambda: (
                committed(bootstrap_servers, group, source, PARTITIONS)
                == end_offsets(bootstrap_servers, source)
            ),
            COMMIT_TIMEOUT_S,
            "every partition committed to its end",
        )

    record_fault(
        FaultRow(
            "poison input (hypothesis: bytes, bad UTF-8, wrong types, deep nesting, huge)",
            "at-least-once",
            f"{EXAMPLES} rounds of {POISON_PER_EXAMPLE} bad + {POISON_PER_EXAMPLE} good",
            f"{len(produced) // 2} poison records",
            len(produced),
            tally.total(),
            tally.duplicates(),
            len(tally.missing(produced)),
            time.monotonic() - started,
        )
    )
    assert not tally.missing(produced) and tally.duplicates() == 0
    for seen in tally.records:
        if seen.topic == dlq:
            assert seen.error_type in REASONS, seen.error_type
            headers = dict(seen.message.headers() or [])
            if b"read it at the source offset" in (headers["zsc.error.message"] or b""):
                assert seen.message.value() is None, "too large even to dead-letter"
            else:
                assert seen.message.value() == produced[seen.event], "bytes unchanged"
        else:
            assert seen.error_type is None
    reasons = Counter(seen.error_type for seen in tally.records if seen.topic == dlq)
    covered = {serde.INVALID_UTF8, serde.INVALID_JSON, serde.TEXT_TOO_LONG, serde.OUTPUT_REJECTED}
    assert covered <= set(reasons), f"the generated poison covers the hard cases: {reasons}"
    good = {number for number, value in produced.items() if number % 2 == 1}
    classified = {seen.event for seen in tally.records if seen.topic == sink}
    assert good <= classified, "every good event is classified"
    assert all(
        dict(seen.message.headers() or [])[TEST_ID] == str(seen.event).encode()
        for seen in tally.records
    )
