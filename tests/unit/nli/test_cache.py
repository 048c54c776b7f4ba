"""The result cache: hits skip the model, entries expire and the least recent go first."""

from __future__ import annotations

from worker.nli.base import Task
from worker.nli.cache import CachingClassifier
from worker.nli.chunks import Aggregate, Chunking
from worker.nli.fake import FakeClassifier

TASK = Task(("a", "b"), "It is {}.", False)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_hits_skip_the_model_and_give_the_same_scores() -> None:
    fake, clock, lookups = FakeClassifier(), Clock(), []
    cache = CachingClassifier(fake, max_entries=10, ttl_s=60, on_lookup=lookups.append, clock=clock)
    first = cache.classify([cache.encode("hello", TASK), cache.encode("world", TASK)])
    again = cache.classify([cache.encode("world", TASK), cache.encode("new", TASK)])
    assert again[0] == first[1]
    assert fake.batch_sizes == [2, 1], "only the new text went to the model"
    assert lookups == [False, False, True, False]
    other_task = Task(("a", "c"), "It is {}.", False)
    cache.classify([cache.encode("hello", other_task)])
    assert fake.batch_sizes[-1] == 1, "the task is part of the key"


def test_entries_expire_after_the_ttl() -> None:
    fake, clock = FakeClassifier(), Clock()
    cache = CachingClassifier(fake, max_entries=10, ttl_s=5, clock=clock)
    cache.classify([cache.encode("x", TASK)])
    clock.now = 4.9
    cache.classify([cache.encode("x", TASK)])
    clock.now = 5.0
    cache.classify([cache.encode("x", TASK)])
    assert fake.batch_sizes == [1, 1]


def test_the_least_recently_used_entry_is_evicted() -> None:
    fake, clock = FakeClassifier(), Clock()
    cache = CachingClassifier(fake, max_entries=2, ttl_s=60, clock=clock)
    for text in ("a", "b", "a", "c"):  # "a" was used after "b": "b" goes
        cache.classify([cache.encode(text, TASK)])
    assert len(cache) == 2
    calls = len(fake.batch_sizes)
    cache.classify([cache.encode("a", TASK)])
    assert len(fake.batch_sizes) == calls
    cache.classify([cache.encode("b", TASK)])
    assert len(fake.batch_sizes) == calls + 1


def test_hits_come_first_then_the_models_scores_as_it_yields_them() -> None:
    fake = FakeClassifier(forward_events=1)
    cache = CachingClassifier(fake, max_entries=10, ttl_s=60, clock=Clock())
    first = cache.classify([cache.encode("hello", TASK)])
    events = [cache.encode(text, TASK) for text in ("one two three", "hello", "four")]
    parts = [[n for n, _ in part] for part in cache.classify_progressively(events)]
    assert parts == [[1], [2], [0]]
    assert cache.classify(events)[1] == first[0]
    assert fake.batch_sizes == [1, 2], "the second call was all hits"


def test_how_long_texts_are_scored_is_part_of_the_key() -> None:
    fake = FakeClassifier(max_length=14)
    cache = CachingClassifier(fake, max_entries=10, ttl_s=60)
    text = " ".join(f"w{i}" for i in range(30))
    chunked = {
        how: Task(("a", "b"), "It is {}.", False, long_text=Chunking(6, 2, how, 8))
        for how in Aggregate
    }
    by_max, by_mean, whole = cache.classify(
        [
            cache.encode(text, chunked[Aggregate.MAX]),
            cache.encode(text, chunked[Aggregate.MEAN]),
            cache.encode(text, TASK),
        ]
    )
    assert fake.batch_sizes == [3], "three keys, three misses"
    again = cache.classify([cache.encode(text, chunked[Aggregate.MAX])])
    assert fake.batch_sizes == [3] and again == [by_max]
    assert by_max.chunks is not None and by_mean.chunks is not None and whole.chunks is None
    assert by_max.scores != by_mean.scores
