"""An optional result cache in front of a classifier: repeated texts skip the model."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence

from worker.nli.base import Classifier, EncodedEvent, Scores, Task, in_order
from worker.nli.labels import LabelIds

CacheKey = tuple[str, Task]


class CachingClassifier:
    """A bounded LRU of (text, task) -> scores with a time to live, around another classifier.

    The model is part of the key implicitly: one cache wraps one classifier.
    `on_lookup(hit)` is told the outcome of every lookup (for hit/miss metrics).
    """

    def __init__(
        self,
        inner: Classifier,
        max_entries: int,
        ttl_s: float,
        on_lookup: Callable[[bool], None] = lambda hit: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1 or ttl_s <= 0:
            raise ValueError("max_entries must be positive and ttl_s above zero")
        self._inner = inner
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._on_lookup = on_lookup
        self._clock = clock
        self._entries: OrderedDict[CacheKey, tuple[float, Scores]] = OrderedDict()

    @property
    def model_name(self) -> str:
        """The wrapped classifier's model."""
        return self._inner.model_name

    @property
    def label_ids(self) -> LabelIds:
        """The wrapped classifier's entailment and contradiction classes."""
        return self._inner.label_ids

    @property
    def info(self) -> dict[str, str]:
        """The wrapped classifier's, and the cache's size."""
        return {**self._inner.info, "result_cache_entries": str(self._max_entries)}

    def __len__(self) -> int:
        return len(self._entries)

    def encode(self, text: str, task: Task) -> EncodedEvent:
        """The wrapped classifier's encoding."""
        return self._inner.encode(text, task)

    def classify(self, events: Sequence[EncodedEvent]) -> list[Scores]:
        """Cached scores where fresh, the model's for the rest (then cached)."""
        return in_order(self.classify_progressively(events), len(events))

    def classify_progressively(
        self, events: Sequence[EncodedEvent]
    ) -> Iterator[list[tuple[int, Scores]]]:
        """Cached scores at once, then the model's for the rest as it yields them (then cached)."""
        now = self._clock()
        found: list[tuple[int, Scores]] = []
        misses: list[int] = []
        for i, event in enumerate(events):
            entry = self._entries.get((event.text, event.task))
            hit = entry is not None and now - entry[0] < self._ttl_s
            self._on_lookup(hit)
            if hit:
                assert entry is not None
                self._entries.move_to_end((event.text, event.task))
                found.append((i, entry[1]))
            else:
                misses.append(i)
        if found:
            yield found
        if not misses:
            return
        for part in self._inner.classify_progressively([events[i] for i in misses]):
            for m, scores in part:
                self._store((events[misses[m]].text, events[misses[m]].task), now, scores)
            yield [(misses[m], scores) for m, scores in part]

    def _store(self, key: CacheKey, now: float, scores: Scores) -> None:
        self._entries[key] = (now, scores)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
