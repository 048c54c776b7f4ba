"""The activity line: counts and batch figures of each interval, nothing when idle."""

from __future__ import annotations

import logging

import pytest

from worker.activity import Activity
from worker.metrics import Metrics


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_interval_with_the_figures_as_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, metrics = Clock(), Metrics()
    activity = Activity(metrics, clock, interval_s=30)
    metrics.consumed.labels("posts").inc(12)
    # Batches of two models: the line sums them.
    for model, events, tokens in (("big", 8, 1000), ("small", 4, 600)):
        metrics.batch_size.labels(model).observe(events)
        metrics.batch_tokens.labels(model).observe(tokens)
    metrics.classified.labels("posts").inc(10)
    metrics.dead_lettered.labels("posts", "invalid_json").inc(2)
    metrics.inference_seconds.labels("big").observe(15)
    metrics.consumer_lag.labels("posts", "0").set(5)
    metrics.config_in_force("posts", "file")
    metrics.config_in_force("posts", "0:7", replaced="file")
    with caplog.at_level(logging.INFO, logger="worker.activity"):
        clock.now = 29.0
        activity.due()
        assert not caplog.records
        clock.now = 30.0
        metrics.paused_partitions.set(1)
        activity.due()
    [record] = caplog.records
    assert record.getMessage() == (
        "in 30.0s: 12 read, 10 classified (0.33/s), 2 dead-lettered; 2 batches of 6.0 events"
        " and 800 padded tokens on average, model busy 0.5; lag 5, 1 partitions paused;"
        " configuration posts 0:7"
    )
    assert record.__dict__["classified"] == 10
    assert record.__dict__["config_versions"] == {"posts": "0:7"}
    assert record.__dict__["mean_batch_tokens"] == 800


def test_an_idle_interval_logs_nothing_and_counts_start_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, metrics = Clock(), Metrics()
    metrics.consumed.labels("posts").inc(7)  # before the worker's first interval
    activity = Activity(metrics, clock, interval_s=30)
    metrics.consumed.labels("posts").inc(3)
    with caplog.at_level(logging.INFO, logger="worker.activity"):
        clock.now = 31.0
        activity.due()
        clock.now = 62.0
        activity.due()
        metrics.consumed.labels("posts").inc(1)
        clock.now = 93.0
        activity.due()
    first, last = caplog.records
    assert first.__dict__["consumed"] == 3
    assert first.__dict__["lag"] is None
    assert last.__dict__["consumed"] == 1
