"""A slow model under a large backlog: memory stays bounded, partitions pause and resume.

Each batch takes longer than `max.poll.interval.ms`: a loop that waited for the
model instead of polling would be evicted from its group. The backlog is
several times librdkafka's read-ahead bound, so unbounded prefetch would show
in the process's memory.
"""

from __future__ import annotations

import gc
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from tests.integration.conftest import NameFactory
from tests.integration.faults.conftest import EventTopics, FaultRow, Recorder
from tests.integration.faults.support import (
    SUBJECTS,
    Tally,
    produce_events,
    topics_config,
    wait_until,
)
from tests.integration.harness import SESSION_TIMEOUT_MS, RunningWorker, make_settings
from worker.flow import IN_FLIGHT_BATCHES
from worker.kafka.clients import PREFETCH_KBYTES
from worker.metrics import Metrics
from worker.nli.fake import FakeClassifier

PARTITIONS = 2
BACKLOG = 10_000
PADDING = 2_000  # characters per event beyond its text: 2 KB each, 20 MB in all
MAX_EVENTS = 50
BATCH_S = 8.0
# The smallest librdkafka allows (it must be at least session.timeout.ms), and
# shorter than one batch.
MAX_POLL_INTERVAL_MS = 7_000
# Two slow batches drain the in-flight events from the pause mark to the resume mark.
SLOW_PHASE_TIMEOUT_S = 4 * BATCH_S
SAMPLE_INTERVAL_S = 0.1
# What memory may grow by beyond the read-ahead bound: the in-flight events as
# Python objects, allocator slack.
RSS_SLACK_MB = 12.0
DRAIN_TIMEOUT_S = 120.0


def rss_mb() -> float:
    """This process's resident memory."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@dataclass
class Samples:
    """What a sampler thread saw of the worker, every 100 ms."""

    consumed: list[float] = field(default_factory=list)
    in_flight: list[float] = field(default_factory=list)
    paused: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)


def sample(metrics: Metrics, topic: str, samples: Samples, stop: threading.Event) -> None:
    """Record events in flight (consumed, not yet acknowledged), the pause flag and memory."""
    registry = metrics.registry
    while not stop.wait(SAMPLE_INTERVAL_S):
        consumed = registry.get_sample_value("zsc_events_consumed_total", {"topic": topic}) or 0
        done = registry.get_sample_value("zsc_events_classified_total", {"topic": topic}) or 0
        samples.consumed.append(consumed)
        samples.in_flight.append(consumed - done)
        samples.paused.append(registry.get_sample_value("zsc_paused") or 0)
        samples.rss_mb.append(rss_mb())


def test_slow_model_with_a_backlog_bounds_memory_pauses_and_is_not_evicted(
    bootstrap_servers: str,
    event_topics: EventTopics,
    unique_name: NameFactory,
    record_fault: Recorder,
) -> None:
    source, sink, dlq = event_topics(PARTITIONS)
    padding = "x" * PADDING
    values = [
        orjson.dumps({"id": n, "text": f"Event {n} about {SUBJECTS[n % 6]}.", "pad": padding})
        for n in range(BACKLOG)
    ]
    produce_events(bootstrap_servers, source, values)
    del values
    settings = make_settings(
        bootstrap_servers,
        unique_name("g"),
        topics_config(source, sink, dlq),
        kafka={
            "bootstrap_servers": bootstrap_servers,
            "group_id": unique_name("g"),
            "consumer": {
                "session.timeout.ms": SESSION_TIMEOUT_MS,
                "max.poll.interval.ms": MAX_POLL_INTERVAL_MS,
            },
        },
        batching={"max_events": MAX_EVENTS, "max_wait_ms": 20},
    )
    classifier = FakeClassifier(delay_s=BATCH_S)
    worker = RunningWorker(settings, classifier)
    metrics = worker.worker.metrics
    samples, stop = Samples(), threading.Event()
    sampler = threading.Thread(target=sample, args=(metrics, source, samples, stop), daemon=True)
    gc.collect()
    baseline_mb = rss_mb()
    started = time.monotonic()
    worker.start()
    try:
        worker.wait_for_assignment()
        sampler.start()
        # Paused once the in-flight mark is reached; resumed after two batches,
        # when reading goes on (and soon pauses again: the backlog is there).
        wait_until(lambda: 1.0 in samples.paused, SLOW_PHASE_TIMEOUT_S, "a pause")
        at_pause = samples.consumed[samples.paused.index(1.0)]
        wait_until(lambda: samples.consumed[-1] > at_pause, SLOW_PHASE_TIMEOUT_S, "the resume")
        slow_peak_mb = max(samples.rss_mb)
        slow_in_flight = max(samples.in_flight)
        evictions = {
            kind: metrics.registry.get_sample_value("zsc_rebalances_total", {"kind": kind})
            for kind in ("revoke", "lost")
        }
        classifier.delay_s = 0.0
        with Tally(bootstrap_servers, [sink, dlq]) as tally:
            tally.wait_for(range(BACKLOG), DRAIN_TIMEOUT_S, settle_s=1.0)
    finally:
        stop.set()
        worker.stop()
    lost = tally.missing(range(BACKLOG))
    growth = slow_peak_mb - baseline_mb
    record_fault(
        FaultRow(
            f"slow model (8 s batches > max.poll.interval.ms), "
            f"{BACKLOG * PADDING / 10**6:.0f} MB backlog: memory +{growth:.0f} MB",
            "at-least-once",
            f"{BACKLOG} events queued, {PARTITIONS} partitions",
            "backpressure: pause, resume",
            BACKLOG,
            tally.total(),
            tally.duplicates(),
            len(lost),
            time.monotonic() - started,
        )
    )
    bound = IN_FLIGHT_BATCHES * MAX_EVENTS
    assert slow_in_flight <= bound, "in-flight events are bounded"
    assert growth < PREFETCH_KBYTES / 1024 + RSS_SLACK_MB, (
        f"memory grew by {growth:.0f} MB under a {BACKLOG * PADDING / 10**6:.0f} MB backlog"
    )
    assert not any(evictions.values()), f"the worker was evicted from its group: {evictions}"
    assert not lost, f"{len(lost)} events lost, e.g. {sorted(lost)[:10]}"
    assert tally.duplicates() == 0
