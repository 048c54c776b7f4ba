"""One benchmark worker process: the Worker loop of `zsc-worker run`, with a timed classifier.

It differs from `zsc-worker run` only where the benchmark needs it to: the
classifier is built here, so that the dtype (int8 too, which the settings do not
offer) and torch's thread count can be chosen, and every model call and every
forward pass in it is timed.
The process writes its partition assignment to a status file as it changes, and
on SIGTERM stops as the real worker does, then writes what it measured as JSON.

`python -m bench.serve SPEC.json`, SPEC being a `ServeSpec` as JSON.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# How often the assignment is checked for the status file.
STATUS_INTERVAL_S = 0.1
# Tansu's group join waits about half the session timeout; Apache Kafka does not mind.
SESSION_TIMEOUT_MS = 6000
# ru_maxrss is in KiB on Linux.
KIB = 1024


@dataclass(frozen=True, slots=True)
class ServeSpec:
    """Everything a benchmark worker process needs to know."""

    bootstrap_servers: str
    group_id: str
    input_topic: str
    output_topic: str
    model: str
    labels: tuple[str, ...]
    template: str
    multi_label: bool
    status_path: str
    stats_path: str
    device: str = "cpu"
    dtype: str = "auto"
    threads: int | None = None
    max_batch_tokens: int | None = None
    batching: dict[str, int] = field(default_factory=dict)

    def write(self, path: Path) -> Path:
        """Save the spec as JSON for the child process to read."""
        path.write_text(json.dumps(asdict(self)))
        return path

    @classmethod
    def read(cls, path: Path) -> ServeSpec:
        """The spec saved by `write`."""
        raw = json.loads(path.read_text())
        return cls(**{**raw, "labels": tuple(raw["labels"])})


class TimedClassifier:
    """Passes every call to the real classifier and times each batch and each forward pass."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        # Appended by the inference thread only; read after the worker stopped.
        self.batches: list[dict[str, float]] = []
        self.forwards: list[dict[str, Any]] = []

    @property
    def model_name(self) -> str:
        """The wrapped classifier's model."""
        name: str = self._inner.model_name
        return name

    @property
    def label_ids(self) -> Any:
        """The wrapped classifier's entailment and contradiction classes."""
        return self._inner.label_ids

    @property
    def info(self) -> dict[str, str]:
        """The wrapped classifier's."""
        info: dict[str, str] = self._inner.info
        return info

    def encode(self, text: str, task: Any) -> Any:
        """Tokenize, as the wrapped classifier does."""
        return self._inner.encode(text, task)

    def classify(self, events: Sequence[Any]) -> Any:
        """Score the batch, timed as `classify_progressively` times it."""
        found: dict[int, Any] = {}
        for part in self.classify_progressively(events):
            found.update(part)
        return [found[n] for n in range(len(events))]

    def classify_progressively(self, events: Sequence[Any]) -> Iterator[Any]:
        """Score the batch as the wrapped classifier does, recording for each forward pass
        (each item yielded) and for the whole batch its wall-clock end, duration and events.

        The time the caller holds an item is not counted: only the classifier's.
        """
        seconds = 0.0
        started = time.perf_counter()
        for part in self._inner.classify_progressively(events):
            took = time.perf_counter() - started
            seconds += took
            self.forwards.append(
                {
                    "ended_at": time.time(),
                    "seconds": took,
                    "events": len(part),
                    # Which events it completed, for the latency of each.
                    "texts": [events[n].text for n, _ in part],
                }
            )
            yield part
            started = time.perf_counter()
        self.batches.append(
            {
                "ended_at": time.time(),
                "seconds": seconds,
                "events": len(events),
                "pairs": sum(event.pair_count for event in events),
            }
        )


def _write_json(path: Path, data: object) -> None:
    """Replace `path` atomically, so the parent never reads half a file."""
    scratch = path.with_suffix(".tmp")
    scratch.write_text(json.dumps(data))
    os.replace(scratch, path)


def _report_assignment(worker: Any, path: Path, stop: threading.Event) -> None:
    last: list[list[Any]] | None = None
    while not stop.wait(STATUS_INTERVAL_S):
        current = sorted([list(tp) for tp in worker.assignment])
        if current != last:
            _write_json(path, {"assigned": current})
            last = current


def serve(spec: ServeSpec) -> None:
    """Run a worker until SIGTERM, then write the stats file."""
    import torch

    from config.settings import Settings
    from worker.app import Worker
    from worker.models import Models
    from worker.nli.classifier import load_classifier

    if spec.threads:
        torch.set_num_threads(spec.threads)
    classifier = TimedClassifier(
        load_classifier(spec.model, spec.device, spec.dtype, spec.max_batch_tokens)
    )
    values: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": spec.bootstrap_servers,
            "group_id": spec.group_id,
            "consumer": {"session.timeout.ms": SESSION_TIMEOUT_MS},
        },
        "model": {"name": spec.model, "device": spec.device},
        "batching": spec.batching,
        "metrics_port": 0,
        "topics": [
            {
                "input": spec.input_topic,
                "output": spec.output_topic,
                "labels": list(spec.labels),
                "hypothesis_template": spec.template,
                "multi_label": spec.multi_label,
            }
        ],
    }
    settings = Settings(**values)
    worker = Worker(settings, Models.one(classifier))
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: stop.set())
    monitor = threading.Thread(
        target=_report_assignment, args=(worker, Path(spec.status_path), stop), daemon=True
    )
    monitor.start()
    started = time.time()
    try:
        worker.run(stop)
    finally:
        stop.set()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        _write_json(
            Path(spec.stats_path),
            {
                "batches": classifier.batches,
                "forwards": classifier.forwards,
                "peak_rss_bytes": usage.ru_maxrss * KIB,
                "cpu_seconds": usage.ru_utime + usage.ru_stime,
                "wall_seconds": time.time() - started,
                "torch_threads": torch.get_num_threads(),
                # What the worker computes in: `dtype auto` resolves in this process.
                "precision": classifier.info["precision"],
                "runtime": classifier.info["runtime"],
            },
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: `python -m bench.serve SPEC.json`."""
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) != 1:
        print("usage: python -m bench.serve SPEC.json", file=sys.stderr)
        return 2
    serve(ServeSpec.read(Path(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
