"""Three workers share a topic; one is stopped with SIGTERM and one killed while events flow."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.integration.conftest import NameFactory
from tests.integration.faults.conftest import EventTopics, FaultRow, Recorder
from tests.integration.faults.support import (
    EXIT_MARGIN_S,
    EventStream,
    Tally,
    WorkerProcess,
    guarantee_servers,
    topics_config,
    worker_processes,
    write_config,
)

PARTITIONS = 6
EVENTS = 2400
EVENTS_PER_S = 100.0
SHUTDOWN_TIMEOUT_S = 10.0
# Into the stream: the graceful stop, then the kill, each while events flow.
STOP_AT_S = 6.0
KILL_AT_S = 12.0
# The survivor takes the killed worker's partitions after its session times
# out; under exactly-once its open transaction must time out too (10 s).
DRAIN_TIMEOUT_S = 90.0


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_three_workers_one_stopped_one_killed_lose_nothing(
    guarantee: str,
    request: pytest.FixtureRequest,
    event_topics: EventTopics,
    unique_name: NameFactory,
    record_fault: Recorder,
    tmp_path: Path,
) -> None:
    bootstrap_servers = guarantee_servers(request, guarantee)
    source, sink, dlq = event_topics(PARTITIONS)
    config = write_config(
        tmp_path,
        bootstrap_servers,
        unique_name("g"),
        topics_config(source, sink, dlq),
        processing_guarantee=guarantee,
        shutdown_timeout_s=SHUTDOWN_TIMEOUT_S,
    )
    stopped, killed, survivor = (
        WorkerProcess(config, tmp_path / f"worker-{name}.log")
        for name in ("stopped", "killed", "survivor")
    )
    started = time.monotonic()
    with (
        worker_processes(stopped, killed, survivor),
        Tally(bootstrap_servers, [sink, dlq]) as tally,
    ):
        for worker in (stopped, killed, survivor):
            worker.start()
        for worker in (stopped, killed, survivor):
            worker.wait_for_log(f"assigned {source}")
        stream = EventStream(bootstrap_servers, source, EVENTS, EVENTS_PER_S).start()
        time.sleep(STOP_AT_S)
        code, seconds = stopped.terminate(SHUTDOWN_TIMEOUT_S + EXIT_MARGIN_S)
        time.sleep(KILL_AT_S - STOP_AT_S - seconds)
        killed.kill()
        stream.join()
        tally.wait_for(range(EVENTS), DRAIN_TIMEOUT_S)
        assert survivor.alive, survivor.log()[-3000:]
        survivor.terminate(SHUTDOWN_TIMEOUT_S + EXIT_MARGIN_S)
        lost = tally.missing(range(EVENTS))
        duplicates = tally.duplicates()
        outputs = tally.total()

    record_fault(
        FaultRow(
            "3 workers: 1 SIGTERM, 1 SIGKILL",
            guarantee,
            f"{EVENTS_PER_S:.0f} events/s, {PARTITIONS} partitions",
            "graceful stop, then kill",
            EVENTS,
            outputs,
            duplicates,
            len(lost),
            time.monotonic() - started,
        )
    )
    assert code == 0, stopped.log()[-3000:]
    assert not lost, f"{len(lost)} events lost, e.g. {sorted(lost)[:10]}"
    if guarantee == "exactly-once":
        assert duplicates == 0, "a read_committed reader sees every output once"
    partitions = {seen.message.partition() for seen in tally.records}
    assert len(partitions) == PARTITIONS
