"""Release: which scored events may be published now.

The classifier gives events back as it scores them, shortest first, not in
offset order. At-least-once publishes each at once: an offset is committed
only once it and every earlier offset of its partition are done
(worker.offsets), whatever order they were done in. Exactly-once needs more:
a transaction must hold exactly the outputs of the offsets below the
positions it commits (worker.transactions). An output produced ahead of an
earlier offset could be committed before that offset, and a rewind to the
committed position would then produce it a second time. So under
exactly-once an event waits until every event read before it in its
partition (in the same assignment) is published.
"""

from __future__ import annotations

from collections import deque

from worker.inference import Outcome
from worker.inflight import InFlightEvent

# An assignment of a partition: topic, partition and epoch (see worker.offsets).
Lane = tuple[str, int, int]


class Release:
    """Hands scored events to publication: at once, or in offset order per partition.

    In offset order, events are registered as they go to the model
    (`submitted`) and come out of `completed` once every earlier one of their
    partition's assignment has come back. Each assignment is a lane of its
    own: what a revoked or rewound assignment still has on the model does not
    hold back the events of the next one, and drains as it comes back.
    """

    def __init__(self, in_offset_order: bool) -> None:
        self.in_offset_order = in_offset_order
        self._lanes: dict[Lane, deque[int]] = {}
        self._done: dict[Lane, dict[int, tuple[InFlightEvent, Outcome]]] = {}

    def __len__(self) -> int:
        """Events submitted and not released yet (in offset order only)."""
        return sum(len(lane) for lane in self._lanes.values())

    def submitted(self, events: list[InFlightEvent]) -> None:
        """Events on their way to the model, in the order they were read."""
        if not self.in_offset_order:
            return
        for event in events:
            lane = (event.topic, event.partition, event.epoch)
            self._lanes.setdefault(lane, deque()).append(event.offset)

    def completed(
        self, event: InFlightEvent, outcome: Outcome
    ) -> list[tuple[InFlightEvent, Outcome]]:
        """The event is scored (or failed): what may be published now, in order."""
        if not self.in_offset_order:
            return [(event, outcome)]
        lane = (event.topic, event.partition, event.epoch)
        waiting, done = self._lanes[lane], self._done.setdefault(lane, {})
        done[event.offset] = (event, outcome)
        ready = []
        while waiting and waiting[0] in done:
            ready.append(done.pop(waiting.popleft()))
        if not waiting:
            del self._lanes[lane], self._done[lane]
        return ready
