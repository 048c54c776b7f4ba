"""What an end-to-end measurement derives from the worker processes' stats."""

from __future__ import annotations

from typing import Any

from bench.e2e import EndToEnd


def forward(ended_at: float, seconds: float) -> dict[str, Any]:
    return {"ended_at": ended_at, "seconds": seconds, "events": 1, "texts": ["a text"]}


def test_busy_seconds_sums_the_forward_passes_of_the_timed_window_over_every_process() -> None:
    run = EndToEnd(
        events=4,
        outputs={},
        append_time=True,
        cpu_seconds=19.0,
        window=(100.0, 110.0),
        stats=[
            # The warm-up's pass ended before the window; the latency run's after it.
            {"forwards": [forward(99.0, 5.0), forward(104.0, 4.0), forward(109.5, 5.0)]},
            {"forwards": [forward(110.0, 3.0), forward(111.0, 2.0)]},
        ],
    )

    assert run.busy_seconds() == 12.0
