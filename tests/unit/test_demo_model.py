"""The demo's fallback model: built from the worker's own dependencies, read by the real loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.texts import fortunes
from worker.demo import POSTS, demo_texts
from worker.demo_model import DEBERTA_SPECIALS, build_demo_model, train_unigram
from worker.nli.base import Task
from worker.nli.classifier import load_classifier


def test_the_demo_model_loads_and_scores_the_demo_texts(tmp_path: Path) -> None:
    classifier = load_classifier(str(build_demo_model(tmp_path, demo_texts())), "cpu", "float32")
    task = Task(("sports", "politics", "technology"), "This example is {}.", multi_label=False)
    scores = classifier.classify([classifier.encode(text, task) for text in POSTS])
    assert len(scores) == len(POSTS)
    for result in scores:
        assert sum(result.scores) == pytest.approx(1.0, abs=1e-5)


def test_the_vocabulary_is_the_same_at_every_training() -> None:
    """Models built in different processes tokenize alike: tests bound their logits."""
    texts = fortunes(300)
    first = train_unigram(texts, 1000)
    assert first[: len(DEBERTA_SPECIALS)] == [(special, 0.0) for special in DEBERTA_SPECIALS]
    assert len(first) == 1000
    for _ in range(3):
        assert train_unigram(texts, 1000) == first
