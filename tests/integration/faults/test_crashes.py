"""Worker processes killed with SIGKILL at random moments, and stopped with SIGTERM mid-batch."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from tests.integration.conftest import NameFactory
from tests.integration.faults.conftest import EventTopics, FaultRow, Recorder
from tests.integration.faults.support import (
    EXIT_MARGIN_S,
    EventStream,
    Tally,
    WorkerProcess,
    event_value,
    guarantee_servers,
    produce_events,
    topics_config,
    worker_processes,
    write_config,
)
from tests.integration.harness import committed
from worker.cli import EXIT_RUNTIME
from worker.kafka.clients import transactional_id

PARTITIONS = 4
EVENTS = 2000
EVENTS_PER_S = 100.0
KILLS = 5
# A kill lands this long after the (re)started worker got its partitions:
# mid-batch, mid-delivery, mid-transaction, mid-commit.
KILL_AFTER_S = (0.2, 2.5)
SEED = 20240517
DRAIN_TIMEOUT_S = 90.0
# A fenced static member learns it at its next heartbeat: seconds.
FENCED_EXIT_TIMEOUT_S = 30.0


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_sigkill_at_random_moments_while_events_flow(
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
        # Static membership: a restarted worker takes its partitions back at
        # once, and under exactly-once its stable transactional id fences the
        # killed one's open transaction instead of waiting for it to time out.
        consumer={"group.instance.id": "worker-1"},
    )
    worker = WorkerProcess(config, tmp_path / "worker.log")
    rng = random.Random(SEED)
    started = time.monotonic()
    with worker_processes(worker), Tally(bootstrap_servers, [sink, dlq]) as tally:
        stream = EventStream(bootstrap_servers, source, EVENTS, EVENTS_PER_S).start()
        worker.start()
        progress = []
        for _ in range(KILLS):
            worker.wait_for_log("assigned", times=worker.starts)
            time.sleep(rng.uniform(*KILL_AFTER_S))
            worker.kill()
            progress.append(tally.total())
            worker.start()
        stream.join()
        tally.wait_for(range(EVENTS), DRAIN_TIMEOUT_S)
        code, _ = worker.terminate(10 + EXIT_MARGIN_S)
        lost = tally.missing(range(EVENTS))
        duplicates = tally.duplicates()
        outputs = tally.total()

    record_fault(
        FaultRow(
            "SIGKILL at random moments, restart",
            guarantee,
            f"{EVENTS_PER_S:.0f} events/s, {PARTITIONS} partitions",
            f"{KILLS} x SIGKILL",
            EVENTS,
            outputs,
            duplicates,
            len(lost),
            time.monotonic() - started,
        )
    )
    assert code == 0, worker.log()[-3000:]
    assert not lost, f"{len(lost)} events lost, e.g. {sorted(lost)[:10]}"
    assert progress[-1] > 0, f"no output between the kills: {progress}"
    if guarantee == "exactly-once":
        assert duplicates == 0, "a read_committed reader sees every output once"
    assert all(seen.error_type is None for seen in tally.records), "nothing was dead-lettered"


@pytest.mark.parametrize(
    ("shutdown_timeout_s", "finishes_batch"),
    [(10.0, True), (1.0, False)],
    ids=["finish", "abandon"],
)
def test_sigterm_mid_batch_exits_within_the_shutdown_timeout(
    shutdown_timeout_s: float,
    finishes_batch: bool,
    bootstrap_servers: str,
    event_topics: EventTopics,
    unique_name: NameFactory,
    tmp_path: Path,
) -> None:
    source, sink, dlq = event_topics()
    group = unique_name("g")
    batch_s = 3.0
    config = write_config(
        tmp_path,
        bootstrap_servers,
        group,
        topics_config(source, sink, dlq),
        batching={"max_events": 20, "max_wait_ms": 20},
        shutdown_timeout_s=shutdown_timeout_s,
    )
    events = 40
    produce_events(bootstrap_servers, source, [event_value(n) for n in range(events)])
    worker = WorkerProcess(config, tmp_path / "worker.log", model=f"fake:delay_s={batch_s}")
    with worker_processes(worker), Tally(bootstrap_servers, [sink, dlq]) as tally:
        worker.start()
        worker.wait_for_log("assigned")
        time.sleep(1.0)  # the first batch is on the model now
        code, seconds = worker.terminate(shutdown_timeout_s + EXIT_MARGIN_S)
        assert code == 0, worker.log()[-3000:]
        assert seconds < shutdown_timeout_s + EXIT_MARGIN_S
        time.sleep(1.0)
        first_run = tally.total()
        [offset] = committed(bootstrap_servers, group, source, 1)
        # An offset is committed only once its output exists.
        assert max(offset, 0) == first_run
        if finishes_batch:
            assert first_run >= 20, "the batch on the model was finished and delivered"
        else:
            assert first_run == 0, "the batch on the model was abandoned, not half-delivered"

        worker.model = "fake:"
        worker.start()
        tally.wait_for(range(events), 60)
        worker.terminate(10 + EXIT_MARGIN_S)
    assert not tally.missing(range(events))
    assert tally.duplicates() == 0


FENCES = 4
FENCE_EVERY_S = 3.0


def test_a_fenced_transactional_producer_is_replaced_while_events_flow(
    exactly_once_bootstrap_servers: str,
    event_topics: EventTopics,
    unique_name: NameFactory,
    record_fault: Recorder,
    tmp_path: Path,
) -> None:
    """A producer that takes the worker's transactional id fences the worker's producer, as
    the coordinator does when it aborts a transaction that outlived its timeout: the fatal
    error reaches the worker mid-delivery, from poll or flush, and the worker replaces its
    producer and redoes the aborted work instead of exiting."""
    bootstrap_servers = exactly_once_bootstrap_servers
    source, sink, dlq = event_topics(PARTITIONS)
    group = unique_name("g")
    config = write_config(
        tmp_path,
        bootstrap_servers,
        group,
        topics_config(source, sink, dlq),
        processing_guarantee="exactly-once",
        consumer={"group.instance.id": "worker-1"},
    )
    worker = WorkerProcess(config, tmp_path / "worker.log")
    started = time.monotonic()
    with worker_processes(worker), Tally(bootstrap_servers, [sink, dlq]) as tally:
        stream = EventStream(bootstrap_servers, source, EVENTS, EVENTS_PER_S).start()
        worker.start()
        worker.wait_for_log("assigned")
        progress = []
        for _ in range(FENCES):
            time.sleep(FENCE_EVERY_S)
            fencer = Producer(
                {
                    "bootstrap.servers": bootstrap_servers,
                    "transactional.id": transactional_id(group, "worker-1"),
                }
            )
            fencer.init_transactions(30)
            fencer.flush(0)
            progress.append(tally.total())
            assert worker.alive, f"the worker exited once fenced:\n{worker.log()[-3000:]}"
        worker.wait_for_log("the transactional producer failed for good", times=1)
        stream.join()
        tally.wait_for(range(EVENTS), DRAIN_TIMEOUT_S)
        assert worker.alive, f"the worker exited:\n{worker.log()[-3000:]}"
        code, _ = worker.terminate(10 + EXIT_MARGIN_S)
        lost = tally.missing(range(EVENTS))
        duplicates = tally.duplicates()
        outputs = tally.total()

    record_fault(
        FaultRow(
            "transactional producer fenced by another with its id",
            "exactly-once",
            f"{EVENTS_PER_S:.0f} events/s, {PARTITIONS} partitions",
            f"{FENCES} x fenced",
            EVENTS,
            outputs,
            duplicates,
            len(lost),
            time.monotonic() - started,
        )
    )
    assert code == 0, worker.log()[-3000:]
    assert not lost, f"{len(lost)} events lost, e.g. {sorted(lost)[:10]}"
    assert progress[-1] > progress[0], f"no output between the fences: {progress}"
    assert duplicates == 0, "a read_committed reader sees every output once"


def test_a_second_worker_with_the_same_instance_id_stops_the_first_with_a_clear_error(
    bootstrap_servers: str,
    event_topics: EventTopics,
    unique_name: NameFactory,
    tmp_path: Path,
) -> None:
    """Two replicas given one `group.instance.id` (a deployment mistake): the coordinator
    fences the older, whose consumer then fails for good. It must exit with an error that
    says why, not a traceback, while the newer one goes on with every partition."""
    source, sink, dlq = event_topics(PARTITIONS)
    config = write_config(
        tmp_path,
        bootstrap_servers,
        unique_name("g"),
        topics_config(source, sink, dlq),
        consumer={"group.instance.id": "replica"},
    )
    first = WorkerProcess(config, tmp_path / "first.log")
    second = WorkerProcess(config, tmp_path / "second.log")
    events = 600
    with worker_processes(first, second), Tally(bootstrap_servers, [sink, dlq]) as tally:
        stream = EventStream(bootstrap_servers, source, events, EVENTS_PER_S).start()
        first.start()
        first.wait_for_log("assigned")
        second.start()
        second.wait_for_log("assigned")
        code = first.wait_for_exit(FENCED_EXIT_TIMEOUT_S)
        stream.join()
        tally.wait_for(range(events), DRAIN_TIMEOUT_S)
        assert second.alive, second.log()[-3000:]
        second_code, _ = second.terminate(10 + EXIT_MARGIN_S)
        lost = tally.missing(range(events))

    log = first.log()
    assert code == EXIT_RUNTIME, log[-3000:]
    assert "zsc-worker: the consumer failed" in log, log[-3000:]
    assert "group.instance.id" in log
    assert "Traceback" not in log, log[-3000:]
    assert second_code == 0, second.log()[-3000:]
    assert not lost, f"{len(lost)} events lost, e.g. {sorted(lost)[:10]}"
