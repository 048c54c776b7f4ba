"""Chunked long texts score as transformers' zero-shot pipeline scores each chunk, aggregated.

The reference is built the way a user would check it: each chunk's text is
the decoded premise token window the worker used, the pipeline scores that
text, and the scores are aggregated by hand. Where decoding and tokenizing
again does not give the window's tokens back (a window that starts inside a
word, for a Unigram tokenizer), the pipeline would see other tokens, so such
texts are left out of the comparison; enough remain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pytest
import torch
from transformers import ZeroShotClassificationPipeline, pipeline

from tests.conftest import TinyModelFactory
from tests.models import (
    CONTRADICTION_ENTAILMENT_NEUTRAL,
    CONTRADICTION_NEUTRAL_ENTAILMENT,
    ENTAILMENT_NEUTRAL_CONTRADICTION,
)
from tests.texts import fortunes
from worker.errors import TooManyChunksError
from worker.nli.base import EncodedEvent, LabelGroup, Task
from worker.nli.chunks import Aggregate, Chunking
from worker.nli.classifier import NLIClassifier, load_classifier

# DESIGN.md's promise for float32.
TOLERANCE = 1e-4
# A short model max length makes fortunes long texts: a few hundred
# characters are several chunks of WINDOW tokens.
SMALL_MAX_LENGTH = 64
WINDOW, STRIDE = 24, 6
CANDIDATE_TEXTS = 150
MIN_CHARS, MAX_CHARS = 250, 500
# Texts whose every chunk decodes to text that tokenizes back to the window.
MIN_COMPARED, MAX_COMPARED = 4, 8
LABELS = ("computers", "food", "love", "politics")
TEMPLATES = ("This example is {}.", "The topic of this text is {}.")
SENTIMENT = ("positive", "negative")

FAMILIES: dict[str, tuple[str, Mapping[int, str], dict[str, object]]] = {
    "bart": ("bart", CONTRADICTION_NEUTRAL_ENTAILMENT, {}),
    "deberta": ("deberta", CONTRADICTION_ENTAILMENT_NEUTRAL, {}),
    "mdeberta": ("deberta", ENTAILMENT_NEUTRAL_CONTRADICTION, {"multilingual": True}),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def models(
    request: pytest.FixtureRequest, tiny_model_factory: TinyModelFactory
) -> tuple[NLIClassifier, ZeroShotClassificationPipeline]:
    family, id2label, options = FAMILIES[request.param]
    model_dir = tiny_model_factory(family, id2label, model_max_length=SMALL_MAX_LENGTH, **options)
    classifier = load_classifier(str(model_dir), device="cpu", dtype="float32")
    reference = pipeline(
        "zero-shot-classification", model=str(model_dir), device="cpu", dtype=torch.float32
    )
    assert isinstance(reference, ZeroShotClassificationPipeline)
    return classifier, reference


def chunk_texts(reference: ZeroShotClassificationPipeline, event: EncodedEvent) -> list[str] | None:
    """Each chunk's text: its premise token window, decoded; None if one does not round-trip."""
    tokenizer = reference.tokenizer
    assert tokenizer is not None
    ids = tokenizer(event.text, add_special_tokens=False)["input_ids"]
    texts = []
    for start, end in event.chunks:
        text = tokenizer.decode(ids[start:end], clean_up_tokenization_spaces=False)
        if tokenizer(text, add_special_tokens=False)["input_ids"] != ids[start:end]:
            return None
        texts.append(text)
    return texts


def pipeline_means(
    reference: ZeroShotClassificationPipeline,
    texts: Sequence[str],
    labels: Sequence[str],
    multi_label: bool,
) -> np.ndarray:
    """The pipeline's score of each text (rows) and label (columns), mean over TEMPLATES."""
    per_template = []
    for template in TEMPLATES:
        results = reference(
            list(texts),
            candidate_labels=list(labels),
            hypothesis_template=template,
            multi_label=multi_label,
        )
        per_template.append(
            [[dict(zip(r["labels"], r["scores"], strict=True))[x] for x in labels] for r in results]
        )
    return np.mean(per_template, axis=0)


def comparable(
    classifier: NLIClassifier, reference: ZeroShotClassificationPipeline, task: Task
) -> list[tuple[EncodedEvent, list[str]]]:
    """Up to MAX_COMPARED chunked texts with their chunk texts, those whose chunks round-trip."""
    found = []
    for text in fortunes(CANDIDATE_TEXTS, min_chars=MIN_CHARS, max_chars=MAX_CHARS):
        event = classifier.encode(text, task)
        texts = chunk_texts(reference, event) if len(event.chunks) >= 2 else None
        if texts is not None:
            found.append((event, texts))
        if len(found) == MAX_COMPARED:
            break
    assert len(found) >= MIN_COMPARED
    return found


@pytest.mark.parametrize("how", list(Aggregate))
@pytest.mark.parametrize("multi_label", [False, True])
def test_chunk_scores_aggregate_the_pipelines_scores_of_each_chunk(
    models: tuple[NLIClassifier, ZeroShotClassificationPipeline], how: Aggregate, multi_label: bool
) -> None:
    # Two templates (an ensemble) and a label group in the other mode, all chunked.
    classifier, reference = models
    task = Task(
        LABELS,
        TEMPLATES,
        multi_label,
        groups=(LabelGroup("sentiment", SENTIMENT, not multi_label),),
        long_text=Chunking(WINDOW, STRIDE, how, max_chunks=64),
    )
    cases = comparable(classifier, reference, task)
    results = classifier.classify([event for event, _ in cases])
    reduce = np.max if how is Aggregate.MAX else np.mean
    for (event, texts), scores in zip(cases, results, strict=True):
        main = pipeline_means(reference, texts, LABELS, multi_label)
        group = pipeline_means(reference, texts, SENTIMENT, not multi_label)
        assert scores.scores == pytest.approx(tuple(reduce(main, axis=0)), abs=TOLERANCE)
        assert scores.groups[0] == pytest.approx(tuple(reduce(group, axis=0)), abs=TOLERANCE)
        assert scores.chunks is not None and scores.chunks.windows == event.chunks
        if how is Aggregate.MAX:
            # The chunk named for a label is one whose pipeline score is the label's score.
            for label, k in enumerate(scores.chunks.best):
                assert main[k, label] == pytest.approx(main[:, label].max(), abs=TOLERANCE)


def test_each_chunk_is_paired_with_every_hypothesis_as_the_pipeline_pairs_it(
    models: tuple[NLIClassifier, ZeroShotClassificationPipeline],
) -> None:
    classifier, reference = models
    task = Task(LABELS, TEMPLATES[0], False, long_text=Chunking(WINDOW, STRIDE, Aggregate.MAX, 64))
    hypotheses = task.hypotheses()
    for event, texts in comparable(classifier, reference, task):
        step = WINDOW - STRIDE
        assert event.chunks == tuple(
            (k * step, min(k * step + WINDOW, event.chunks[-1][1])) for k in range(len(texts))
        )
        pairs = event.pairs.input_ids  # type: ignore[attr-defined]
        assert len(pairs) == len(texts) * len(hypotheses) == event.pair_count
        for c, text in enumerate(texts):
            for h, hypothesis in enumerate(hypotheses):
                expected = reference._parse_and_tokenize([[text, hypothesis]])["input_ids"]
                assert pairs[c * len(hypotheses) + h] == expected[0].tolist()


def test_a_text_that_fits_is_scored_whole_as_the_pipeline_scores_it(
    models: tuple[NLIClassifier, ZeroShotClassificationPipeline],
) -> None:
    classifier, reference = models
    chunked = Task(
        LABELS, TEMPLATES[0], False, long_text=Chunking(WINDOW, STRIDE, Aggregate.MAX, 4)
    )
    short = fortunes(4, max_chars=60)
    events = [classifier.encode(text, chunked) for text in short]
    assert all(event.chunks == () for event in events)
    expected = reference(short, candidate_labels=list(LABELS), hypothesis_template=TEMPLATES[0])
    for scores, result in zip(classifier.classify(events), expected, strict=True):
        assert scores.chunks is None
        by_label = dict(zip(result["labels"], result["scores"], strict=True))
        assert scores.scores == pytest.approx(tuple(by_label[x] for x in LABELS), abs=TOLERANCE)


def test_a_text_needing_more_than_max_chunks_is_refused(
    models: tuple[NLIClassifier, ZeroShotClassificationPipeline],
) -> None:
    classifier, _ = models
    task = Task(LABELS, TEMPLATES[0], False, long_text=Chunking(WINDOW, STRIDE, Aggregate.MAX, 2))
    [text] = fortunes(1, min_chars=MAX_CHARS, max_chars=2 * MAX_CHARS)
    with pytest.raises(TooManyChunksError, match=r"over long_text\.max_chunks 2"):
        classifier.encode(text, task)
