"""`zsc-worker calibrate`: fit a topic's calibration on labelled events and report it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TextIO

import numpy as np
import orjson
import yaml

from config.settings import Settings
from worker import errors
from worker.calibration import Calibration, Example, calibrate
from worker.nli.base import Classifier, Task
from worker.routing import Route

# Events scored per classifier call.
CHUNK = 64


def read_labelled(path: Path, task: Task) -> list[tuple[str, frozenset[str]]]:
    """(text, true labels) of each JSON line: `{"text": ..., "labels": [...]}` or `"label"`."""
    known = set(task.labels)
    examples = []
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise errors.ConfigError(f"cannot read {path}: {exc.strerror}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = orjson.loads(line)
            text = event["text"]
            gold = event["labels"] if "labels" in event else [event["label"]]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise errors.ConfigError(
                f'{path}:{number}: expected {{"text": ..., "labels": [...]}} or "label"'
            ) from None
        if unknown := set(gold) - known:
            raise errors.ConfigError(
                f"{path}:{number}: labels {sorted(unknown)} are not the topic's"
            )
        examples.append((text, frozenset(gold)))
    return examples


def run_calibration(
    settings: Settings,
    topic: str,
    classifier: Classifier,
    data: Path,
    holdout: float,
    target_precision: float | None,
) -> Calibration:
    """Score the labelled events once and fit the topic's temperature and thresholds."""
    entry = next((t for t in settings.topics if t.input == topic), None)
    if entry is None:
        raise errors.ConfigError(f"--topic: {topic!r} is not an input topic of the config")
    if entry.long_text.chunked:
        # The fit needs one set of logits per label; a chunked text has one per chunk.
        raise errors.ConfigError(
            f"--topic: {topic!r} chunks long texts (long_text.strategy chunk); calibrate it"
            " with strategy truncate"
        )
    route = Route.from_settings(entry)
    labelled = read_labelled(data, route.task)
    examples = []
    for start in range(0, len(labelled), CHUNK):
        chunk = labelled[start : start + CHUNK]
        scores = classifier.classify([classifier.encode(text, route.task) for text, _ in chunk])
        examples += [
            Example(np.array(s.logits), gold) for s, (_, gold) in zip(scores, chunk, strict=True)
        ]
    return calibrate(
        route.task,
        classifier.label_ids,
        examples,
        holdout=holdout,
        default_threshold=entry.threshold,
        current_thresholds=dict(entry.calibration.thresholds),
        target_precision=target_precision,
    )


def report(result: Calibration, out: TextIO) -> None:
    """Before and after, on the held-out events."""
    print(
        f"fitted on {result.train_size} events, measured on {result.holdout_size} held out",
        file=out,
    )
    print(f"temperature: {result.temperature:.4f}", file=out)
    for label, threshold in sorted(result.thresholds.items()):
        print(f"threshold {label}: {threshold:.4f}", file=out)
    print(f"{'':10} {'F1':>8} {'ECE':>8} {'log-loss':>9}", file=out)
    for name, q in (("before", result.before), ("after", result.after)):
        print(f"{name:10} {q.f1:8.4f} {q.ece:8.4f} {q.log_loss:9.4f}", file=out)


def write_calibration(config_file: Path, topic: str, result: Calibration) -> None:
    """Store the fitted values in the topic's `calibration` (the file is rewritten)."""
    data: dict[str, Any] = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    entry = next(t for t in data["topics"] if t.get("input") == topic)
    entry["calibration"] = {
        "temperature": round(result.temperature, 6),
        "thresholds": {label: round(t, 6) for label, t in result.thresholds.items()},
    }
    config_file.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
