"""The activity line: counts and batch figures of each interval, nothing when idle."""

from __future__ import annotations

import logging

import pytest

from worker.activity import Activity


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_interval_with_the_figures_as_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    activity = Activity(clock, interval_s=30)
    activity.counts.consumed += 12
    activity.batch(events=8, tokens=1000)
    activity.batch(events=4, tokens=600)
    activity.counts.classified += 10
    activity.counts.dead_lettered += 2
    activity.counts.model_seconds += 15
    with caplog.at_level(logging.INFO, logger="worker.activity"):
        clock.now = 29.0
        activity.due(lag=5, paused_partitions=0)
        assert not caplog.records
        clock.now = 30.0
        activity.due(lag=5, paused_partitions=1)
    [record] = caplog.records
    assert record.getMessage() == (
        "in 30.0s: 12 read, 10 classified (0.33/s), 2 dead-lettered; 2 batches of 6.0 events"
        " and 800 padded tokens on average, model busy 0.5; lag 5, 1 partitions paused"
    )
    assert record.__dict__["classified"] == 10
    assert record.__dict__["mean_batch_tokens"] == 800


def test_an_idle_interval_logs_nothing_and_counts_start_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    activity = Activity(clock, interval_s=30)
    activity.counts.consumed += 3
    with caplog.at_level(logging.INFO, logger="worker.activity"):
        clock.now = 31.0
        activity.due(lag=None, paused_partitions=0)
        clock.now = 62.0
        activity.due(lag=None, paused_partitions=0)
    [record] = caplog.records
    assert record.__dict__["consumed"] == 3
    assert activity.counts.consumed == 0
