"""Release: scored events published at once, or in offset order per partition's assignment."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from worker.inflight import InFlightEvent
from worker.nli.base import Task
from worker.release import Release
from worker.routing import Route

ROUTE = Route("posts", "posts.out", "posts.dlq", Task(("a",), "{}", False), 0.5, "text", False, 100)


def event(partition: int, offset: int, epoch: int = 1) -> InFlightEvent:
    return InFlightEvent("posts", partition, offset, epoch, None, None, None, 0, ROUTE, 0.0)


def test_at_least_once_releases_each_event_at_once() -> None:
    release = Release(in_offset_order=False)
    first, second = event(0, 0), event(0, 1)
    release.submitted([first, second])
    assert release.completed(second, None) == [(second, None)]
    assert release.completed(first, None) == [(first, None)]


def test_exactly_once_holds_an_event_until_the_earlier_ones_of_its_partition() -> None:
    release = Release(in_offset_order=True)
    a0, a1, a2, b0 = event(0, 0), event(0, 1), event(0, 2), event(1, 0)
    release.submitted([a0, b0, a1, a2])
    assert release.completed(a2, None) == []
    assert release.completed(b0, None) == [(b0, None)], "another partition does not wait"
    assert release.completed(a1, None) == []
    assert [e.offset for e, _ in release.completed(a0, None)] == [0, 1, 2]
    assert len(release) == 0


def test_an_earlier_assignment_does_not_hold_back_the_next_one() -> None:
    release = Release(in_offset_order=True)
    old, new = event(0, 5, epoch=1), event(0, 5, epoch=2)
    release.submitted([old])
    release.submitted([new])
    assert release.completed(new, None) == [(new, None)]
    assert release.completed(old, None) == [(old, None)]


@given(st.data())
def test_every_event_is_released_once_in_offset_order(data: st.DataObject) -> None:
    release = Release(in_offset_order=True)
    events = [event(p, o) for o in range(8) for p in range(2)]
    release.submitted(events)
    released = []
    for e in data.draw(st.permutations(events)):
        released += [r for r, _ in release.completed(e, None)]
    assert sorted(released, key=lambda e: (e.partition, e.offset)) == sorted(
        events, key=lambda e: (e.partition, e.offset)
    )
    for partition in range(2):
        offsets = [e.offset for e in released if e.partition == partition]
        assert offsets == sorted(offsets)
    assert len(release) == 0
