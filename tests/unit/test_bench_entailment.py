"""The proxy's synthetic entailment task: topics, balanced pairs, splits, its accuracy."""

from __future__ import annotations

from collections import Counter

import pytest

from bench.entailment import (
    LEXICONS,
    MAX_TOPICS,
    decision_accuracy,
    examples,
    split,
    top_label_accuracy,
    topics_of,
    usable,
    windows,
)
from tests.texts import fortunes

SEED = 7


def test_topics_are_whole_words_in_any_case_in_lexicon_order() -> None:
    assert topics_of("The LAWYER ate my Computer.") == ("computers", "food", "law")
    # "lawn" and "eaten" are not topic words: whole words only.
    assert topics_of("The lawn was eaten.") == ()


def test_every_text_gives_as_many_contradictions_as_entailments() -> None:
    texts = fortunes(400, max_chars=300)
    pairs = examples(texts, SEED)
    counts = Counter(p.entailed for p in pairs)
    assert counts[True] == counts[False] > 100
    for text in {p.premise for p in pairs}:
        mine = [p for p in pairs if p.premise == text]
        assert {p.label for p in mine if p.entailed} == set(topics_of(text))
        assert not {p.label for p in mine if not p.entailed} & set(topics_of(text))
        assert sum(p.entailed for p in mine) == sum(not p.entailed for p in mine)


def test_texts_without_a_topic_or_with_too_many_are_left_out() -> None:
    crowded = "law food love computer science government doctor baseball"
    assert len(topics_of(crowded)) > MAX_TOPICS
    assert examples(["Nothing to see here.", crowded], SEED) == []
    assert not usable(crowded)


def test_the_pairs_and_the_split_depend_on_the_seed_alone() -> None:
    texts = fortunes(300, max_chars=300)
    assert examples(texts, SEED) == examples(list(texts), SEED)
    assert examples(texts, SEED) != examples(texts, SEED + 1)
    training, held_out = split(texts, 20, SEED)
    assert (training, held_out) == split(reversed(texts), 20, SEED)
    assert len(held_out) == 20
    assert not set(training) & set(held_out)
    assert all(usable(text) for text in training + held_out)


def test_a_split_that_leaves_nothing_to_train_on_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot leave 1 held out"):
        split(["The judge."], 1, SEED)


def test_windows_are_the_words_around_each_topic_word() -> None:
    text = "one two three lawyer four five six seven eight pizza nine"
    assert windows(text, 2) == ["two three lawyer four five", "seven eight pizza nine"]
    assert all(len(topics_of(window)) == 1 for window in windows(text, 2))


def test_hypotheses_name_every_label_with_the_worker_template() -> None:
    [pair] = [p for p in examples(["I love it."], SEED) if p.entailed]
    assert pair.hypothesis == "This example is love."
    assert "love" in LEXICONS


def test_accuracy_counts_decisions_and_top_labels_against_the_topics() -> None:
    texts = ["The judge.", "Eat pizza."]
    scores = [
        {"law": 0.9, "food": 0.6, "love": 0.1},  # food: a wrong "yes"
        {"law": 0.2, "food": 0.7, "love": 0.3},
    ]
    assert decision_accuracy(texts, scores) == pytest.approx(5 / 6)
    assert top_label_accuracy(texts, scores) == 1.0
    assert top_label_accuracy(texts[::-1], scores) == 0.0
