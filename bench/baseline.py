"""transformers' zero-shot pipeline as its users run it, and the classifier beside it.

Both are timed on the same texts with the same labels and template; a warm-up
call on another text comes first, so one-off costs (allocations, kernel choice)
are not counted against either.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase, pipeline

from bench.report import ScoreMap
from bench.workload import Workload
from worker.nli.base import Task
from worker.nli.classifier import NLIClassifier


def pair_lengths(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], hypotheses: Sequence[str]
) -> list[int]:
    """Each pair's length in tokens as the model sees it (the pipeline's only_first truncation)."""
    lengths: list[int] = []
    for text in texts:
        encoded = tokenizer([text] * len(hypotheses), list(hypotheses), truncation="only_first")
        lengths += [len(ids) for ids in encoded["input_ids"]]
    return lengths


@dataclass(frozen=True, slots=True)
class Timing:
    """Wall-clock seconds of a run, and the CPU seconds this process spent in it."""

    seconds: float
    cpu_seconds: float


class Stopwatch:
    """Wall-clock and process CPU time from `start()`; waits for a GPU before reading."""

    def __init__(self, device: str) -> None:
        self._device = device
        self._wall = self._cpu = 0.0

    def start(self) -> None:
        """Begin timing once the device is idle."""
        _synchronize(self._device)
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def stop(self) -> Timing:
        """The time since `start()`, once the device has finished."""
        _synchronize(self._device)
        return Timing(time.perf_counter() - self._wall, time.process_time() - self._cpu)


def run_pipeline(
    model_dir: Path,
    workload: Workload,
    texts: Sequence[str],
    *,
    dtype: torch.dtype = torch.float32,
    batch_size: int = 1,
    device: str = "cpu",
) -> tuple[Timing, list[ScoreMap]]:
    """How long the pipeline takes for `texts`, and its scores by label."""
    classifier = pipeline(
        "zero-shot-classification", model=str(model_dir), device=device, dtype=dtype
    )
    options = {
        "candidate_labels": list(workload.labels),
        "hypothesis_template": workload.template,
        "multi_label": workload.multi_label,
        "batch_size": batch_size,
    }
    classifier(list(workload.warmup[:1]), **options)
    stopwatch = Stopwatch(device)
    stopwatch.start()
    results = classifier(list(texts), **options)
    timing = stopwatch.stop()
    return timing, [dict(zip(r["labels"], r["scores"], strict=True)) for r in results]


def task_of(workload: Workload) -> Task:
    """The classifier's task for the workload's labels, template and mode."""
    return Task(workload.labels, workload.template, workload.multi_label)


def run_classifier(
    classifier: NLIClassifier, workload: Workload, texts: Sequence[str]
) -> tuple[Timing, list[ScoreMap]]:
    """How long the classifier takes for `texts`, tokenizing included, and its scores by label."""
    task = task_of(workload)
    classifier.classify([classifier.encode(workload.warmup[0], task)])
    stopwatch = Stopwatch(str(classifier.device))
    stopwatch.start()
    results = classifier.classify([classifier.encode(text, task) for text in texts])
    timing = stopwatch.stop()
    return timing, [dict(zip(task.labels, r.scores, strict=True)) for r in results]


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
