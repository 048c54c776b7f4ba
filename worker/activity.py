"""The worker's activity line: what it did since the last one, every half minute at INFO.

Counts and batch figures only, never event content. With `log_format: json`
every figure is a field of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, fields

log = logging.getLogger(__name__)

INTERVAL_S = 30.0


@dataclass(slots=True)
class Counts:
    """What happened in one interval."""

    consumed: int = 0
    classified: int = 0
    dead_lettered: int = 0
    batches: int = 0
    batch_events: int = 0
    batch_tokens: int = 0
    model_seconds: float = 0.0


class Activity:
    """Accumulates counts and logs them once per interval in which anything happened."""

    def __init__(self, clock: Callable[[], float], interval_s: float = INTERVAL_S) -> None:
        self._clock = clock
        self._interval_s = interval_s
        self._since = clock()
        self.counts = Counts()

    def batch(self, events: int, tokens: int) -> None:
        """A micro-batch went to the model."""
        self.counts.batches += 1
        self.counts.batch_events += events
        self.counts.batch_tokens += tokens
        log.debug("batch of %d events, %d padded tokens", events, tokens)

    def due(self, lag: int | None, paused_partitions: int) -> None:
        """Log the interval's counts if it is over and anything happened; start the next."""
        now = self._clock()
        elapsed = now - self._since
        if elapsed < self._interval_s:
            return
        c, self.counts, self._since = self.counts, Counts(), now
        if not any(getattr(c, f.name) for f in fields(c)):
            return
        figures = {
            "interval_s": round(elapsed, 1),
            "consumed": c.consumed,
            "classified": c.classified,
            "dead_lettered": c.dead_lettered,
            "events_per_s": round(c.classified / elapsed, 2),
            "batches": c.batches,
            "mean_batch_events": round(c.batch_events / c.batches, 1) if c.batches else 0,
            "mean_batch_tokens": round(c.batch_tokens / c.batches) if c.batches else 0,
            "model_busy": round(c.model_seconds / elapsed, 2),
            "lag": lag,
            "paused_partitions": paused_partitions,
        }
        log.info(
            "in %(interval_s)ss: %(consumed)d read, %(classified)d classified (%(events_per_s)s/s),"
            " %(dead_lettered)d dead-lettered; %(batches)d batches of %(mean_batch_events)s events"
            " and %(mean_batch_tokens)s padded tokens on average, model busy %(model_busy)s;"
            " lag %(lag)s, %(paused_partitions)d partitions paused",
            figures,
            extra=figures,
        )
