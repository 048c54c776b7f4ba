"""The models' turns on the inference thread: queues by model, served in turn, none starved."""

from __future__ import annotations

import threading
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from worker.scheduling import RoundRobin

WAIT_S = 10.0


def drain(queue: RoundRobin[str, int]) -> list[tuple[str, int]]:
    queue.close()
    taken = []
    while (item := queue.take()) is not None:
        taken.append(item)
    return taken


def test_two_busy_models_alternate_batch_by_batch_each_in_its_own_order() -> None:
    queue: RoundRobin[str, int] = RoundRobin()
    for n in range(5):
        queue.put("big", n)
    for n in range(2):
        queue.put("small", n)
    assert drain(queue) == [
        ("big", 0),
        ("small", 0),
        ("big", 1),
        ("small", 1),
        ("big", 2),
        ("big", 3),
        ("big", 4),
    ]


def test_a_model_that_gets_work_late_goes_next_not_behind_the_busy_ones_backlog() -> None:
    queue: RoundRobin[str, int] = RoundRobin()
    for n in range(10):
        queue.put("big", n)
    assert queue.take() == ("big", 0)
    assert queue.take() == ("big", 1)
    queue.put("small", 0)
    assert queue.take() == ("small", 0)
    assert queue.take() == ("big", 2)


@given(
    st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.booleans()), min_size=1, max_size=60)
)
def test_while_a_model_waits_every_other_model_takes_at_most_one_turn(
    script: list[tuple[str, bool]],
) -> None:
    # Each step puts a batch for a model, then maybe takes one.
    queue: RoundRobin[str, int] = RoundRobin()
    queued: Counter[str] = Counter()
    # For each model with work queued, the models served since it was last served.
    watched: dict[str, list[str]] = {}
    for n, (model, take) in enumerate(script):
        queue.put(model, n)
        queued[model] += 1
        watched.setdefault(model, [])
        if not take:
            continue
        taken = queue.take()
        assert taken is not None
        served = taken[0]
        queued[served] -= 1
        for other, turns in watched.items():
            if other != served:
                turns.append(served)
                assert turns.count(served) <= 1, (other, turns)
        if queued[served]:
            watched[served] = []
        else:
            del watched[served]
    assert sorted(model for model, _ in drain(queue)) == sorted(queued.elements())


def test_take_waits_for_work_and_close_ends_it_once_the_queues_are_empty() -> None:
    queue: RoundRobin[str, int] = RoundRobin()
    taken: list[tuple[str, int] | None] = []
    thread = threading.Thread(target=lambda: taken.extend([queue.take(), queue.take()]))
    thread.start()
    queue.put("a", 1)
    queue.close()
    thread.join(WAIT_S)
    assert taken == [("a", 1), None]
