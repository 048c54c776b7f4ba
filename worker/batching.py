"""Micro-batching: events in, batches out, bounded by count, padded tokens and wait time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
Clock = Callable[[], float]


@dataclass(slots=True)
class Batch(Generic[T]):
    """Events that go to the classifier together.

    `tokens` is the padded size the accelerator sees if every pair of the batch is
    padded to the longest one: `max_pair_tokens * pairs`.
    """

    items: list[T] = field(default_factory=list)
    pairs: int = 0
    max_pair_tokens: int = 0
    opened_at: float = 0.0

    @property
    def tokens(self) -> int:
        """Padded premise+hypothesis tokens of the whole batch."""
        return self.max_pair_tokens * self.pairs

    def padded_with(self, pairs: int, max_pair_tokens: int) -> int:
        """The padded size if an event with these pairs joined the batch."""
        return max(self.max_pair_tokens, max_pair_tokens) * (self.pairs + pairs)


ModelBatch = tuple[str, Batch[T]]
"""A closed batch and the name of the model that scores it."""


class MicroBatcher(Generic[T]):
    """Collects events into batches; a pure state machine on an injected clock.

    A batch closes when it holds `max_events`, when the next event would push
    its padded tokens past `max_tokens` (that event opens the next batch), or
    `max_wait_s` after its first event arrived. An event larger than `max_tokens`
    on its own still forms a batch of one: events are never split.
    """

    def __init__(
        self, max_events: int, max_tokens: int, max_wait_s: float, clock: Clock = time.monotonic
    ) -> None:
        if max_events < 1 or max_tokens < 1 or max_wait_s < 0:
            raise ValueError("max_events and max_tokens must be positive, max_wait_s >= 0")
        self.max_events = max_events
        self.max_tokens = max_tokens
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._open: Batch[T] | None = None

    def __len__(self) -> int:
        return len(self._open.items) if self._open else 0

    def add(self, item: T, pairs: int, max_pair_tokens: int) -> list[Batch[T]]:
        """Add one event; returns the batches this closed (zero, one or two)."""
        closed: list[Batch[T]] = []
        batch = self._open
        if batch is not None and batch.padded_with(pairs, max_pair_tokens) > self.max_tokens:
            closed.append(batch)
            batch = None
        if batch is None:
            batch = Batch(opened_at=self._clock())
        batch.items.append(item)
        batch.pairs += pairs
        batch.max_pair_tokens = max(batch.max_pair_tokens, max_pair_tokens)
        if len(batch.items) >= self.max_events or batch.tokens >= self.max_tokens:
            closed.append(batch)
            batch = None
        self._open = batch
        return closed

    def due(self) -> Batch[T] | None:
        """The open batch, closed, if its first event has waited `max_wait_s`."""
        if self._open is not None and self._clock() - self._open.opened_at >= self.max_wait_s:
            return self.flush()
        return None

    def seconds_until_due(self) -> float | None:
        """How long until the open batch is due; None when there is none."""
        if self._open is None:
            return None
        return max(0.0, self._open.opened_at + self.max_wait_s - self._clock())

    def flush(self) -> Batch[T] | None:
        """Close and return the open batch, whatever its size."""
        batch, self._open = self._open, None
        return batch

    def discard(self, keep: Callable[[T], bool]) -> int:
        """Drop the open batch's events for which `keep` is false; returns how many.

        Used when partitions are revoked: their events belong to another worker now.
        The batch's token figures are left as upper bounds.
        """
        batch = self._open
        if batch is None:
            return 0
        kept = [item for item in batch.items if keep(item)]
        dropped = len(batch.items) - len(kept)
        batch.items = kept
        if not kept:
            self._open = None
        return dropped


class ModelBatchers(Generic[T]):
    """A `MicroBatcher` per model, all with the same bounds: a batch never mixes models.

    Each closed batch comes with the name of its model.
    """

    def __init__(
        self,
        models: Iterable[str],
        max_events: int,
        max_tokens: int,
        max_wait_s: float,
        clock: Clock = time.monotonic,
    ) -> None:
        self._batchers = {
            model: MicroBatcher[T](max_events, max_tokens, max_wait_s, clock) for model in models
        }

    def add(self, model: str, item: T, pairs: int, max_pair_tokens: int) -> list[ModelBatch[T]]:
        """Add one event to its model's batch; returns the batches this closed."""
        return [(model, batch) for batch in self._batchers[model].add(item, pairs, max_pair_tokens)]

    def due(self) -> list[ModelBatch[T]]:
        """Every open batch whose first event has waited `max_wait_s`, closed."""
        return [
            (model, batch)
            for model, batcher in self._batchers.items()
            if (batch := batcher.due()) is not None
        ]

    def seconds_until_due(self) -> float | None:
        """How long until the first open batch is due; None when there is none."""
        waits = [w for b in self._batchers.values() if (w := b.seconds_until_due()) is not None]
        return min(waits, default=None)

    def flush(self) -> list[ModelBatch[T]]:
        """Close and return every open batch, whatever its size."""
        return [
            (model, batch)
            for model, batcher in self._batchers.items()
            if (batch := batcher.flush()) is not None
        ]

    def discard(self, keep: Callable[[T], bool]) -> int:
        """Drop the open batches' events for which `keep` is false; returns how many."""
        return sum(batcher.discard(keep) for batcher in self._batchers.values())
