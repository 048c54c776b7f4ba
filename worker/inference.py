"""The inference thread: batches in, per-event scores (or the error) out, off the polling thread."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from worker.nli.base import Classifier, EncodedEvent, Scores

log = logging.getLogger(__name__)

T = TypeVar("T")
# Scores, the model's error, or None for an item that had nothing to score.
Outcome = Scores | Exception | None


@dataclass(slots=True)
class Completed(Generic[T]):
    """A batch's items with one outcome each, when the model started on it and for how long."""

    items: list[T]
    outcomes: list[Outcome]
    started: float
    """On the runner's clock."""
    seconds: float
    failed: bool


class InferenceRunner(Generic[T]):
    """Runs the classifier on its own thread; torch releases the GIL while it computes.

    Items for which `encoded` gives None ride along unscored, keeping their
    place in the order results come back. A batch the model fails on is retried
    one event at a time, so a single bad event gets its own error and every
    other event of the batch its scores.
    """

    def __init__(
        self,
        classifier: Classifier,
        encoded: Callable[[T], EncodedEvent | None],
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._classifier = classifier
        self._encoded = encoded
        self._clock = clock
        self._inbox: queue.SimpleQueue[list[T] | None] = queue.SimpleQueue()
        self._outbox: queue.SimpleQueue[Completed[T]] = queue.SimpleQueue()
        self._batches_in_flight = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="zsc-inference", daemon=True)

    def start(self) -> None:
        """Start the inference thread."""
        self._thread.start()

    def submit(self, items: list[T]) -> None:
        """Queue a batch for the model."""
        with self._lock:
            self._batches_in_flight += 1
        self._inbox.put(items)

    @property
    def batches_in_flight(self) -> int:
        """Batches submitted whose results have not been collected yet."""
        with self._lock:
            return self._batches_in_flight

    def completed(self, timeout: float = 0.0) -> list[Completed[T]]:
        """The batches finished so far, waiting up to `timeout` for the first one."""
        done: list[Completed[T]] = []
        try:
            done.append(
                self._outbox.get(timeout=timeout) if timeout > 0 else self._outbox.get_nowait()
            )
            while True:
                done.append(self._outbox.get_nowait())
        except queue.Empty:
            pass
        with self._lock:
            self._batches_in_flight -= len(done)
        return done

    def stop(self, timeout: float) -> None:
        """Let the thread finish its queue and end; waits up to `timeout` seconds."""
        self._inbox.put(None)
        self._thread.join(timeout)

    def _serve(self) -> None:
        while (items := self._inbox.get()) is not None:
            started = self._clock()
            outcomes, failed = self._score(items)
            self._outbox.put(Completed(items, outcomes, started, self._clock() - started, failed))

    def _score(self, items: Sequence[T]) -> tuple[list[Outcome], bool]:
        encoded = [self._encoded(item) for item in items]
        events = [event for event in encoded if event is not None]
        if not events:
            return [None] * len(items), False
        try:
            scores: list[Outcome] = list(self._classifier.classify(events))
            failed = False
        except Exception as exc:
            log.exception("inference failed on a batch of %d events", len(events))
            scores = [exc] if len(events) == 1 else [self._score_one(e) for e in events]
            failed = True
        found = iter(scores)
        return [None if event is None else next(found) for event in encoded], failed

    def _score_one(self, event: EncodedEvent) -> Scores | Exception:
        try:
            return self._classifier.classify([event])[0]
        except Exception as exc:
            return exc
