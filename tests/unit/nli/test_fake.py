"""The classifier's test double behaves like a classifier, without torch."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from worker.errors import InferenceError
from worker.nli.base import Classifier, Task
from worker.nli.fake import FAKE_SPECIAL_TOKENS, FakeClassifier

TOPICS = Task(("sports", "politics", "technology"), "This example is {}.", multi_label=False)
TAGS = Task(("sports", "politics", "technology"), "This example is {}.", multi_label=True)


def test_it_is_a_classifier() -> None:
    classifier: Classifier = FakeClassifier("fake-model")
    assert classifier.model_name == "fake-model"


def test_scores_are_deterministic_and_shaped_like_real_ones() -> None:
    fake = FakeClassifier()
    events = [fake.encode("The match ended in a draw.", TOPICS), fake.encode("Vote today.", TAGS)]
    first, second = fake.classify(events), FakeClassifier().classify(events)
    assert first == second
    single, multi = first
    assert sum(single.scores) == pytest.approx(1.0)
    assert len(multi.scores) == len(TAGS.labels)
    assert all(0.0 <= s <= 1.0 for s in (*single.scores, *multi.scores))


def test_pair_tokens_count_words_and_special_tokens() -> None:
    event = FakeClassifier().encode("one two three", TOPICS)
    assert event.pair_tokens == (3 + 4 + FAKE_SPECIAL_TOKENS,) * 3


def test_fail_on_raises_an_inference_error() -> None:
    fake = FakeClassifier(fail_on="boom")
    events = [fake.encode("fine", TOPICS), fake.encode("this goes boom", TOPICS)]
    with pytest.raises(InferenceError, match="boom"):
        fake.classify(events)
    assert len(fake.classify(events[:1])) == 1


def test_delay_slows_every_call_and_batches_are_recorded() -> None:
    fake = FakeClassifier(delay_s=0.05)
    started = time.monotonic()
    fake.classify([fake.encode("a", TOPICS), fake.encode("b", TOPICS)])
    assert time.monotonic() - started >= 0.05
    assert fake.batch_sizes == [2]


def test_forward_passes_yield_the_shortest_events_first_each_index_once() -> None:
    fake = FakeClassifier(forward_events=2)
    texts = ["a long text of seven words here", "short", "a medium text", "tiny"]
    events = [fake.encode(text, TOPICS) for text in texts]
    parts = list(fake.classify_progressively(events))
    assert [[n for n, _ in part] for part in parts] == [[1, 3], [2, 0]]
    everything = dict(pair for part in parts for pair in part)
    assert [everything[n] for n in range(4)] == fake.classify(events)


def test_a_failing_pass_raises_after_the_passes_before_it() -> None:
    fake = FakeClassifier(forward_events=1, fail_on="boom")
    events = [fake.encode("it goes boom now", TOPICS), fake.encode("fine", TOPICS)]
    passes = fake.classify_progressively(events)
    assert [n for n, _ in next(passes)] == [1]
    with pytest.raises(InferenceError, match="boom"):
        next(passes)


def test_the_interface_and_the_fake_import_no_torch() -> None:
    code = (
        "import sys, worker.nli, worker.nli.base, worker.nli.fake, worker.nli.labels, "
        "worker.nli.scoring; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
