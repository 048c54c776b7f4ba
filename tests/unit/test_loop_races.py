"""The whole class of rebalance races, as a hypothesis state machine against stub clients.

Rules assign, revoke and lose partitions, hand out stale records, and fail
deliveries (a rewind under exactly-once, a redo under at-least-once), while
backpressure pauses and resumes the partitions. The classifier gives a
batch's events back one forward pass at a time, out of offset order. After
every step the worker is alive, nothing is committed ahead of its output,
and under exactly-once no output ahead of its offset; at the end every event
has its output, and under exactly-once none has two.
"""

from __future__ import annotations

from collections import Counter

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests.unit.kafka_stubs import Partition, StubMessage
from tests.unit.test_loop import TOPIC, Loop, events
from tests.unit.test_loop import settings as loop_settings

PARTITIONS = [(TOPIC, p) for p in range(3)]
EVENTS = 80
partitions = st.sampled_from(PARTITIONS)


class Races(RuleBasedStateMachine):
    """A worker under random rebalances, stale records and failed deliveries."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: Loop | None = None
        self.owned: set[Partition] = set()
        self.exactly_once = False

    @initialize(exactly_once=st.booleans(), pause_often=st.booleans())
    def start(self, exactly_once: bool, pause_often: bool) -> None:
        self.exactly_once = exactly_once
        guarantee = "exactly-once" if exactly_once else "at-least-once"
        worker_settings = loop_settings(max_events=2 if pause_often else 8).model_copy(
            update={"processing_guarantee": guarantee}
        )
        self.loop = Loop(worker_settings, {tp: events(EVENTS) for tp in PARTITIONS})
        self.loop.thread.start()
        assert self.loop.ready.wait(5)
        self.loop.producer.consumer = self.loop.stub
        self.loop.stub.rebalance("assign", PARTITIONS)
        self.owned = set(PARTITIONS)
        self.settle()

    @property
    def running(self) -> Loop:
        assert self.loop is not None
        return self.loop

    def settle(self) -> None:
        stub = self.running.stub
        self.running.wait_until(lambda: not stub.events and not stub.injected, "the last step")

    @rule(tp=partitions)
    def assign(self, tp: Partition) -> None:
        if tp not in self.owned:
            self.running.stub.rebalance("assign", [tp])
            self.owned.add(tp)
        self.settle()

    @rule(tp=partitions, kind=st.sampled_from(["revoke", "lost"]))
    def take_away(self, tp: Partition, kind: str) -> None:
        if tp in self.owned:
            self.running.stub.rebalance(kind, [tp])
            self.owned.discard(tp)
        self.settle()

    @rule(tp=partitions)
    def stale_record(self, tp: Partition) -> None:
        stub = self.running.stub
        offset = stub.positions.get(tp, 0) // 2
        stub.inject(StubMessage(tp[0], tp[1], offset, self.running.logs[tp][offset]))
        self.settle()

    @precondition(lambda self: self.loop is not None)
    @rule(count=st.integers(1, 3))
    def failed_deliveries(self, count: int) -> None:
        self.running.producer.fail(count)

    @invariant()
    def alive_and_never_committed_ahead_of_its_output(self) -> None:
        if self.loop is None:
            return
        assert not self.loop.failure, f"the worker died: {self.loop.failure[0]!r}"
        assert self.loop.thread.is_alive(), "the worker stopped"
        with self.loop.producer._lock:
            committed = dict(self.loop.stub.committed)
            outputs = set(self.outputs())
        for tp, position in committed.items():
            missing = [o for o in range(position) if (tp[1], o) not in outputs]
            assert not missing, f"{tp} committed at {position} without outputs {missing[:5]}"
        self.check_no_output_committed_ahead_of_its_offset()

    def check_no_output_committed_ahead_of_its_offset(self) -> None:
        """Under exactly-once: such an output would be produced again after a rewind."""
        if not self.exactly_once:
            return
        with self.running.producer._lock:
            commits = list(self.running.producer.commits)
        for records, positions in commits:
            ahead = [(p, o) for p, o in self.sources(records) if o >= positions.get((TOPIC, p), 0)]
            assert not ahead, f"outputs committed ahead of their offsets: {ahead[:5]}"

    def outputs(self) -> list[tuple[int, int]]:
        """(partition, offset) of every output a read_committed reader sees."""
        return self.sources(self.running.producer.sent)

    @staticmethod
    def sources(records: list[tuple[str, bytes | None]]) -> list[tuple[int, int]]:
        """(partition, offset) of the input of each output among `records`."""
        sources = (
            orjson.loads(value)["classification"]["source"]
            for topic, value in records
            if topic == "posts.out" and value is not None
        )
        return [(source["partition"], source["offset"]) for source in sources]

    def teardown(self) -> None:
        if self.loop is None:
            return
        running = self.loop
        try:
            running.stub.rebalance("assign", sorted(set(PARTITIONS) - self.owned))
            running.wait_until(running.all_committed, "every partition read to its end")
            running.wait_until(lambda: not running.stub.paused, "every partition resumed")
        finally:
            running.stop.set()
            running.thread.join(10)
        assert not running.failure, f"the worker died: {running.failure[0]!r}"
        self.check_no_output_committed_ahead_of_its_offset()
        counts = Counter(self.outputs())
        expected = {(tp[1], offset) for tp in PARTITIONS for offset in range(EVENTS)}
        assert set(counts) == expected, f"lost: {sorted(expected - set(counts))[:10]}"
        if self.exactly_once:
            twice = [source for source, n in counts.items() if n > 1]
            assert not twice, f"duplicates under exactly-once: {twice[:10]}"


Races.TestCase.settings = settings(
    max_examples=10,
    stateful_step_count=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_no_race_loses_stalls_or_duplicates = Races.TestCase
