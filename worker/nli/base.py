"""The classifier interface the rest of the worker talks to; no torch here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Task:
    """What one event is classified against: its labels, template and mode."""

    labels: tuple[str, ...]
    hypothesis_template: str
    multi_label: bool

    def hypotheses(self) -> tuple[str, ...]:
        """The hypothesis of each label, in label order."""
        return tuple(self.hypothesis_template.format(label) for label in self.labels)


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    """An event's text, tokenized once, with the length of each premise/hypothesis pair.

    `premise` is private to the classifier that made it; `pair_tokens[i]` is the
    length of the pair for `task.labels[i]`, special tokens included, as the
    model will see it (after truncation).
    """

    text: str
    task: Task
    premise: object
    pair_tokens: tuple[int, ...]

    @property
    def pair_count(self) -> int:
        """How many premise/hypothesis pairs the event adds to a batch."""
        return len(self.pair_tokens)

    @property
    def max_pair_tokens(self) -> int:
        """The longest of the event's pairs, which sets its padded width."""
        return max(self.pair_tokens)


@dataclass(frozen=True, slots=True)
class Scores:
    """One event's scores, aligned with `task.labels` (task order, not sorted)."""

    scores: tuple[float, ...]


class Classifier(Protocol):
    """A zero-shot classifier: tokenizes on the caller's thread, scores on another."""

    @property
    def model_name(self) -> str:
        """The model id or directory, as reported in every output."""
        ...

    def encode(self, text: str, task: Task) -> EncodedEvent:
        """Tokenize `text` once for all of `task`'s hypotheses; cheap, no model call."""
        ...

    def classify(self, events: Sequence[EncodedEvent]) -> list[Scores]:
        """Score every event against its task; one `Scores` per event, in order."""
        ...
