"""An event between poll and commit, and the records it produces on the way.

An event is in flight from the moment it is read until every record produced
for it (its output, routed copies, or its dead-letter record) is settled:
produced into the open transaction under exactly-once, acknowledged by the
broker under at-least-once. The event counts its unsettled records itself
(`expect`, `settle`); its offset is done when the count is back to zero.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from worker import serde
from worker.kafka.records import Headers
from worker.nli.base import EncodedEvent
from worker.offsets import Partition
from worker.rejections import RecordId
from worker.routing import Route


@dataclass(slots=True)
class InFlightEvent:
    """One input record on its way through the worker."""

    topic: str
    partition: int
    offset: int
    epoch: int
    """The assignment of its partition it was read in (see worker.offsets)."""
    key: bytes | None
    value: bytes | None
    headers: Headers | None
    timestamp_ms: int
    route: Route
    read_at: float
    """When it was read, on the worker's clock."""
    decoded: serde.DecodedEvent | None = None
    encoded: EncodedEvent | None = None
    rejection: serde.Rejection | None = None
    """Why it goes to the dead-letter topic instead of the model; None while it is valid."""
    unsettled: int = 0
    """Records produced for it whose fate is not known yet."""

    @property
    def tp(self) -> Partition:
        """Its topic and partition."""
        return self.topic, self.partition

    @property
    def source(self) -> tuple[str, int, int]:
        """Its topic, partition and offset."""
        return self.topic, self.partition, self.offset

    def expect(self, records: int = 1) -> None:
        """`records` more records are being produced for it."""
        self.unsettled += records

    def settle(self) -> bool:
        """One of its records is settled; True when that was the last one."""
        self.unsettled -= 1
        return self.unsettled <= 0


class RecordKind(enum.Enum):
    """What a produced record stands for."""

    OUTPUT = "output"
    """The enriched event on its topic's output."""
    ROUTED = "routed"
    """A copy of the enriched event on a route's topic."""
    DEAD_LETTER = "dead_letter"
    """The input, unchanged, on the dead-letter topic with the reason in its headers."""


@dataclass(slots=True)
class OutRecord:
    """A record an event produces."""

    event: InFlightEvent
    kind: RecordKind
    topic: str
    value: bytes | None
    headers: Headers | None
    rejection: serde.Rejection | None = None
    """Why the event is dead-lettered; set for DEAD_LETTER records only."""
    alone: bool = False
    """Produced with nothing else in the producer's queue, so in a batch of its own."""
    without_value: bool = False
    """A dead-letter record sent again without the value its topic refused."""

    @property
    def id(self) -> RecordId:
        """Which record this is, across redos and rewinds."""
        return RecordId(*self.event.source, self.topic, self.without_value)
