"""Long texts: the chunk windows, when a premise is chunked, and how chunk scores aggregate."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.errors import InferenceError, TooManyChunksError
from worker.nli.base import EncodedEvent, LabelGroup, Task
from worker.nli.chunks import Aggregate, Chunking, aggregate, plan_chunks, windows
from worker.nli.labels import LabelIds

IDS = LabelIds(entailment_id=2, contradiction_id=0)


def test_chunk_k_covers_k_steps_of_window_minus_stride() -> None:
    assert windows(100, 40, 8) == ((0, 40), (32, 72), (64, 100))
    assert windows(64, 32, 0) == ((0, 32), (32, 64))
    assert windows(65, 32, 0) == ((0, 32), (32, 64), (64, 65))


def test_a_premise_no_longer_than_the_window_is_one_chunk() -> None:
    assert windows(40, 40, 8) == ((0, 40),)
    assert windows(3, 40, 8) == ((0, 3),)


@given(
    length=st.integers(1, 5000),
    window=st.integers(2, 600),
    data=st.data(),
)
def test_windows_cover_the_premise_with_as_few_chunks_as_the_formula_allows(
    length: int, window: int, data: st.DataObject
) -> None:
    stride = data.draw(st.integers(0, window - 1))
    found = windows(length, window, stride)
    step = window - stride
    for k, (start, end) in enumerate(found):
        assert (start, end) == (k * step, min(k * step + window, length))
    assert found[-1][1] == length, "the last chunk reaches the end"
    assert len(found) == 1 or found[-2][1] < length, "no chunk is there for nothing"
    for (_, end), (start, _) in itertools.pairwise(found):
        assert end - start == stride, "neighbours share exactly `stride` tokens"


@pytest.mark.parametrize(("window", "stride"), [(10, 10), (10, 11), (10, -1)])
def test_a_stride_that_would_not_advance_is_refused(window: int, stride: int) -> None:
    with pytest.raises(ValueError, match="stride"):
        windows(100, window, stride)
    with pytest.raises(ValueError, match="stride"):
        Chunking(window, stride, Aggregate.MAX, 4)


CHUNKING = Chunking(window=40, stride=8, aggregate=Aggregate.MAX, max_chunks=3)


def test_only_a_premise_the_pipeline_would_truncate_is_chunked() -> None:
    assert plan_chunks(50, room=50, long_text=CHUNKING) == ()
    assert plan_chunks(51, room=50, long_text=CHUNKING) == ((0, 40), (32, 51))


def test_a_window_wider_than_the_room_is_narrowed_to_it() -> None:
    assert plan_chunks(50, room=30, long_text=CHUNKING) == ((0, 30), (22, 50))


def test_more_chunks_than_max_chunks_is_refused_with_the_reason() -> None:
    assert len(plan_chunks(104, room=50, long_text=CHUNKING)) == 3
    with pytest.raises(TooManyChunksError, match=r"105 tokens: 4 chunks .* long_text.max_chunks 3"):
        plan_chunks(105, room=50, long_text=CHUNKING)


def test_no_room_beyond_the_stride_is_an_error_not_a_loop() -> None:
    with pytest.raises(InferenceError, match="cannot be chunked"):
        plan_chunks(100, room=8, long_text=CHUNKING)


def test_max_takes_each_labels_best_chunk_and_says_which() -> None:
    scores, best = aggregate([[0.1, 0.9, 0.5], [0.7, 0.2, 0.5]], Aggregate.MAX)
    assert scores == (0.7, 0.9, 0.5)
    assert best == (1, 0, 0), "the first of equal chunks"


def test_mean_averages_over_the_chunks() -> None:
    scores, best = aggregate([[0.1, 0.9], [0.7, 0.2], [0.4, 0.4]], Aggregate.MEAN)
    assert scores == pytest.approx((0.4, 0.5))
    assert best == ()


def test_no_chunks_is_an_error() -> None:
    with pytest.raises(ValueError, match="chunks, labels"):
        aggregate([], Aggregate.MAX)


def chunked(task: Task, chunks: tuple[tuple[int, int], ...]) -> EncodedEvent:
    pairs = len(chunks) * len(task.hypotheses())
    return EncodedEvent("text", task, pairs=None, pair_tokens=(9,) * pairs, chunks=chunks)


@pytest.mark.parametrize("multi_label", [False, True])
@pytest.mark.parametrize("how", list(Aggregate))
def test_a_chunked_event_aggregates_each_chunks_own_scores(
    multi_label: bool, how: Aggregate
) -> None:
    # An ensemble of two templates, a label group in the other mode and a
    # temperature: each chunk is scored as a whole text would be.
    long_text = Chunking(40, 8, how, 8)
    task = Task(
        ("a", "b", "c"),
        ("It is {}.", "About {}."),
        multi_label,
        groups=(LabelGroup("mood", ("up", "down"), not multi_label),),
        temperature=1.7,
        long_text=long_text,
    )
    whole = Task(task.labels, task.hypothesis_template, multi_label, (), task.groups, 1.7)
    chunks = ((0, 40), (32, 72), (64, 90))
    rows = len(task.hypotheses())
    logits = np.random.default_rng(7).normal(0, 3, (len(chunks) * rows, 3)).astype(np.float32)

    got = chunked(task, chunks).score(logits, IDS)

    per_chunk = [whole.score(logits[c * rows : (c + 1) * rows], IDS) for c in range(len(chunks))]
    reduce = np.max if how is Aggregate.MAX else np.mean
    expected = reduce([p.scores for p in per_chunk], axis=0)
    expected_group = reduce([p.groups[0] for p in per_chunk], axis=0)
    assert got.scores == pytest.approx(tuple(expected), abs=1e-12)
    assert got.groups[0] == pytest.approx(tuple(expected_group), abs=1e-12)
    assert got.chunks is not None and got.chunks.windows == chunks and got.chunks.count == 3
    assert got.logits == ()
    if how is Aggregate.MAX:
        assert got.chunks.best == tuple(np.argmax([p.scores for p in per_chunk], axis=0))
        assert got.chunks.group_best == (tuple(np.argmax([p.groups[0] for p in per_chunk], 0)),)
    else:
        assert got.chunks.best == () and got.chunks.group_best == ((),)


def test_an_event_scored_whole_is_scored_by_its_task() -> None:
    task = Task(("a", "b"), "It is {}.", False, long_text=CHUNKING)
    logits = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 2.0]], dtype=np.float32)
    event = EncodedEvent("text", task, pairs=None, pair_tokens=(9, 9))
    assert event.score(logits, IDS) == task.score(logits, IDS)
    assert event.score(logits, IDS).chunks is None
