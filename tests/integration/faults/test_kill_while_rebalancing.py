"""A worker killed again and again while a second one joins and leaves, with default settings.

No static membership and the worker's own session and transaction timeouts:
what a deployment gets when it sets nothing. Every kill leaves a member the
group must expire and, under exactly-once, an open transaction only the
broker's timeout ends (its transactional id dies with the process); every join
and leave moves partitions under load. Nothing may be lost, a read_committed
reader may see nothing twice, and the last outputs must come promptly.
"""

from __future__ import annotations

import random
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
EVENTS = 4000
EVENTS_PER_S = 100.0
SHUTDOWN_TIMEOUT_S = 10.0
# What happens to the two workers, in order, each a random pause after the
# last: A is killed (and restarted at once) four times; B joins, leaves with
# SIGTERM, joins again and is killed, so A must take its partitions back from
# a dead member too.
SCRIPT = (
    "kill A",
    "start B",
    "kill A",
    "kill A",
    "stop B",
    "start B",
    "kill A",
    "kill B",
)
PAUSE_S = (1.0, 5.0)
SEED = 20240611
# How long the last outputs may take after the last event was produced: the
# last killed member's session and open transaction must expire first.
DRAIN_TIMEOUT_S = 120.0
# Prompt recovery with the default timeouts: what a reader waits at most.
PROMPT_DRAIN_S = 45.0


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_kills_while_a_second_worker_joins_and_leaves_lose_nothing(
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
        session_timeout_ms=None,
        processing_guarantee=guarantee,
        shutdown_timeout_s=SHUTDOWN_TIMEOUT_S,
    )
    workers = {name: WorkerProcess(config, tmp_path / f"worker-{name}.log") for name in ("A", "B")}
    rng = random.Random(SEED)
    started = time.monotonic()
    stop_codes = []
    with worker_processes(*workers.values()), Tally(bootstrap_servers, [sink, dlq]) as tally:
        workers["A"].start().wait_for_log(f"assigned {source}")
        stream = EventStream(bootstrap_servers, source, EVENTS, EVENTS_PER_S).start()
        for step in SCRIPT:
            time.sleep(rng.uniform(*PAUSE_S))
            action, name = step.split()
            worker = workers[name]
            if action == "kill":
                worker.kill()
                if name == "A":
                    worker.start()
            elif action == "stop":
                code, _ = worker.terminate(SHUTDOWN_TIMEOUT_S + EXIT_MARGIN_S)
                stop_codes.append(code)
            else:
                worker.start()
        stream.join()
        produced = time.monotonic()
        tally.wait_for(range(EVENTS), DRAIN_TIMEOUT_S, settle_s=0.0)
        drain_s = time.monotonic() - produced
        tally.wait_for((), 0.0)  # the settle: late duplicates show
        assert workers["A"].alive, workers["A"].log()[-3000:]
        code, _ = workers["A"].terminate(SHUTDOWN_TIMEOUT_S + EXIT_MARGIN_S)
        stop_codes.append(code)
        lost = tally.missing(range(EVENTS))
        duplicates = tally.duplicates()
        outputs = tally.total()

    record_fault(
        FaultRow(
            "SIGKILL at random moments while a 2nd worker joins and leaves, default timeouts,"
            f" no static membership: last output {drain_s:.0f} s after the last input",
            guarantee,
            f"{EVENTS_PER_S:.0f} events/s, {PARTITIONS} partitions",
            "4 x SIGKILL of A; B joins, SIGTERM, joins, SIGKILL",
            EVENTS,
            outputs,
            duplicates,
            len(lost),
            time.monotonic() - started,
        )
    )
    assert not lost, f"{len(lost)} events lost, e.g. {sorted(lost)[:10]}"
    if guarantee == "exactly-once":
        assert duplicates == 0, "a read_committed reader sees every output once"
    assert stop_codes == [0, 0], "SIGTERM stops a worker cleanly"
    assert all(seen.error_type is None for seen in tally.records), "nothing was dead-lettered"
    assert drain_s < PROMPT_DRAIN_S, f"the last outputs came {drain_s:.0f} s after the last input"
