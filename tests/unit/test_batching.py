"""The micro-batcher closes batches on count, padded tokens and wait time."""

from __future__ import annotations

import pytest

from worker.batching import MicroBatcher, ModelBatchers


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def batcher(max_events: int = 4, max_tokens: int = 1000, max_wait_s: float = 0.05):
    clock = FakeClock()
    return MicroBatcher[str](max_events, max_tokens, max_wait_s, clock), clock


def test_closes_at_max_events() -> None:
    b, _ = batcher(max_events=3)
    assert b.add("a", 2, 10) == []
    assert b.add("b", 2, 10) == []
    [closed] = b.add("c", 2, 10)
    assert closed.items == ["a", "b", "c"]
    assert closed.pairs == 6
    assert len(b) == 0


def test_padded_tokens_count_every_pair_at_the_longest_width() -> None:
    b, _ = batcher(max_tokens=100)
    b.add("short", 3, 10)  # 3 pairs x 10 = 30
    # 5 pairs at width 12 = 60 < 100: joins
    assert b.add("long", 2, 12) == []
    # 7 pairs at width 20 = 140 > 100: closes the open batch, opens a new one
    [closed] = b.add("longer", 2, 20)
    assert closed.items == ["short", "long"]
    assert closed.tokens == 5 * 12
    assert b.flush().items == ["longer"]  # type: ignore[union-attr]


def test_batch_exactly_at_the_budget_closes() -> None:
    b, _ = batcher(max_tokens=40)
    [closed] = b.add("a", 4, 10)
    assert closed.tokens == 40


def test_event_bigger_than_the_budget_is_a_batch_of_its_own() -> None:
    b, _ = batcher(max_tokens=50)
    b.add("small", 1, 10)
    first, second = b.add("huge", 8, 30)
    assert first.items == ["small"]
    assert second.items == ["huge"] and second.tokens == 240
    assert len(b) == 0


def test_due_after_max_wait_from_the_first_event() -> None:
    b, clock = batcher(max_wait_s=0.5)
    assert b.due() is None
    assert b.seconds_until_due() is None
    b.add("a", 1, 5)
    clock.now += 0.25
    b.add("b", 1, 5)
    assert b.due() is None
    assert b.seconds_until_due() == 0.25
    clock.now += 0.25
    batch = b.due()
    assert batch is not None and batch.items == ["a", "b"]
    assert b.due() is None


def test_zero_wait_is_due_at_once() -> None:
    b, _ = batcher(max_wait_s=0)
    b.add("a", 1, 5)
    assert b.due() is not None


def test_discard_drops_events_of_revoked_partitions() -> None:
    b, _ = batcher()
    b.add("keep-1", 1, 5)
    b.add("drop", 1, 5)
    assert b.discard(lambda item: item.startswith("keep")) == 1
    assert b.flush().items == ["keep-1"]  # type: ignore[union-attr]
    b.add("drop", 1, 5)
    assert b.discard(lambda item: False) == 1
    assert b.flush() is None


def test_rejects_nonsense_bounds() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(0, 10, 0.1)


def test_batches_of_two_models_never_mix_and_each_closes_on_its_own_bounds() -> None:
    clock = FakeClock()
    models = ModelBatchers[str](["big", "small"], 2, 1000, 0.05, clock)
    assert models.add("big", "b1", 2, 10) == []
    assert models.add("small", "s1", 2, 10) == []
    [(model, closed)] = models.add("big", "b2", 2, 10)
    assert (model, closed.items) == ("big", ["b1", "b2"])
    clock.now += 0.01
    assert models.add("big", "b3", 2, 10) == []
    assert models.seconds_until_due() == pytest.approx(0.04)
    clock.now += 0.04
    assert [(m, b.items) for m, b in models.due()] == [("small", ["s1"])]
    assert models.discard(lambda item: item != "b3") == 1
    assert models.flush() == [] and models.seconds_until_due() is None
