"""The test double of the classifier: deterministic scores without torch or a model."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence

import numpy as np

from worker.errors import InferenceError
from worker.nli.base import EncodedEvent, Scores, Task, in_order
from worker.nli.chunks import TokenRange, plan_chunks
from worker.nli.labels import LabelIds

# The class order of valhalla/distilbart-mnli-12-3: contradiction, neutral, entailment.
FAKE_LABEL_IDS = LabelIds(entailment_id=2, contradiction_id=0)
FAKE_CLASSES = 3
# Logits spread over [-LOGIT_RANGE, LOGIT_RANGE] give scores from near 0 to near 1.
LOGIT_RANGE = 4.0
# The special tokens a BART pair adds: <s> premise </s></s> hypothesis </s>.
FAKE_SPECIAL_TOKENS = 4


def _fake_logits(text: str, hypothesis: str) -> list[float]:
    """NLI logits that depend only on the pair, stable across runs and processes."""
    pair = f"{text}\x00{hypothesis}".encode()
    digest = hashlib.blake2b(pair, digest_size=2 * FAKE_CLASSES).digest()
    units = [int.from_bytes(digest[2 * k : 2 * k + 2], "big") / 0xFFFF for k in range(FAKE_CLASSES)]
    return [LOGIT_RANGE * (2.0 * u - 1.0) for u in units]


class FakeClassifier:
    """The test double of `NLIClassifier`, for tests of everything around the model.

    Scores are a stable hash of (premise, hypothesis) put through the real scoring
    math, so they are deterministic, in [0, 1], and sum to 1 when single-label.
    `pair_tokens` counts whitespace-separated words plus a pair's special tokens.
    `max_length` (None: no limit) is the longest pair in words: a task that
    chunks long texts cuts a longer one into windows of words, as the real
    one cuts tokens.
    `delay_s` makes every `classify` call take that long (a slow accelerator);
    `forward_events` cuts a call into forward passes of that many events
    (None: one pass), shortest events first as the real one orders them,
    each taking its share of `delay_s`. `fail_on` makes the pass holding an
    event whose text contains it raise `InferenceError`. `batch_sizes` records
    how many events each call received.
    """

    def __init__(
        self,
        model_name: str = "fake-nli",
        *,
        delay_s: float = 0.0,
        fail_on: str | None = None,
        forward_events: int | None = None,
        max_length: int | None = None,
    ) -> None:
        if forward_events is not None and forward_events < 1:
            raise ValueError("forward_events must be positive")
        self._model_name = model_name
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.forward_events = forward_events
        self.max_length = max_length
        self.batch_sizes: list[int] = []

    @property
    def model_name(self) -> str:
        """The model name reported in every output."""
        return self._model_name

    @property
    def label_ids(self) -> LabelIds:
        """The fake's entailment and contradiction classes."""
        return FAKE_LABEL_IDS

    @property
    def info(self) -> dict[str, str]:
        """The fake's model name; it runs nowhere in particular."""
        return {"model": self._model_name, "architecture": "fake", "device": "none"}

    def encode(self, text: str, task: Task) -> EncodedEvent:
        """Count the tokens of each pair (words); no tokenizer. `pairs` holds the premises."""
        words = text.split()
        hypotheses = [len(h.split()) for h in task.hypotheses()]
        chunks: tuple[TokenRange, ...] = ()
        if task.long_text is not None and self.max_length is not None:
            room = self.max_length - FAKE_SPECIAL_TOKENS - max(hypotheses)
            chunks = plan_chunks(len(words), room, task.long_text)
        premises = tuple(" ".join(words[a:b]) for a, b in chunks) if chunks else (text,)
        pair_tokens = tuple(
            len(p.split()) + h + FAKE_SPECIAL_TOKENS for p in premises for h in hypotheses
        )
        return EncodedEvent(text, task, pairs=premises, pair_tokens=pair_tokens, chunks=chunks)

    def classify(self, events: Sequence[EncodedEvent]) -> list[Scores]:
        """Score every event from the hash of its pairs; one `Scores` per event, in order."""
        return in_order(self.classify_progressively(events), len(events))

    def classify_progressively(
        self, events: Sequence[EncodedEvent]
    ) -> Iterator[list[tuple[int, Scores]]]:
        """Score the events pass by pass (see `forward_events`), yielding each pass's events."""
        self.batch_sizes.append(len(events))
        order = sorted(range(len(events)), key=lambda n: (events[n].max_pair_tokens, n))
        size = self.forward_events or max(1, len(events))
        passes = [order[k : k + size] for k in range(0, len(order), size)] or [[]]
        for forward in passes:
            if self.delay_s > 0:
                time.sleep(self.delay_s / len(passes))
            if self.fail_on is not None and any(self.fail_on in events[n].text for n in forward):
                raise InferenceError(f"fake inference failure: an event contains {self.fail_on!r}")
            yield [(n, _fake_scores(events[n])) for n in forward]


def _fake_scores(event: EncodedEvent) -> Scores:
    assert isinstance(event.pairs, tuple)
    premises: tuple[str, ...] = event.pairs
    logits = np.array(
        [_fake_logits(p, h) for p in premises for h in event.task.hypotheses()], dtype=np.float32
    )
    return event.score(logits, FAKE_LABEL_IDS)
