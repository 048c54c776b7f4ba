"""The offset tracker commits only past a prefix of acknowledged outputs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from worker.offsets import OffsetTracker

TP = ("posts", 0)


def test_commit_position_waits_for_the_earliest_output() -> None:
    tracker = OffsetTracker()
    epoch = tracker.assign(TP)
    for offset in (10, 11, 12):
        tracker.track(TP, offset)
    tracker.ack(TP, 12, epoch)
    tracker.ack(TP, 11, epoch)
    assert tracker.take_committable() == {}
    tracker.ack(TP, 10, epoch)
    assert tracker.take_committable() == {TP: 13}
    assert tracker.take_committable() == {}, "only positions that advanced are returned"
    assert tracker.in_flight() == 0


def test_gaps_in_offsets_are_fine() -> None:
    tracker = OffsetTracker()
    epoch = tracker.assign(TP)
    tracker.track(TP, 5)
    tracker.track(TP, 9)  # 6-8 were transaction markers or compacted away
    tracker.ack(TP, 9, epoch)
    tracker.ack(TP, 5, epoch)
    assert tracker.position(TP) == 10


def test_acks_of_an_earlier_assignment_are_ignored() -> None:
    tracker = OffsetTracker()
    old = tracker.assign(TP)
    tracker.track(TP, 0)
    tracker.revoke(TP)
    assert tracker.ack(TP, 0, old) is False
    new = tracker.assign(TP)
    assert new != old
    tracker.track(TP, 0)
    assert tracker.ack(TP, 0, old) is False
    assert tracker.is_current(TP, new)
    assert tracker.ack(TP, 0, new) is True
    assert tracker.position(TP) == 1


def test_a_record_below_what_is_tracked_is_stale_not_an_error() -> None:
    # A record fetched before a rebalance or seek, handed out after it.
    tracker = OffsetTracker()
    epoch = tracker.assign(TP)
    assert tracker.track(TP, 4) == epoch
    assert tracker.track(TP, 4) is None
    assert tracker.track(TP, 0) is None
    assert tracker.in_flight(TP) == 1
    tracker.ack(TP, 4, epoch)
    assert tracker.track(TP, 3) is None, "below the commit position too"
    assert tracker.position(TP) == 5


def test_a_record_of_a_partition_not_assigned_is_stale() -> None:
    tracker = OffsetTracker()
    assert tracker.track(TP, 0) is None
    tracker.assign(TP)
    tracker.revoke(TP)
    assert tracker.track(TP, 0) is None
    assert tracker.in_flight() == 0 and tracker.position(TP) is None


def test_partitions_are_independent() -> None:
    tracker = OffsetTracker()
    a, b = ("t", 0), ("t", 1)
    ea, eb = tracker.assign(a), tracker.assign(b)
    tracker.track(a, 0)
    tracker.track(b, 0)
    tracker.ack(b, 0, eb)
    assert tracker.take_committable() == {b: 1}
    assert tracker.in_flight(a) == 1 and tracker.in_flight() == 1
    tracker.ack(a, 0, ea)
    assert tracker.take_committable() == {a: 1}


@given(
    gaps=st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=60),
    data=st.data(),
)
def test_never_commits_past_an_unacknowledged_offset(gaps: list[int], data: st.DataObject) -> None:
    tracker = OffsetTracker()
    epoch = tracker.assign(TP)
    offsets = []
    offset = 0
    for gap in gaps:
        offset += gap
        offsets.append(offset)
        tracker.track(TP, offset)
    order = data.draw(st.permutations(offsets))
    acked: set[int] = set()
    for offset in order:
        tracker.ack(TP, offset, epoch)
        acked.add(offset)
        position = tracker.position(TP)
        unacked = [o for o in offsets if o not in acked]
        if unacked:
            # Everything below the position is acknowledged; the first unacked is not passed.
            assert position is None or position <= unacked[0]
            done_prefix = [o for o in offsets if o < unacked[0]]
            assert position == (done_prefix[-1] + 1 if done_prefix else None)
        else:
            assert position == offsets[-1] + 1
    assert tracker.in_flight() == 0
