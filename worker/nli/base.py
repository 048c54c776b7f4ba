"""The classifier interface the rest of the worker talks to; no torch here."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from worker.errors import InferenceError
from worker.nli.chunks import Chunking, ChunkScores, TokenRange, aggregate
from worker.nli.labels import LabelIds
from worker.nli.scoring import zero_shot_scores


@dataclass(frozen=True, slots=True)
class LabelGroup:
    """Labels scored together in their own mode, beside the task's main labels."""

    name: str
    labels: tuple[str, ...]
    multi_label: bool


@dataclass(frozen=True, slots=True)
class Task:
    """What one event is classified against: labels, templates, mode, groups, calibration.

    `hypothesis_template` is one template or several (an ensemble: a label's
    score is the mean of the scores each template alone gives). A label listed
    in `own_hypotheses` uses its own hypothesis instead of the templates.
    `temperature` divides the logits before every softmax (calibration).
    `long_text` says how a text too long for the model is chunked; None
    truncates it, as the pipeline does.
    """

    labels: tuple[str, ...]
    hypothesis_template: str | tuple[str, ...]
    multi_label: bool
    own_hypotheses: tuple[tuple[str, str], ...] = ()
    groups: tuple[LabelGroup, ...] = ()
    temperature: float = 1.0
    long_text: Chunking | None = None

    @property
    def templates(self) -> tuple[str, ...]:
        """The hypothesis templates, one or more."""
        template = self.hypothesis_template
        return (template,) if isinstance(template, str) else template

    def label_hypotheses(self, labels: Sequence[str]) -> list[list[str]]:
        """For each label, its hypothesis under each template (rows: labels)."""
        own = dict(self.own_hypotheses)
        return [
            [own[label] if label in own else template.format(label) for template in self.templates]
            for label in labels
        ]

    def hypotheses(self) -> tuple[str, ...]:
        """Every distinct hypothesis the event is paired with, in a fixed order."""
        every = [h for row in self.label_hypotheses(self.labels) for h in row]
        for group in self.groups:
            every += [h for row in self.label_hypotheses(group.labels) for h in row]
        return tuple(dict.fromkeys(every))

    def score(self, logits: npt.NDArray[np.floating], label_ids: LabelIds) -> Scores:
        """Scores from the logits of `hypotheses()` (one row each, one column per class)."""
        row_of = {h: i for i, h in enumerate(self.hypotheses())}
        scaled = logits.astype(np.float64) / self.temperature

        def ensemble(labels: Sequence[str], multi_label: bool) -> tuple[float, ...]:
            rows = np.array([[row_of[h] for h in row] for row in self.label_hypotheses(labels)])
            per_template = [
                zero_shot_scores(scaled[rows[:, t]], label_ids, multi_label)
                for t in range(rows.shape[1])
            ]
            return tuple(np.mean(per_template, axis=0).tolist())

        return Scores(
            scores=ensemble(self.labels, self.multi_label),
            groups=tuple(ensemble(g.labels, g.multi_label) for g in self.groups),
            logits=tuple(tuple(row) for row in logits.astype(np.float64).tolist()),
        )


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    """An event's text, tokenized once, with the length of each premise/hypothesis pair.

    `pairs` is private to the classifier that made it; `pair_tokens[i]` is the
    length of the pair for `task.hypotheses()[i]`, special tokens included, as
    the model will see it (after truncation).

    A text cut into chunks (see worker.nli.chunks) has a pair per chunk and
    hypothesis, chunk after chunk: `pair_tokens[c * len(task.hypotheses()) + i]`
    pairs chunk c (the premise tokens `chunks[c]`) with hypothesis i. `chunks`
    is empty when the text is scored whole.
    """

    text: str
    task: Task
    pairs: object
    pair_tokens: tuple[int, ...]
    chunks: tuple[TokenRange, ...] = ()

    @property
    def pair_count(self) -> int:
        """How many premise/hypothesis pairs the event adds to a batch."""
        return len(self.pair_tokens)

    @property
    def max_pair_tokens(self) -> int:
        """The longest of the event's pairs, which sets its padded width."""
        return max(self.pair_tokens)

    def score(self, logits: npt.NDArray[np.floating], label_ids: LabelIds) -> Scores:
        """Scores from the logits of the event's pairs (one row each, in `pair_tokens` order).

        A chunked text's chunks are each scored as the task scores a whole
        text; each label's score is then aggregated over them.
        """
        if not self.chunks:
            return self.task.score(logits, label_ids)
        assert self.task.long_text is not None
        how = self.task.long_text.aggregate
        parts = [self.task.score(rows, label_ids) for rows in np.split(logits, len(self.chunks))]
        scores, best = aggregate([part.scores for part in parts], how)
        groups = [
            aggregate([part.groups[g] for part in parts], how) for g in range(len(self.task.groups))
        ]
        return Scores(
            scores=scores,
            groups=tuple(group_scores for group_scores, _ in groups),
            chunks=ChunkScores(
                self.chunks, how, best, tuple(group_best for _, group_best in groups)
            ),
        )


@dataclass(frozen=True, slots=True)
class Scores:
    """One event's scores.

    `scores` is aligned with `task.labels` (task order, not sorted), `groups`
    with `task.groups` (each aligned with its group's labels), and `logits`
    holds the raw logits of each of `task.hypotheses()` (uncalibrated; none
    when the text was chunked). `chunks` says how a chunked text's scores came
    about; None when it was scored whole.
    """

    scores: tuple[float, ...]
    groups: tuple[tuple[float, ...], ...] = ()
    logits: tuple[tuple[float, ...], ...] = ()
    chunks: ChunkScores | None = None


class Classifier(Protocol):
    """A zero-shot classifier: tokenizes on the caller's thread, scores on another."""

    @property
    def model_name(self) -> str:
        """The model id or directory, as reported in every output."""
        ...

    @property
    def label_ids(self) -> LabelIds:
        """The model's entailment and contradiction classes."""
        ...

    @property
    def info(self) -> dict[str, str]:
        """What serves the scores (model, device, precision...), for the model info metric."""
        ...

    def encode(self, text: str, task: Task) -> EncodedEvent:
        """Tokenize `text` once for all of `task`'s hypotheses; cheap, no model call."""
        ...

    def classify(self, events: Sequence[EncodedEvent]) -> list[Scores]:
        """Score every event against its task; one `Scores` per event, in order."""
        ...

    def classify_progressively(
        self, events: Sequence[EncodedEvent]
    ) -> Iterator[list[tuple[int, Scores]]]:
        """Score every event against its task, yielding events as soon as they are scored.

        Each item holds the (index in `events`, scores) of the events scored
        since the previous one (one item per forward pass of the model, which
        may complete none); every index comes exactly once.
        """
        ...


def in_order(parts: Iterable[list[tuple[int, Scores]]], count: int) -> list[Scores]:
    """What `classify_progressively` yielded for `count` events, gathered in event order."""
    found: list[Scores | None] = [None] * count
    for part in parts:
        for n, scores in part:
            found[n] = scores
    missing = [n for n, scores in enumerate(found) if scores is None]
    if missing:
        raise InferenceError(f"the classifier left {len(missing)} of {count} events unscored")
    return [scores for scores in found if scores is not None]
