"""Records a topic refused for good: which to retry alone, which to dead-letter.

A broker that refuses a record (too large for the topic's `max.message.bytes`,
say) refuses the whole batch it came in, and librdkafka reports every record of
that batch as refused. So a refusal only makes its record a suspect; a suspect
is produced again alone, and only a refusal of it alone condemns it.

Records are named by the input offset they stand for and where they go, which
survives a rewind: under exactly-once a refusal aborts the transaction, and the
redo is the retry. A condemnation is kept until the input's offset is durable
(`prune`): the transaction holding its dead-letter record may abort too.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import NamedTuple


class RecordId(NamedTuple):
    """One record produced for an input record."""

    topic: str
    partition: int
    offset: int
    destination: str
    """The topic it goes to."""
    without_value: bool = False
    """A dead-letter record sent again without the value its topic refused."""


class RefusedRecords:
    """Suspects (produce alone) and condemned records (dead-letter the event instead)."""

    __slots__ = ("_condemned", "_suspects")

    def __init__(self) -> None:
        self._suspects: set[RecordId] = set()
        self._condemned: dict[RecordId, str] = {}

    def __len__(self) -> int:
        return len(self._suspects) + len(self._condemned)

    def refused(self, record: RecordId, alone: bool, reason: str) -> None:
        """The record was refused; `alone` when it was the only one in its batch."""
        if alone:
            self._suspects.discard(record)
            self._condemned[record] = reason
        else:
            self._suspects.add(record)

    def delivered(self, record: RecordId) -> None:
        """The record was accepted: it is nobody's suspect any more."""
        self._suspects.discard(record)

    def suspected(self, record: RecordId) -> bool:
        """Whether the record must be produced alone."""
        return record in self._suspects

    def condemnation(self, record: RecordId) -> str | None:
        """Why the record was refused on its own; None if it was not."""
        return self._condemned.get(record)

    def prune(self, durable: Mapping[tuple[str, int], int]) -> None:
        """Forget records of inputs below their partition's durable position."""
        self._suspects = {r for r in self._suspects if not _settled(r, durable)}
        self._condemned = {r: w for r, w in self._condemned.items() if not _settled(r, durable)}

    def forget(self, partitions: Collection[tuple[str, int]]) -> None:
        """Drop what is known of partitions this worker no longer owns."""
        self._suspects = {r for r in self._suspects if r[:2] not in partitions}
        self._condemned = {r: w for r, w in self._condemned.items() if r[:2] not in partitions}


def _settled(record: RecordId, durable: Mapping[tuple[str, int], int]) -> bool:
    position = durable.get((record.topic, record.partition))
    return position is not None and record.offset < position
