"""`zsc-worker` with a fake model: the test double fault tests run as a process.

Fault tests start, kill and restart worker processes many times. What they test
(delivery under crashes, rebalances and outages) does not depend on the model,
and even a tiny transformers model costs seconds of CPU per start. This module
runs the real command line (`worker.cli.main`: settings, signal handling,
metrics server, the Worker loop) with one thing swapped through its seam: the
classifier loader returns a `FakeClassifier` (deterministic scores, no torch).
It lives under tests/ and is never installed: production code has no fake path.

The model name says how the fake behaves: `fake:` scores at once,
`fake:delay_s=0.5` takes half a second per batch (a slow accelerator).

    python -m tests.integration.faults.fake_worker run --config FILE --model fake:delay_s=0.5
"""

from __future__ import annotations

import sys

from worker.cli import main
from worker.errors import ModelError
from worker.nli.fake import FakeClassifier

FAKE_PREFIX = "fake:"


def load_fake_classifier(
    name: str, device: str, dtype: str, max_batch_tokens: int | None
) -> FakeClassifier:
    """The loader of the fake worker: a fake named `fake:[delay_s=S]`."""
    if not name.startswith(FAKE_PREFIX):
        raise ModelError(f"the fake worker runs fake models only ({FAKE_PREFIX}...), not {name!r}")
    options = dict(item.split("=", 1) for item in name.removeprefix(FAKE_PREFIX).split(",") if item)
    return FakeClassifier(name, delay_s=float(options.get("delay_s", 0.0)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], load_classifier=load_fake_classifier))
