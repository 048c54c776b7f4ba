"""An output topic that refuses some records for good (too large for its max.message.bytes).

The broker refuses a whole batch for one oversized record, so the records
batched with it are refused too. Only the oversized ones may end up
dead-lettered (`output_rejected`, with the broker's reason); every other event
is classified, each exactly once. The topic's limit applies to whole batches:
the worker's `batch.size` is set below it, as it must be for such a topic.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka.admin import AdminClient

from tests.integration.conftest import NameFactory
from tests.integration.faults.conftest import EventTopics, FaultRow, Recorder
from tests.integration.faults.support import (
    Tally,
    WorkerProcess,
    guarantee_servers,
    produce_events,
    topics_config,
    worker_processes,
    write_config,
)
from tests.integration.harness import committed, limit_record_size

PARTITIONS = 2
EVENTS = 200
# Every this many events one is too large for the output topic.
LARGE_EVERY = 40
MAX_MESSAGE_BYTES = 8192
# Room for the record batch's framing.
BATCH_BYTES = MAX_MESSAGE_BYTES - 1024
LARGE_TEXT_CHARS = 12_000
DRAIN_TIMEOUT_S = 60.0


def is_large(number: int) -> bool:
    """Whether event `number` is too large for the output topic."""
    return number % LARGE_EVERY == LARGE_EVERY // 2


def value_of(number: int) -> bytes:
    """A small event, or one whose output the topic refuses."""
    words = "word " * (LARGE_TEXT_CHARS // 5) if is_large(number) else "a small event"
    return orjson.dumps({"id": number, "text": f"Event {number}: {words}"})


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_records_the_output_topic_refuses_are_dead_lettered_alone(
    guarantee: str,
    request: pytest.FixtureRequest,
    event_topics: EventTopics,
    unique_name: NameFactory,
    record_fault: Recorder,
    tmp_path: Path,
) -> None:
    bootstrap_servers = guarantee_servers(request, guarantee)
    source, sink, dlq = event_topics(PARTITIONS)
    limit_record_size(
        AdminClient({"bootstrap.servers": bootstrap_servers}), sink, MAX_MESSAGE_BYTES
    )
    produce_events(bootstrap_servers, source, [value_of(n) for n in range(EVENTS)])
    group = unique_name("g")
    config = write_config(
        tmp_path,
        bootstrap_servers,
        group,
        topics_config(source, sink, dlq),
        processing_guarantee=guarantee,
        producer={"batch.size": BATCH_BYTES},
    )
    worker = WorkerProcess(config, tmp_path / "worker.log")
    started = time.monotonic()
    with worker_processes(worker), Tally(bootstrap_servers, [sink, dlq]) as tally:
        worker.start()
        tally.wait_for(range(EVENTS), DRAIN_TIMEOUT_S)
        code, _ = worker.terminate(20)
    lost = tally.missing(range(EVENTS))
    large = {n for n in range(EVENTS) if is_large(n)}
    dead = {seen.event: seen for seen in tally.records if seen.topic == dlq}
    record_fault(
        FaultRow(
            f"output topic refuses records over {MAX_MESSAGE_BYTES} bytes",
            guarantee,
            f"{EVENTS} events queued, {len(large)} too large",
            "refused produce (MSG_SIZE_TOO_LARGE)",
            EVENTS,
            tally.total(),
            tally.duplicates(),
            len(lost),
            time.monotonic() - started,
        )
    )
    assert code == 0, worker.log()[-3000:]
    assert not lost, f"{len(lost)} events lost, e.g. {sorted(lost)[:10]}"
    assert tally.duplicates() == 0, "each event has one record, output or dead letter"
    assert set(dead) == large, "exactly the oversized events are dead-lettered"
    for seen in dead.values():
        headers = dict(seen.message.headers() or [])
        assert headers["zsc.error.type"] == b"output_rejected"
        assert b"too large" in (headers["zsc.error.message"] or b"")
        assert seen.message.value() == value_of(seen.event), "dead-lettered bytes are unchanged"
    assert sum(committed(bootstrap_servers, group, source, PARTITIONS)) == EVENTS
