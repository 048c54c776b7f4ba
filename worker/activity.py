"""The worker's activity line: what it did since the last one, every half minute at INFO.

Counts and batch figures only, never event content, read off the worker's
metrics (the one place they are counted). With `log_format: json` every
figure is a field of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import astuple, dataclass, fields

from prometheus_client.metrics import MetricWrapperBase

from worker.metrics import Metrics

log = logging.getLogger(__name__)

INTERVAL_S = 30.0


def _values(metric: MetricWrapperBase, suffix: str = "") -> list[float]:
    """The values of a metric's samples (every label set) whose names end in `suffix`."""
    return [
        sample.value
        for family in metric.collect()
        for sample in family.samples
        if sample.name.endswith(suffix)
    ]


@dataclass(frozen=True, slots=True)
class Totals:
    """The worker's counts so far; the difference of two is an interval's."""

    consumed: int = 0
    classified: int = 0
    dead_lettered: int = 0
    batches: int = 0
    batch_events: int = 0
    batch_tokens: int = 0
    model_seconds: float = 0.0

    @classmethod
    def of(cls, metrics: Metrics) -> Totals:
        """Read the counts off the metrics."""
        return cls(
            consumed=int(sum(_values(metrics.consumed, "_total"))),
            classified=int(sum(_values(metrics.classified, "_total"))),
            dead_lettered=int(sum(_values(metrics.dead_lettered, "_total"))),
            batches=int(sum(_values(metrics.batch_size, "_count"))),
            batch_events=int(sum(_values(metrics.batch_size, "_sum"))),
            batch_tokens=int(sum(_values(metrics.batch_tokens, "_sum"))),
            model_seconds=sum(_values(metrics.inference_seconds, "_sum")),
        )

    def __sub__(self, earlier: Totals) -> Totals:
        return Totals(*(a - b for a, b in zip(astuple(self), astuple(earlier), strict=True)))


class Activity:
    """Logs the counts of each interval in which anything happened."""

    def __init__(
        self, metrics: Metrics, clock: Callable[[], float], interval_s: float = INTERVAL_S
    ) -> None:
        self._metrics = metrics
        self._clock = clock
        self._interval_s = interval_s
        self._since = clock()
        self._last = Totals.of(metrics)

    def due(self) -> None:
        """Log the interval's counts if it is over and anything happened; start the next."""
        now = self._clock()
        elapsed = now - self._since
        if elapsed < self._interval_s:
            return
        totals = Totals.of(self._metrics)
        c, self._last, self._since = totals - self._last, totals, now
        if not any(getattr(c, f.name) for f in fields(c)):
            return
        lags = _values(self._metrics.consumer_lag)
        figures: dict[str, object] = {
            "interval_s": round(elapsed, 1),
            "consumed": c.consumed,
            "classified": c.classified,
            "dead_lettered": c.dead_lettered,
            "events_per_s": round(c.classified / elapsed, 2),
            "batches": c.batches,
            "mean_batch_events": round(c.batch_events / c.batches, 1) if c.batches else 0,
            "mean_batch_tokens": round(c.batch_tokens / c.batches) if c.batches else 0,
            "model_busy": round(c.model_seconds / elapsed, 2),
            "lag": int(sum(lags)) if lags else None,
            "paused_partitions": int(sum(_values(self._metrics.paused_partitions))),
        }
        versions = config_versions(self._metrics)
        figures["config_versions"] = versions
        log.info(
            "in %(interval_s)ss: %(consumed)d read, %(classified)d classified (%(events_per_s)s/s),"
            " %(dead_lettered)d dead-lettered; %(batches)d batches of %(mean_batch_events)s events"
            " and %(mean_batch_tokens)s padded tokens on average, model busy %(model_busy)s;"
            " lag %(lag)s, %(paused_partitions)d partitions paused; configuration %(versions)s",
            {**figures, "versions": ", ".join(f"{t} {v}" for t, v in versions.items()) or "-"},
            extra=figures,
        )


def config_versions(metrics: Metrics) -> dict[str, str]:
    """The configuration version each input topic is served with (zsc_config_info)."""
    return {
        sample.labels["topic"]: sample.labels["version"]
        for family in metrics.config_info.collect()
        for sample in family.samples
        if sample.value
    }
