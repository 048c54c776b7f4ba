"""Template ensembles, label groups, own hypotheses and temperature, against the pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.texts import fortunes
from worker.nli.base import LabelGroup, Task
from worker.nli.classifier import load_classifier
from worker.nli.labels import LabelIds
from worker.nli.scoring import zero_shot_scores

TEMPLATES = ("This text is about {}.", "The topic of this text is {}.")
TOPICS = ("computers", "food", "love", "politics")
SENTIMENT = ("positive", "negative", "neutral")


@pytest.fixture(scope="module")
def reference(tiny_bart_dir: Path):
    from transformers import pipeline

    return pipeline("zero-shot-classification", model=str(tiny_bart_dir), device="cpu")


@pytest.fixture(scope="module")
def classifier(tiny_bart_dir: Path):
    return load_classifier(str(tiny_bart_dir), "cpu", "float32")


def pipeline_scores(reference, texts, labels, template, multi_label) -> list[dict[str, float]]:
    results = reference(
        texts, candidate_labels=list(labels), hypothesis_template=template, multi_label=multi_label
    )
    return [dict(zip(r["labels"], r["scores"], strict=True)) for r in results]


@pytest.mark.parametrize("multi_label", [True, False])
def test_an_ensemble_scores_the_mean_over_templates(reference, classifier, multi_label) -> None:
    texts = fortunes(12)
    task = Task(TOPICS, TEMPLATES, multi_label)
    got = classifier.classify([classifier.encode(t, task) for t in texts])
    per_template = [pipeline_scores(reference, texts, TOPICS, t, multi_label) for t in TEMPLATES]
    for i, scores in enumerate(got):
        for label, score in zip(TOPICS, scores.scores, strict=True):
            expected = np.mean([p[i][label] for p in per_template])
            assert abs(score - expected) <= 1e-4


def test_a_single_label_group_beside_multi_label_labels_in_one_pass(reference, classifier) -> None:
    texts = fortunes(12)
    task = Task(TOPICS, TEMPLATES, True, groups=(LabelGroup("sentiment", SENTIMENT, False),))
    encoded = [classifier.encode(t, task) for t in texts]
    assert encoded[0].pair_count == len(TOPICS) * 2 + len(SENTIMENT) * 2, "one pair per hypothesis"
    got = classifier.classify(encoded)
    main = [pipeline_scores(reference, texts, TOPICS, t, True) for t in TEMPLATES]
    group = [pipeline_scores(reference, texts, SENTIMENT, t, False) for t in TEMPLATES]
    for i, scores in enumerate(got):
        [sentiment] = scores.groups
        assert sum(sentiment) == pytest.approx(1.0), "a single-label group sums to one"
        for label, score in zip(SENTIMENT, sentiment, strict=True):
            assert abs(score - np.mean([g[i][label] for g in group])) <= 1e-4
        for label, score in zip(TOPICS, scores.scores, strict=True):
            assert abs(score - np.mean([m[i][label] for m in main])) <= 1e-4


def test_a_label_with_its_own_hypothesis_uses_it_for_every_template() -> None:
    task = Task(
        ("sports", "politics"),
        TEMPLATES,
        True,
        own_hypotheses=(("politics", "This is about government."),),
    )
    assert task.label_hypotheses(task.labels) == [
        [t.format("sports") for t in TEMPLATES],
        ["This is about government.", "This is about government."],
    ]
    assert task.hypotheses() == (
        *(t.format("sports") for t in TEMPLATES),
        "This is about government.",
    )


def test_temperature_divides_the_logits_before_the_softmax() -> None:
    ids = LabelIds(entailment_id=2, contradiction_id=0)
    logits = np.array([[1.0, 0.0, 3.0], [2.0, 0.5, -1.0], [0.0, 0.0, 0.5]])
    for multi_label in (True, False):
        task = Task(("a", "b", "c"), "{}", multi_label, temperature=2.5)
        expected = zero_shot_scores(logits / 2.5, ids, multi_label)
        assert task.score(logits, ids).scores == pytest.approx(tuple(expected))
    plain = Task(("a", "b", "c"), "{}", False).score(logits, ids)
    hot = Task(("a", "b", "c"), "{}", False, temperature=4.0).score(logits, ids)
    assert max(hot.scores) < max(plain.scores), "a higher temperature flattens the scores"
    assert plain.logits == tuple(map(tuple, logits.tolist())), "raw logits stay uncalibrated"
