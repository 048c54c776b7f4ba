"""The inference thread: batches in, per-event scores (or the error) out, off the polling thread.

A batch comes back in parts, as the classifier scores it: each part holds the
events one forward pass of the model completed, so an event can be published
before the rest of its batch is done. A batch is for one model; with several,
the models take turns on the thread (worker.scheduling).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from worker.errors import InferenceError
from worker.models import Models
from worker.nli.base import Classifier, EncodedEvent, Scores
from worker.scheduling import RoundRobin

log = logging.getLogger(__name__)

T = TypeVar("T")
# Scores, the model's error, or None for an item that had nothing to score.
Outcome = Scores | Exception | None


@dataclass(slots=True)
class Completed(Generic[T]):
    """Items of a submitted batch with one outcome each: a part of the batch, or all of it.

    Every item of a batch comes back in exactly one part; `last` marks the
    batch's final part, whose `seconds` is then the batch's whole time on the
    model and `failed` whether the model failed on it.
    """

    items: list[T]
    outcomes: list[Outcome]
    started: float
    """When the model started on the batch, on the runner's clock."""
    seconds: float
    """From `started` to this part."""
    last: bool
    failed: bool
    model: str
    """The model that scored the batch."""


@dataclass(slots=True)
class _Part:
    """Positions in the batch and their outcomes; `failed` once the model failed on the batch."""

    positions: list[int]
    outcomes: list[Outcome]
    failed: bool = False


class InferenceRunner(Generic[T]):
    """Runs the classifiers on its own thread; torch releases the GIL while it computes.

    Items for which `encoded` gives None have nothing to score: they come back
    at once, in a part of their own. A batch the model fails on is retried one
    event at a time (those it had not completed yet), so a single bad event
    gets its own error and every other event of the batch its scores. Each
    model has a queue of its own, and the models take turns batch by batch
    (see worker.scheduling).
    """

    def __init__(
        self,
        models: Models,
        encoded: Callable[[T], EncodedEvent | None],
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._models = models
        self._encoded = encoded
        self._clock = clock
        self._inbox: RoundRobin[str, list[T]] = RoundRobin()
        self._outbox: queue.SimpleQueue[Completed[T]] = queue.SimpleQueue()
        self._batches_in_flight = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="zsc-inference", daemon=True)

    def start(self) -> None:
        """Start the inference thread."""
        self._thread.start()

    def submit(self, items: list[T], model: str | None = None) -> None:
        """Queue a batch for `model` (None: the only model there is)."""
        if model is None:
            [model] = self._models.names
        with self._lock:
            self._batches_in_flight += 1
        self._inbox.put(model, items)

    @property
    def batches_in_flight(self) -> int:
        """Batches submitted whose last part has not been collected yet."""
        with self._lock:
            return self._batches_in_flight

    def completed(self, timeout: float = 0.0) -> list[Completed[T]]:
        """The parts finished so far, in order, waiting up to `timeout` for the first one."""
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
            self._batches_in_flight -= sum(part.last for part in done)
        return done

    def stop(self, timeout: float) -> None:
        """Let the thread finish its queues and end; waits up to `timeout` seconds."""
        self._inbox.close()
        self._thread.join(timeout)

    def _serve(self) -> None:
        while (taken := self._inbox.take()) is not None:
            model, items = taken
            started = self._clock()
            if not items:
                self._outbox.put(Completed([], [], started, 0.0, True, False, model))
                continue
            left = len(items)
            for part in self._score(self._models[model], items):
                left -= len(part.positions)
                self._outbox.put(
                    Completed(
                        [items[p] for p in part.positions],
                        part.outcomes,
                        started,
                        self._clock() - started,
                        last=left == 0,
                        failed=part.failed,
                        model=model,
                    )
                )

    def _score(self, classifier: Classifier, items: Sequence[T]) -> Iterator[_Part]:
        """The batch's outcomes, part by part, as the classifier completes them."""
        encoded = [self._encoded(item) for item in items]
        if unscored := [p for p, event in enumerate(encoded) if event is None]:
            yield _Part(unscored, [None] * len(unscored))
        scorable = [p for p, event in enumerate(encoded) if event is not None]
        events = [event for event in encoded if event is not None]
        if not events:
            return
        pending = dict.fromkeys(range(len(events)))
        try:
            for scored in classifier.classify_progressively(events):
                found = [(n, scores) for n, scores in scored if n in pending]
                for n, _ in found:
                    del pending[n]
                if found:
                    yield _Part([scorable[n] for n, _ in found], [s for _, s in found])
            if pending:
                raise InferenceError(f"the classifier left {len(pending)} events unscored")
        except Exception as exc:
            if not pending:
                log.exception("the classifier failed after it had scored every event")
                return
            log.exception("inference failed on a batch of %d events", len(pending))
            # Alone, the event is the culprit; else each is tried alone.
            if len(pending) == 1:
                yield _Part([scorable[n] for n in pending], [exc], failed=True)
                return
            for n in pending:
                yield _Part([scorable[n]], [_score_one(classifier, events[n])], failed=True)


def _score_one(classifier: Classifier, event: EncodedEvent) -> Scores | Exception:
    try:
        return classifier.classify([event])[0]
    except Exception as exc:
        return exc
