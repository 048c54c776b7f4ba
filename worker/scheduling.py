"""How the models take turns on the one inference thread: a queue per model, served in turn.

Every model's batches wait in a FIFO queue of their own. The inference thread
takes the oldest batch of the next model, in a fixed cyclic order, that has
one waiting: while two models both have work, they alternate batch by batch.
A busy model therefore delays another by at most one of its own batches (each
bounded by `batching.max_tokens`), however many it has queued, and never
starves it; a model alone gets the thread to itself. One thread, not one per
model: on a CPU two models computing at once would only fight over the same
cores, and on one GPU they share the device either way.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class RoundRobin(Generic[K, V]):
    """FIFO queues by key, taken from in turn; thread-safe, `take` blocks until there is work."""

    def __init__(self) -> None:
        self._queues: dict[K, deque[V]] = {}
        """Each key's waiting items; keys in the order they first came, the turn order."""
        self._last: K | None = None
        """The key whose item was taken last."""
        self._closed = False
        self._ready = threading.Condition()

    def put(self, key: K, item: V) -> None:
        """Queue `item` behind the earlier items of `key`."""
        with self._ready:
            self._queues.setdefault(key, deque()).append(item)
            self._ready.notify()

    def close(self) -> None:
        """No more items: `take` returns None once every queue is empty."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def take(self) -> tuple[K, V] | None:
        """The next key's oldest item, waiting for one; None once closed and drained."""
        with self._ready:
            while (turn := self._next_key()) is None:
                if self._closed:
                    return None
                self._ready.wait()
            self._last = turn
            return turn, self._queues[turn].popleft()

    def _next_key(self) -> K | None:
        """The first key with items after the last one served, going round."""
        keys = list(self._queues)
        start = keys.index(self._last) + 1 if self._last in self._queues else 0
        for key in keys[start:] + keys[:start]:
            if self._queues[key]:
                return key
        return None
