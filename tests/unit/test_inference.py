"""The inference thread: a batch comes back part by part, each event once, as it is scored."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from worker.errors import InferenceError
from worker.inference import Completed, InferenceRunner
from worker.models import Models
from worker.nli.base import EncodedEvent, Scores, Task
from worker.nli.fake import FakeClassifier

TASK = Task(("a", "b"), "It is {}.", multi_label=False)
WAIT_S = 10.0


def texts_runner(classifier: FakeClassifier) -> InferenceRunner[str | None]:
    """A started runner of texts (None: an item with nothing to score)."""

    def encoded(text: str | None) -> EncodedEvent | None:
        return None if text is None else classifier.encode(text, TASK)

    runner: InferenceRunner[str | None] = InferenceRunner(Models.one(classifier), encoded)
    runner.start()
    return runner


def collect(runner: InferenceRunner[str | None], batches: int) -> list[Completed[str | None]]:
    """Every part of the next `batches` batches."""
    parts: list[Completed[str | None]] = []
    while sum(part.last for part in parts) < batches:
        got = runner.completed(timeout=WAIT_S)
        assert got, "no part came back in time"
        parts += got
    return parts


def test_a_batch_comes_back_pass_by_pass_and_counts_in_flight_until_its_last_part() -> None:
    runner = texts_runner(FakeClassifier(forward_events=1))
    batch = ["a b c d", "a", None, "a b"]
    runner.submit(batch)
    parts = collect(runner, 1)
    assert [part.items for part in parts] == [[None], ["a"], ["a b"], ["a b c d"]]
    assert [part.last for part in parts] == [False, False, False, True]
    assert parts[0].outcomes == [None], "nothing to score comes back at once"
    assert all(isinstance(o, Scores) for part in parts[1:] for o in part.outcomes)
    assert len({part.started for part in parts}) == 1
    assert parts[-1].seconds >= parts[0].seconds
    assert not any(part.failed for part in parts)
    assert runner.batches_in_flight == 0
    runner.stop(WAIT_S)


def test_in_flight_counts_batches_not_parts() -> None:
    runner = texts_runner(FakeClassifier(forward_events=1, delay_s=0.2))
    runner.submit(["a", "a b"])
    runner.submit(["a b c"])
    first = runner.completed(timeout=WAIT_S)
    assert not any(part.last for part in first)
    assert runner.batches_in_flight == 2
    collect(runner, 2)
    assert runner.batches_in_flight == 0
    runner.stop(WAIT_S)


def test_a_failing_pass_leaves_the_scored_events_and_retries_the_rest_one_by_one() -> None:
    fake = FakeClassifier(forward_events=2, fail_on="boom")
    runner = texts_runner(fake)
    runner.submit(["x", "y", "boom one two", "z w v u t s"])
    parts = collect(runner, 1)
    by_item = {item: o for part in parts for item, o in zip(part.items, part.outcomes, strict=True)}
    assert isinstance(by_item["x"], Scores) and isinstance(by_item["y"], Scores)
    assert isinstance(by_item["boom one two"], InferenceError)
    assert isinstance(by_item["z w v u t s"], Scores)
    assert sum(len(part.items) for part in parts) == 4, "each event once"
    assert [part.failed for part in parts] == [False, True, True]
    assert fake.batch_sizes == [4, 1, 1], "the two unscored events retried alone"
    runner.stop(WAIT_S)


def test_the_only_event_left_when_a_pass_fails_gets_the_error_without_a_retry() -> None:
    fake = FakeClassifier(forward_events=1, fail_on="boom")
    runner = texts_runner(fake)
    runner.submit(["boom goes the long one", "x"])
    parts = collect(runner, 1)
    assert [part.items for part in parts] == [["x"], ["boom goes the long one"]]
    assert isinstance(parts[1].outcomes[0], InferenceError) and parts[1].failed
    assert fake.batch_sizes == [2]
    runner.stop(WAIT_S)


class Forgetful(FakeClassifier):
    """Never yields the last event: a classifier that breaks its promise."""

    def classify_progressively(
        self, events: Sequence[EncodedEvent]
    ) -> Iterator[list[tuple[int, Scores]]]:
        for part in super().classify_progressively(events):
            yield [(n, s) for n, s in part if n != len(events) - 1]


def test_an_event_the_classifier_leaves_unscored_still_comes_back() -> None:
    runner = texts_runner(Forgetful())
    runner.submit(["x", "y"])
    parts = collect(runner, 1)
    assert [part.items for part in parts] == [["x"], ["y"]]
    assert isinstance(parts[1].outcomes[0], InferenceError), "with an error"
    assert parts[1].last and parts[1].failed
    runner.stop(WAIT_S)


@pytest.mark.parametrize("batch", [[None, None], []])
def test_a_batch_with_nothing_to_score_comes_back_whole(batch: list[str | None]) -> None:
    fake = FakeClassifier()
    runner = texts_runner(fake)
    runner.submit(batch)
    parts = collect(runner, 1)
    assert [part.items for part in parts] == [batch]
    assert fake.batch_sizes == []
    runner.stop(WAIT_S)
