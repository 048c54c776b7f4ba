"""NLIClassifier's scores equal transformers' zero-shot pipeline's, in float32.

Every label order of DESIGN.md's table, BART and DeBERTa-v2 tokenizers, real
texts, mixed tasks in one call, and texts the model max length truncates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import ZeroShotClassificationPipeline, pipeline

from tests.conftest import TinyModelFactory
from tests.models import (
    CHINESE,
    CONTRADICTION_ENTAILMENT_NEUTRAL,
    CONTRADICTION_NEUTRAL_ENTAILMENT,
    ENTAILED_NEUTRAL_CONTRADICTED,
    ENTAILMENT_NEUTRAL_CONTRADICTION,
    ENTAILMENT_NOT_ENTAILMENT,
    PORTUGUESE,
)
from tests.texts import fortunes, labelled_fortunes
from worker.nli.base import Task
from worker.nli.classifier import NLIClassifier, load_classifier

# DESIGN.md's promise for float32.
TOLERANCE = 1e-4
PARITY_TEXTS = 32
# Scores this far apart within an event on average show the labels really
# differ, so that parity is not met by near-uniform scores.
MIN_MEAN_SPREAD = 0.05
MIN_LABELS, MAX_LABELS = 3, 8
TEMPLATES = {
    "en": ("This example is {}.", "The topic of this text is {}."),
    "de": ("Dieses Beispiel ist {}.", "In diesem Text geht es um {}."),
}
# Long enough that truncation to a small model_max_length always cuts.
LONG_TEXT_CHARS = 400
SMALL_MAX_LENGTH = 64
# A label whose hypothesis alone is longer than SMALL_MAX_LENGTH tokens.
LONG_LABEL = " ".join(["very"] * SMALL_MAX_LENGTH) + " long"


@dataclass(frozen=True)
class Case:
    """A text with the labels and template it is classified against, in both modes."""

    text: str
    labels: tuple[str, ...]
    hypothesis_template: str


def _cases(texts: Sequence[str], lang: str) -> list[Case]:
    """For each text, 3 to 8 of the language's fortune topics as labels."""
    pool = sorted({f.label for f in labelled_fortunes(2000, lang=lang)})
    cases = []
    for i, text in enumerate(texts):
        count = MIN_LABELS + i % (MAX_LABELS - MIN_LABELS + 1)
        labels = tuple(pool[(7 * i + j) % len(pool)] for j in range(count))
        cases.append(Case(text, labels, TEMPLATES[lang][i % 2]))
    return cases


def _pipeline_scores(
    reference: ZeroShotClassificationPipeline, case: Case
) -> dict[bool, dict[str, float]]:
    """The pipeline's scores in both modes, by label.

    These are the steps `reference(text, ...)` runs; the forward pass, the same
    for both modes, runs once.
    """
    inputs = reference.preprocess(
        case.text, candidate_labels=list(case.labels), hypothesis_template=case.hypothesis_template
    )
    outputs = [reference.forward(pair) for pair in inputs]
    scores = {}
    for multi_label in (False, True):
        result = reference.postprocess(outputs, multi_label=multi_label)
        scores[multi_label] = dict(zip(result["labels"], result["scores"], strict=True))
    return scores


def assert_parity(model_dir: Path, cases: Sequence[Case]) -> NLIClassifier:
    """Classify every case in both modes in one call; compare ids and scores with the pipeline."""
    classifier = load_classifier(str(model_dir), device="cpu", dtype="float32")
    reference = pipeline(
        "zero-shot-classification", model=str(model_dir), device="cpu", dtype=torch.float32
    )
    events = [
        classifier.encode(case.text, Task(case.labels, case.hypothesis_template, multi_label))
        for case in cases
        for multi_label in (False, True)
    ]
    results = iter(classifier.classify(events))
    spreads = []
    for case in cases:
        expected = _pipeline_scores(reference, case)
        for multi_label in (False, True):
            scores = next(results).scores
            for label, score in zip(case.labels, scores, strict=True):
                assert score == pytest.approx(expected[multi_label][label], abs=TOLERANCE), (
                    case.text,
                    label,
                    multi_label,
                )
            spreads.append(max(scores) - min(scores))
    for event in events[::2]:
        for hypothesis, ids in zip(event.task.hypotheses(), event.pairs.input_ids, strict=True):  # type: ignore[attr-defined]
            pipeline_ids = reference._parse_and_tokenize([[event.text, hypothesis]])["input_ids"]
            assert ids == pipeline_ids[0].tolist()
    assert sum(spreads) / len(spreads) > MIN_MEAN_SPREAD
    return classifier


def _english_parity(model_dir: Path) -> None:
    assert_parity(model_dir, _cases(fortunes(PARITY_TEXTS), "en"))


@pytest.mark.parametrize(
    "id2label",
    [
        CONTRADICTION_NEUTRAL_ENTAILMENT,
        CONTRADICTION_ENTAILMENT_NEUTRAL,
        ENTAILMENT_NEUTRAL_CONTRADICTION,
    ],
    ids=lambda order: "-".join(order.values()),
)
def test_bart(tiny_model_factory: TinyModelFactory, id2label: Mapping[int, str]) -> None:
    _english_parity(tiny_model_factory("bart", id2label))


@pytest.mark.parametrize(
    "id2label",
    [
        CONTRADICTION_ENTAILMENT_NEUTRAL,
        ENTAILMENT_NEUTRAL_CONTRADICTION,
        ENTAILED_NEUTRAL_CONTRADICTED,
        ENTAILMENT_NOT_ENTAILMENT,
    ],
    ids=lambda order: "-".join(order.values()),
)
def test_deberta(tiny_model_factory: TinyModelFactory, id2label: Mapping[int, str]) -> None:
    _english_parity(tiny_model_factory("deberta", id2label))


def test_deberta_with_token_types(tiny_model_factory: TinyModelFactory) -> None:
    # BERT-like models add a segment embedding: the pairs' type ids must reach it.
    _english_parity(
        tiny_model_factory("deberta", CONTRADICTION_NEUTRAL_ENTAILMENT, type_vocab_size=2)
    )


def test_multilingual_deberta(tiny_mdeberta_dir: Path) -> None:
    german = fortunes(PARITY_TEXTS - len(PORTUGUESE) - len(CHINESE), lang="de")
    assert_parity(tiny_mdeberta_dir, _cases([*german, *PORTUGUESE, *CHINESE], "de"))


@pytest.mark.parametrize("family", ["bart", "deberta"])
def test_texts_longer_than_model_max_length_are_truncated_as_the_pipeline_does(
    tiny_model_factory: TinyModelFactory, family: str
) -> None:
    model_dir = tiny_model_factory(
        family, CONTRADICTION_NEUTRAL_ENTAILMENT, model_max_length=SMALL_MAX_LENGTH
    )
    texts = fortunes(PARITY_TEXTS, min_chars=LONG_TEXT_CHARS)
    classifier = assert_parity(model_dir, _cases(texts, "en"))
    events = [classifier.encode(t, Task(("science",), "This example is {}.", False)) for t in texts]
    assert all(e.pair_tokens == (SMALL_MAX_LENGTH,) for e in events)


def test_a_hypothesis_too_long_to_truncate_the_premise_for_is_kept_whole(
    tiny_model_factory: TinyModelFactory,
) -> None:
    # tokenizers cannot cut enough from a short premise; the pipeline then keeps the pair.
    model_dir = tiny_model_factory(
        "bart", CONTRADICTION_NEUTRAL_ENTAILMENT, model_max_length=SMALL_MAX_LENGTH
    )
    labels = ("short", LONG_LABEL)
    cases = [Case(text, labels, "This example is {}.") for text in ["A short text.", "Another."]]
    classifier = assert_parity(model_dir, cases)
    task = Task(labels, "This example is {}.", multi_label=True)
    assert max(classifier.encode("A short text.", task).pair_tokens) > SMALL_MAX_LENGTH


def test_inputs_longer_than_the_position_embeddings_never_crash(
    tiny_model_factory: TinyModelFactory,
) -> None:
    # The pipeline itself would index past the position table here.
    model_dir = tiny_model_factory(
        "bart", CONTRADICTION_NEUTRAL_ENTAILMENT, max_position_embeddings=SMALL_MAX_LENGTH
    )
    classifier = load_classifier(str(model_dir), device="cpu", dtype="float32")
    task = Task(("science", LONG_LABEL), "This example is {}.", multi_label=True)
    texts = ["Short.", *fortunes(4, min_chars=LONG_TEXT_CHARS)]
    events = [classifier.encode(text, task) for text in texts]
    assert all(max(e.pair_tokens) <= SMALL_MAX_LENGTH for e in events)
    assert len(classifier.classify(events)) == len(events)
