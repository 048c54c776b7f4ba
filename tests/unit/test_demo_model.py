"""The demo's fallback model: built from the worker's own dependencies, read by the real loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.demo import POSTS, demo_texts
from worker.demo_model import build_demo_model
from worker.nli.base import Task
from worker.nli.classifier import load_classifier


def test_the_demo_model_loads_and_scores_the_demo_texts(tmp_path: Path) -> None:
    classifier = load_classifier(str(build_demo_model(tmp_path, demo_texts())), "cpu", "float32")
    task = Task(("sports", "politics", "technology"), "This example is {}.", multi_label=False)
    scores = classifier.classify([classifier.encode(text, task) for text in POSTS])
    assert len(scores) == len(POSTS)
    for result in scores:
        assert sum(result.scores) == pytest.approx(1.0, abs=1e-5)
